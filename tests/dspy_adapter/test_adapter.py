"""The DSPy adapter: a real dspy.Module, isolated concurrent runs, typed errors, partial traces."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from sb_dspy import EXAMPLES, last_seq
from stepbridge import Runner, RunOptions, load_program
from stepbridge.adapters.dspy import DSPyAdapter, ProgramModule, dspy
from stepbridge.errors import LMError, RunTimeoutError, StepError, UnsupportedCapabilityError
from stepbridge.program import LMConfig
from stepbridge.registry import dspy_modules, tools

N = 200


def _program(name: str) -> Any:
    return load_program(EXAMPLES / f"{name}.yaml")


def test_program_is_a_real_dspy_module(dspy_adapter: DSPyAdapter) -> None:
    program = load_program({
        "stepbridge": 1, "name": "two", "signature": "question -> answer",
        "modules": {
            "draft": {"type": "predict", "signature": "question -> draft", "instructions": "Draft an answer.",
                      "demos": [{"question": "2+2?", "draft": "4"}]},
            "final": {"type": "chain_of_thought", "signature": "question, draft -> answer"},
        },
        "steps": [{"call": "draft", "with": {"question": "$inputs.question"}, "as": "d"},
                  {"call": "final", "with": {"question": "$inputs.question", "draft": "$d.draft"}, "as": "f"},
                  {"return": {"answer": "$f.answer"}}],
    })
    module = dspy_adapter.module(program)
    assert isinstance(module, dspy.Module)
    predictors = dict(module.named_predictors())
    assert list(predictors) == ["draft", "final.predict"]
    assert isinstance(module.draft, dspy.Predict) and isinstance(module.final, dspy.ChainOfThought)
    assert predictors["draft"].signature.instructions == "Draft an answer."
    assert [dict(d) for d in predictors["draft"].demos] == [{"question": "2+2?", "draft": "4"}]
    assert list(predictors["final.predict"].signature.output_fields) == ["reasoning", "answer"]


def test_program_module_runs_under_plain_dspy(server: Any, dspy_lm: Any, dspy_adapter: DSPyAdapter) -> None:
    program = _program("multihop")
    module = ProgramModule(program)
    inputs = {"question": "Who designed the Eiffel Tower?"}
    with dspy.context(lm=dspy_lm):
        sync = module(**inputs)
        asynchronous = asyncio.run(module.acall(**inputs))
    result = asyncio.run(dspy_adapter.run(program, inputs, RunOptions()))
    assert dict(sync) == dict(asynchronous) == result.outputs


def test_no_profile_starts_an_owned_reference_server() -> None:
    adapter = DSPyAdapter(profiles={})
    try:
        result = asyncio.run(adapter.run(_program("rag_qa"), {"question": "Where is Mount Everest?"}))
        url = adapter.reference_url()
        assert url.startswith("http://127.0.0.1:")
        assert "Everest" in result.outputs["answer"]
        assert result.trace[1].lm_calls[0].messages[0]["role"] == "system"
    finally:
        adapter.close()
    assert adapter._reference_url is None


def test_runner_checks_capabilities_and_runs(profiles: Any) -> None:
    async def go() -> Any:
        async with Runner("stepbridge.adapters.dspy:DSPyAdapter", profiles=profiles) as runner:
            assert runner.backend == "dspy"
            return await runner.run(_program("classify"), {"ticket": "Please refund my invoice"})

    result = asyncio.run(go())
    assert result.outputs["team"] == "billing"
    assert {"dspy_modules", "map", "retrieve", "tools", "lm_trace", "json_adapter"} <= DSPyAdapter.capabilities


def _rows(n: int) -> list[tuple[dict[str, Any], RunOptions]]:
    rows = []
    for i in range(n):
        options = RunOptions(lm=LMConfig(temperature=round((i % 7) / 10, 1), adapter="json" if i % 5 == 0 else None))
        rows.append(({"ticket": f"ticket {i}: my invoice is wrong, please refund"}, options))
    return rows


def _check_no_leak(server: Any, since: int, rows: list[tuple[dict[str, Any], RunOptions]]) -> None:
    by_ticket = {inputs["ticket"]: options for inputs, options in rows}
    entries = server.log.entries(since)
    assert len(entries) == len(rows)
    for entry in entries:
        user = entry["body"]["messages"][-1]["content"]
        ticket = next(t for t in by_ticket if t + "\n" in user + "\n")
        options = by_ticket[ticket]
        assert options.lm is not None
        assert entry["body"]["temperature"] == options.lm.temperature
        assert ("Respond with a JSON object" in user) == (options.lm.adapter == "json")
    assert dspy.settings.lm is None and not dspy.settings.get("callbacks")


def test_concurrent_runs_from_tasks_and_threads_equal_sequential(server: Any, dspy_adapter: DSPyAdapter) -> None:
    program = _program("classify")
    rows = _rows(N)

    async def sequential() -> list[Any]:
        return [await dspy_adapter.run(program, inputs, options) for inputs, options in rows]

    start = last_seq(server)
    expected = [r.outputs for r in asyncio.run(sequential())]
    _check_no_leak(server, start, rows)

    async def tasks() -> list[Any]:
        return list(await asyncio.gather(*(dspy_adapter.run(program, i, o) for i, o in rows)))

    start = last_seq(server)
    assert [r.outputs for r in asyncio.run(tasks())] == expected
    _check_no_leak(server, start, rows)

    results: list[Any] = [None] * N
    errors: list[BaseException] = []

    def worker(indices: range) -> None:
        try:
            for i in indices:
                inputs, options = rows[i]
                results[i] = asyncio.run(dspy_adapter.run(program, inputs, options))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    start = last_seq(server)
    threads = [threading.Thread(target=worker, args=(range(k, N, 20),)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [r.outputs for r in results] == expected
    _check_no_leak(server, start, rows)
    # Every trace holds exactly its own LM call.
    for (inputs, _), result in zip(rows, results, strict=True):
        calls = result.trace[0].lm_calls
        assert len(calls) == 1 and inputs["ticket"] in calls[0].messages[-1]["content"]


def test_plain_dspy_module_from_threads(dspy_lm: Any) -> None:
    """The module itself is thread-safe under dspy.context (each thread its own context)."""
    module = ProgramModule(_program("rag_qa"))
    questions = [f"Who designed the Eiffel Tower? ({i})" for i in range(40)]
    with dspy.context(lm=dspy_lm):
        expected = [module(question=q).answer for q in questions]
    got: dict[int, str] = {}

    def worker(i: int) -> None:
        with dspy.context(lm=dspy_lm):
            got[i] = module(question=questions[i]).answer

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(questions))] == expected


def test_lm_error_is_typed_with_partial_trace(dspy_adapter: DSPyAdapter) -> None:
    program = _program("rag_qa")
    with pytest.raises(StepError) as info:
        asyncio.run(dspy_adapter.run(program, {"question": "Where is the Louvre?"},
                                     RunOptions(lm=LMConfig(model="openai/reference/error-400"))))
    error = info.value
    assert isinstance(error.cause, LMError) and error.cause.status == 400 and not error.retriable
    assert (error.step, error.module) == (1, "answer")
    assert [s.kind for s in error.trace] == ["call", "call"]
    assert error.trace[0].outputs["passages"]  # the retrieval step finished
    assert error.trace[1].error is not None and error.trace[1].lm_calls[0].error is not None
    assert StepError.__name__ in str(type(error))


def test_timeout(dspy_adapter: DSPyAdapter) -> None:
    with pytest.raises(RunTimeoutError) as info:
        asyncio.run(dspy_adapter.run(_program("rag_qa"), {"question": "Where is the Louvre?"},
                                     RunOptions(timeout=0.3, lm=LMConfig(model="openai/reference/slow-5000"))))
    assert info.value.timeout == 0.3
    assert [s.step for s in info.value.trace] == [0, 1]


def test_tool_and_registered_dspy_module(server: Any, native_adapter: Any, dspy_adapter: DSPyAdapter,
                                         dspy_lm: Any) -> None:
    class Shout(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.say = dspy.Predict("text -> reply")

        def forward(self, text: str) -> Any:
            return self.say(text=text)

    def word_count(text: str) -> int:
        return len(text.split())

    tools.register("sb_test_word_count", word_count)
    dspy_modules.register("sb_test.Shout", Shout)
    try:
        saved = Shout()
        saved.say.demos = [dspy.Example(text="hi", reply="HI")]
        data = {
            "stepbridge": 1, "name": "mixed", "signature": "text -> reply, words: int",
            "modules": {
                "count": {"type": "tool", "tool": "sb_test_word_count"},
                "shout": {"type": "dspy", "module": "sb_test.Shout", "signature": "text -> reply",
                          "state": saved.dump_state()},
            },
            "steps": [{"call": "count", "with": {"text": "$inputs.text"}, "as": "c"},
                      {"call": "shout", "with": {"text": "$inputs.text"}, "as": "s"},
                      {"return": {"reply": "$s.reply", "words": "$c.result"}}],
        }
        program = load_program(data)
        result = asyncio.run(dspy_adapter.run(program, {"text": "hello big world"}))
        assert result.outputs["words"] == 3
        with dspy.context(lm=dspy_lm):
            assert result.outputs["reply"] == saved(text="hello big world").reply
        messages = result.trace[1].lm_calls[0].messages
        assert messages[1] == {"role": "user", "content": "[[ ## text ## ]]\nhi"}  # the demo from the state
        assert result.step_sequence() == [(0, "call", "count"), (1, "call", "shout"), (2, "return", None)]
        # The native executor cannot run a dspy step, and says so with a typed error.
        with pytest.raises(UnsupportedCapabilityError):
            asyncio.run(native_adapter.prepare(program))
    finally:
        tools.unregister("sb_test_word_count")
        dspy_modules.unregister("sb_test.Shout")


def test_state_lm_from_a_program_is_ignored(dspy_adapter: DSPyAdapter) -> None:
    """A program cannot point a predictor at another endpoint through a DSPy state's ``lm``."""
    from stepbridge.adapters.dspy import sanitize_state

    state = dspy.Predict("q -> a").dump_state()
    state["lm"] = {"model": "openai/gpt-4o", "api_base": "http://evil.invalid/v1", "cache": False}
    state["forward"] = "overwritten"
    clean = sanitize_state({"say": state})
    assert clean["say"]["lm"] is None and "forward" not in clean["say"]


