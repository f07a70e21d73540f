"""Golden tests: react against the real ``dspy.ReAct`` (DSPy 3.4.1).

The same scripted LM replies go to the agent written directly in DSPy and to the stepbridge program on
the native adapter and on the DSPy adapter; every request (messages and temperature) and the outputs
must be equal. Tool errors are compared between the backends (and with DSPy's text in
``test_react_tools.py``), because DSPy also prints stack frames naming its own files."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import dspy
import pytest
from pydantic import BaseModel
from stepbridge.errors import StepError
from stepbridge.program import Program
from stepbridge.registry import tools

from .conftest import ScriptedLM, Sent, chat, run_adapter, run_dspy

ADAPTERS = ["native", "dspy"]


class Place(BaseModel):
    city: str
    country: str = "FR"


def search(query: str, k: int = 2) -> list[str]:
    """Search the web.
    Returns passages."""
    return [f"passage {i} about {query}" for i in range(k)]


def weather(place: Place, unit: str = "C") -> dict[str, Any]:
    """The weather at a place."""
    return {"city": place.city, "country": place.country, "temp": 21.5, "unit": unit}


async def population(city: str) -> int:
    """Population of a city (async)."""
    await asyncio.sleep(0)
    return {"Paris": 2_100_000}.get(city, 0)


def snapshot(city: str) -> Place:
    """A pydantic model as the result."""
    return Place(city=city, country="XX")


def pair(a: int, b: int) -> tuple[int, int]:
    """A tuple as the result."""
    return (a, b)


TOOLS = {"search": search, "weather": weather, "population": population, "snapshot": snapshot, "pair": pair}


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    for name, func in TOOLS.items():
        tools.register(name, func)
    yield
    for name in TOOLS:
        tools.unregister(name)


def program(tool_names: list[str], *, signature: str = "question -> answer", max_iters: int = 20,
            instructions: str | None = None, lm: dict[str, Any] | None = None) -> Program:
    module: dict[str, Any] = {"type": "react", "signature": signature, "tools": tool_names}
    if max_iters != 20:
        module["max_iters"] = max_iters
    if instructions is not None:
        module["instructions"] = instructions
    if lm is not None:
        module["lm"] = lm
    outputs = [f.strip().split(":")[0] for f in signature.split("->")[1].split(",")]
    inputs = [f.strip().split(":")[0] for f in signature.split("->")[0].split(",")]
    return Program.model_validate({
        "stepbridge": 2, "name": "agent", "signature": signature, "lm": {"temperature": 0.0},
        "modules": {"agent": module},
        "steps": [{"call": "agent", "with": {i: f"$inputs.{i}" for i in inputs}, "as": "r"},
                  {"return": {o: f"$r.{o}" for o in outputs}}],
    })


def agent(tool_names: list[str], *, signature: str = "question -> answer", max_iters: int = 20,
          instructions: str | None = None) -> Any:
    sig = dspy.Signature(signature)
    if instructions is not None:
        sig = sig.with_instructions(instructions)
    return dspy.ReAct(sig, tools=[dspy.Tool(TOOLS[n], name=n) for n in tool_names], max_iters=max_iters)


def step(thought: str, tool: str, args: dict[str, Any]) -> str:
    return chat(next_thought=thought, next_tool_name=tool, next_tool_args=args)


QUESTION = {"question": "What is the weather in Paris?"}
SEVERAL_STEPS = [
    step("Search first.", "search", {"query": "Paris weather"}),
    step("Now the weather tool.", "weather", {"place": {"city": "Paris"}}),
    step("And the population.", "population", {"city": "Paris"}),
    step("Done.", "finish", {}),
    chat(reasoning="The tools say 21.5 C.", answer="Sunny, 21.5 C"),
]


def _same(ours: Sent, theirs: Sent) -> None:
    assert len(ours.requests) == len(theirs.requests)
    assert ours.messages == theirs.messages
    assert ours.temperatures == theirs.temperatures


def _outputs(prediction: Any, names: list[str]) -> dict[str, Any]:
    from stepbridge.react import json_data

    return {k: json_data(prediction[k]) for k in names}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_several_tool_steps_match_dspy(scripted: ScriptedLM, adapter: str) -> None:
    names = ["search", "weather", "population"]
    theirs = run_dspy(scripted, agent(names), QUESTION, SEVERAL_STEPS)
    ours = run_adapter(scripted, adapter, program(names), QUESTION, SEVERAL_STEPS)
    _same(ours, theirs)
    assert len(ours.requests) == 5
    assert ours.outputs.outputs == {"answer": "Sunny, 21.5 C"}
    trace = ours.outputs.trace[0].outputs
    assert trace["trajectory"] == _outputs(theirs.outputs, ["trajectory"])["trajectory"]
    assert trace["trajectory"]["observation_1"] == {"city": "Paris", "country": "FR", "temp": 21.5, "unit": "C"}
    assert trace["reasoning"] == "The tools say 21.5 C."


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_results_of_every_shape_match_dspy(scripted: ScriptedLM, adapter: str) -> None:
    names = ["snapshot", "pair", "search"]
    replies = [step("s", "snapshot", {"city": "Lyon"}), step("p", "pair", {"a": 1, "b": 2}),
               step("q", "search", {"query": "x", "k": 0}), step("d", "finish", {}),
               chat(reasoning="r", answer="a")]
    theirs = run_dspy(scripted, agent(names), QUESTION, replies)
    ours = run_adapter(scripted, adapter, program(names), QUESTION, replies)
    _same(ours, theirs)
    trajectory = ours.outputs.trace[0].outputs["trajectory"]
    assert trajectory["observation_0"] == {"city": "Lyon", "country": "XX"}
    assert trajectory["observation_1"] == [1, 2]
    assert trajectory["observation_2"] == []


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_max_iters_ends_without_finish(scripted: ScriptedLM, adapter: str) -> None:
    replies = [step("a", "search", {"query": "one"}), step("b", "search", {"query": "two"}),
               chat(reasoning="r", answer="out of steps")]
    theirs = run_dspy(scripted, agent(["search"], max_iters=2), QUESTION, replies)
    ours = run_adapter(scripted, adapter, program(["search"], max_iters=2), QUESTION, replies)
    _same(ours, theirs)
    assert ours.outputs.outputs == {"answer": "out of steps"}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_instructions_and_several_inputs_and_outputs_match_dspy(scripted: ScriptedLM, adapter: str) -> None:
    sig = "question, context: list[str] -> answer, confidence: float"
    inputs = {"question": "Where?", "context": ["a", "b"]}
    replies = [step("look", "search", {"query": "where"}), step("done", "finish", {}),
               chat(reasoning="r", answer="here", confidence="0.5")]
    theirs = run_dspy(scripted, agent(["search"], signature=sig, instructions="Be brief.\n  Use tools."), inputs,
                      replies)
    ours = run_adapter(scripted, adapter, program(["search"], signature=sig, instructions="Be brief.\n  Use tools."),
                       inputs, replies)
    _same(ours, theirs)
    assert ours.outputs.outputs == {"answer": "here", "confidence": 0.5}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_unparseable_step_fails_like_dspy(scripted: ScriptedLM, adapter: str) -> None:
    """A tool name outside the list fails to parse: DSPy retries with the JSON adapter, then raises."""
    replies = [step("a", "no_such_tool", {}), '{"next_thought": "x", "next_tool_name": "nope", "next_tool_args": {}}']
    with pytest.raises(Exception) as their_error:
        run_dspy(scripted, agent(["search"]), QUESTION, replies)
    theirs = list(scripted.requests)
    assert "AdapterParseError" in type(their_error.value).__name__
    with pytest.raises(StepError) as our_error:
        run_adapter(scripted, adapter, program(["search"]), QUESTION, replies)
    assert [r["messages"] for r in scripted.requests] == [r["messages"] for r in theirs]
    assert our_error.value.cause is not None and type(our_error.value.cause).__name__ == "LMParseError"


def test_tool_errors_are_the_same_on_both_backends(scripted: ScriptedLM) -> None:
    replies = [step("bad type", "search", {"query": 3}), step("unknown arg", "search", {"q": "x"}),
               step("missing", "weather", {}), step("bad model", "weather", {"place": {"town": "x"}}),
               step("finish with args", "finish", {"x": 1}), chat(reasoning="r", answer="a")]
    names = ["search", "weather"]
    native = run_adapter(scripted, "native", program(names), QUESTION, replies)
    via_dspy = run_adapter(scripted, "dspy", program(names), QUESTION, replies)
    assert native.messages == via_dspy.messages
    trajectory = native.outputs.trace[0].outputs["trajectory"]
    assert trajectory["observation_0"] == ("Execution error in search: \nValueError: Arg query is invalid: 3 is not "
                                           "of type 'string'")
    assert trajectory["observation_1"] == "Execution error in search: \nValueError: Arg q is not in the tool's args."
    assert trajectory["observation_2"].startswith("Execution error in weather: \nTypeError: ")
    assert trajectory["observation_4"] == "Execution error in finish: \nValueError: Arg x is not in the tool's args."
    assert list(trajectory)[-1] == "observation_4"  # finish ends the loop even when it failed
    assert native.outputs.trace == via_dspy.outputs.trace or native.outputs.outputs == via_dspy.outputs.outputs


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_context_window_truncates_like_dspy(scripted: ScriptedLM, adapter: str) -> None:
    """A context-length error drops the oldest step and retries; with one step left DSPy gives up (so the
    second error here comes when two steps are left again)."""
    replies = [step("a", "search", {"query": "one"}), step("b", "search", {"query": "two"}),
               "!context", step("c", "search", {"query": "three"}),
               "!context", step("d", "finish", {}),
               chat(reasoning="r", answer="short")]
    theirs = run_dspy(scripted, agent(["search"]), QUESTION, replies)
    ours = run_adapter(scripted, adapter, program(["search"]), QUESTION, replies)
    _same(ours, theirs)
    assert ours.outputs.outputs == {"answer": "short"}
    assert list(ours.outputs.trace[0].outputs["trajectory"])[:1] == ["thought_2"]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_context_window_with_one_step_ends_the_trajectory(scripted: ScriptedLM, adapter: str) -> None:
    replies = [step("a", "search", {"query": "one"}), "!context", chat(reasoning="r", answer="from one step")]
    theirs = run_dspy(scripted, agent(["search"]), QUESTION, replies)
    ours = run_adapter(scripted, adapter, program(["search"]), QUESTION, replies)
    _same(ours, theirs)
    assert ours.outputs.outputs == {"answer": "from one step"}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_json_adapter_matches_dspy(scripted: ScriptedLM, adapter: str) -> None:
    import json

    replies = [json.dumps({"next_thought": "t", "next_tool_name": "search", "next_tool_args": {"query": "q"}}),
               json.dumps({"next_thought": "t2", "next_tool_name": "finish", "next_tool_args": {}}),
               json.dumps({"reasoning": "r", "answer": "json answer"})]
    scripted.script(replies)
    lm = dspy.LM("openai/scripted", api_base=scripted.url, api_key="unused", cache=False, num_retries=0,
                 temperature=0.0)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        prediction = agent(["search"])(**QUESTION)
    theirs = Sent(prediction, list(scripted.requests))
    ours = run_adapter(scripted, adapter, program(["search"], lm={"adapter": "json"}), QUESTION, replies)
    assert ours.messages == theirs.messages
    assert ours.outputs.outputs == {"answer": "json answer"}


# -- ensembles around an agent ------------------------------------------------------------------
def _ensemble_program(kind: str) -> Program:
    data = program(["search"]).to_dict()
    data["modules"]["best"] = {"type": kind, "module": "agent", "n": 2, "reward": {"metric": "sb_long"},
                               "threshold": 1.0}
    data["steps"][0]["call"] = "best"
    return Program.model_validate(data)


def _long(example: dict[str, Any], prediction: dict[str, Any]) -> float:
    return 1.0 if len(prediction["answer"]) > 10 else 0.0


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("kind", ["best_of_n", "refine"])
def test_ensembles_of_an_agent_match_dspy(scripted: ScriptedLM, adapter: str, kind: str) -> None:
    from stepbridge.ensembles import metric_source
    from stepbridge.registry import metrics

    replies = [step("a", "search", {"query": "q"}), step("b", "finish", {}), chat(reasoning="r", answer="short")]
    if kind == "refine":
        replies.append(chat(discussion="d", advice={"react": "Search better.", "extract.predict": "Be long."}))
    replies += [step("c", "finish", {}), chat(reasoning="r2", answer="a much longer answer")]
    cls = dspy.BestOfN if kind == "best_of_n" else dspy.Refine
    module = cls(agent(["search"]), N=2, reward_fn=lambda args, pred: _long(args, dict(pred)), threshold=1.0)
    if kind == "refine":
        module.reward_fn_code = metric_source(_long, "sb_long")
    metrics.register("sb_long", _long)
    try:
        theirs = run_dspy(scripted, module, QUESTION, replies)
        ours = run_adapter(scripted, adapter, _ensemble_program(kind), QUESTION, replies)
    finally:
        metrics.unregister("sb_long")
    _same(ours, theirs)
    assert ours.outputs.outputs == {"answer": "a much longer answer"}
