"""The format-2 examples give the same outputs, run the same steps and send the same messages (the
reference server's request log) on native, dspy, pool[native] and pool[dspy]: the multi-hop loop, the
router and the ReAct agent (typed extraction: tests/test_example_extract_person.py)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stepbridge as sb
from stepbridge.lm import LMPool, LMProfile
from stepbridge.reference_lm import ServerURL, running_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CASES = [
    ("multihop_loop", {"question": "Where was the designer of the Eiffel Tower born?"}),
    ("multihop_loop", {"question": "Who created Python and where was he born?"}),
    ("router", {"question": "Which place is the Louvre museum in?"}),
    ("router", {"question": "Which person designed the Eiffel Tower?"}),
    ("router", {"question": "What is DSPy?"}),
    ("react_agent", {"question": "How many people live in France, in millions, times 2?"}),
    ("react_agent", {"question": "What is the capital of Japan?"}),
    ("react_agent", {"question": "What is the currency of Atlantis?"}),
]
BACKENDS = ["native", "dspy", "pool[native]", "pool[dspy]"]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerURL]:
    with running_server() as url:
        yield url


def make_adapter(backend: str, url: str) -> Any:
    profile = LMProfile(name="default", base_url=str(url), model="openai/reference")
    if backend == "native":
        from stepbridge.adapters.native import NativeAdapter

        return NativeAdapter(lm=LMPool(profiles={"default": profile}))
    if backend == "dspy":
        from stepbridge.adapters.dspy import DSPyAdapter

        return DSPyAdapter(profiles={"default": profile})
    from stepbridge.bridge.pool import PoolAdapter

    env = dict(os.environ, STEPBRIDGE_LM_BASE_URL=str(url), STEPBRIDGE_LM_MODEL="openai/reference")
    return PoolAdapter(workers=1, backend=backend.removeprefix("pool[").removesuffix("]"), worker_env=env,
                       start_timeout=120.0)


def sent_since(server: ServerURL, since: int) -> list[str]:
    assert server.log is not None
    # sorted: map elements and parallel calls may reach the server in any order
    return sorted(json.dumps(e["body"]["messages"], ensure_ascii=False) for e in server.log.entries(since))


def last_seq(server: ServerURL) -> int:
    assert server.log is not None
    entries = server.log.entries()
    return entries[-1]["seq"] if entries else 0


@pytest.fixture(scope="module")
def results(server: ServerURL) -> dict[str, list[tuple[sb.RunResult, list[str]]]]:
    """Every case on every backend (one adapter per backend, reused across cases)."""
    out: dict[str, list[tuple[sb.RunResult, list[str]]]] = {}

    async def go() -> None:
        for backend in BACKENDS:
            adapter = make_adapter(backend, server)
            async with sb.Runner(adapter) as runner:
                rows = []
                for name, inputs in CASES:
                    since = last_seq(server)
                    result = await runner.run(EXAMPLES / f"{name}.yaml", inputs)
                    rows.append((result, sent_since(server, since)))
                out[backend] = rows

    asyncio.run(go())
    return out


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_same_outputs_steps_and_messages_as_native(results: dict[str, Any], backend: str) -> None:
    for (name, inputs), (base, base_sent), (other, other_sent) in zip(CASES, results["native"], results[backend],
                                                                       strict=True):
        label = f"{name} {inputs} on {backend}"
        assert base_sent, label
        assert other.outputs == base.outputs, label
        assert other.flow_sequence() == base.flow_sequence(), label
        assert other_sent == base_sent, label
        # every step's outputs, the agent's trajectory (thoughts, tool calls, observations) included
        assert [r.outputs for r in other.trace] == [r.outputs for r in base.trace], label


def test_the_examples_do_what_they_say(results: dict[str, Any]) -> None:
    native = results["native"]
    loop_result = native[0][0]
    assert "Dijon" in loop_result.outputs["answer"]
    assert loop_result.outputs["hops"] == 2  # the second pass found nothing new: until stopped the loop
    loop_record = next(r for r in loop_result.trace if r.kind == "loop")
    assert loop_record.outputs == {"passes": 2, "stopped": "until"}
    routes = [row[0].outputs["route"] for row in native[2:5]]
    assert routes == ["place", "person", "other"]
    modules = [{r.module for r in row[0].trace if r.module} for row in native[2:5]]
    assert "place_answer" in modules[0] and "person_fact" in modules[1] and modules[2] == {"classify", "direct"}
    agents = [row[0] for row in native[5:8]]
    assert [a.outputs["answer"] for a in agents[:2]] == ["136.4", "Tokyo"]
    tools = [[v for k, v in a.trace[0].outputs["trajectory"].items() if k.startswith("tool_name_")] for a in agents]
    assert tools == [["country_facts", "calculate", "finish"], ["country_facts", "finish"],
                     ["country_facts", "finish"]]
    trajectory = agents[0].trace[0].outputs["trajectory"]
    assert trajectory["tool_args_1"] == {"expression": "68.2 * 2"} and trajectory["observation_1"] == 136.4
    # a tool that raised is an observation the agent reads, not a failed run
    failed = agents[2].trace[0].outputs["trajectory"]["observation_0"]
    assert failed.startswith("Execution error in country_facts: \nLookupError: no facts about")
    assert [len(sent) for _, sent in native[5:8]] == [4, 3, 3]  # agent steps (tools, finish), then the extraction


@pytest.mark.parametrize("name", ["multihop_loop", "router", "react_agent"])
def test_the_cli_runs_the_examples_as_written(name: str, tmp_path: Path) -> None:
    from stepbridge.cli import app
    from typer.testing import CliRunner

    question = next(inputs["question"] for example, inputs in CASES if example == name)
    result = CliRunner().invoke(app, ["run", str(EXAMPLES / f"{name}.yaml"), "-i", f"question={question}",
                                      "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["outputs"]["answer"]