def test_sanitize_state_drops_lm_of_predictor_entries_without_demos() -> None:
    from stepbridge.adapters.dspy import sanitize_state

    state = dspy.Predict("q -> a").dump_state()
    del state["demos"]
    state["lm"] = {"model": "openai/other", "cache": False}
    state["forward"] = "overwritten"
    clean = sanitize_state({"say": state})
    assert clean["say"]["lm"] is None and "forward" not in clean["say"]


@pytest.mark.parametrize("with_demos", [False, True])
def test_state_lm_cannot_redirect_a_registered_module(monkeypatch: pytest.MonkeyPatch, with_demos: bool) -> None:
    """Server A is the operator's profile; server B is where a state's own LM would go (the OpenAI
    provider's default endpoint, here pointed at B). The state is refused at validation, with the
    pointer of its ``lm``; the same module with an honest state sends every request to A."""
    from stepbridge.errors import ProgramValidationError
    from stepbridge.lm import LMProfile
    from stepbridge.reference_lm import running_server

    class Echo(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.say = dspy.Predict("text -> reply")

        def forward(self, text: str) -> Any:
            return self.say(text=text)

    def program(state: dict[str, Any]) -> dict[str, Any]:
        return {
            "stepbridge": 1, "name": "redirect", "signature": "text -> reply",
            "modules": {"echo": {"type": "dspy", "module": "sb_test.Echo", "signature": "text -> reply",
                                 "state": state}},
            "steps": [{"call": "echo", "with": {"text": "$inputs.text"}, "as": "r"},
                      {"return": {"reply": "$r.reply"}}],
        }

    with running_server() as a, running_server() as b:
        monkeypatch.setenv("OPENAI_BASE_URL", str(b))
        monkeypatch.setenv("OPENAI_API_BASE", str(b))
        monkeypatch.setenv("OPENAI_API_KEY", "not-the-operators")
        honest = json.loads(json.dumps(Echo().dump_state()))
        if not with_demos:
            del honest["say"]["demos"]
        hostile = json.loads(json.dumps(honest))
        hostile["say"]["lm"] = {"model": "openai/attacker-model", "api_base": str(b), "base_url": str(b),
                                "cache": False}
        dspy_modules.register("sb_test.Echo", Echo)
        adapter = DSPyAdapter(profiles={"default": LMProfile(name="default", base_url=str(a),
                                                             model="openai/reference")})
        try:
            with pytest.raises(ProgramValidationError) as info:
                load_program(program(hostile))
            assert [i.pointer for i in info.value.issues] == ["/modules/echo/state/say/lm"]
            result = asyncio.run(adapter.run(load_program(program(honest)), {"text": "hello"}))
            assert all(p.lm is None for _, p in adapter.module(load_program(program(honest))).echo.named_predictors())
        finally:
            asyncio.run(adapter.aclose())
            dspy_modules.unregister("sb_test.Echo")
        assert b.log is not None and a.log is not None
        assert b.log.entries() == []
        assert [e["body"]["model"] for e in a.log.entries()] == ["reference"]
        assert result.trace[0].lm_calls[0].model == "openai/reference"
