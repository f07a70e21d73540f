"""examples/extract_person.yaml (typed extraction into a nested object type with an enum) runs as written on
the reference LM and gives the same outputs, steps, messages and request bodies on native, dspy,
pool[native] and pool[dspy]."""

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

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "extract_person.yaml"
TEXT = ("Ada Lovelace, 36, is an engineer from London (ada@example.org). "
        "Grace Hopper was a scientist aged 85 who lived in New York.")
CASES = [{"text": TEXT}, {"text": "nothing but lowercase words here"}]
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


def bodies_since(server: ServerURL, since: int) -> list[dict[str, Any]]:
    assert server.log is not None
    return [e["body"] for e in server.log.entries(since)]


def last_seq(server: ServerURL) -> int:
    assert server.log is not None
    entries = server.log.entries()
    return entries[-1]["seq"] if entries else 0


@pytest.fixture(scope="module")
def results(server: ServerURL) -> dict[str, list[tuple[sb.RunResult, list[dict[str, Any]]]]]:
    out: dict[str, list[tuple[sb.RunResult, list[dict[str, Any]]]]] = {}

    async def go() -> None:
        for backend in BACKENDS:
            async with sb.Runner(make_adapter(backend, server)) as runner:
                rows = []
                for inputs in CASES:
                    since = last_seq(server)
                    result = await runner.run(EXAMPLE, inputs)
                    rows.append((result, bodies_since(server, since)))
                out[backend] = rows

    asyncio.run(go())
    return out


def test_extracts_typed_records(results: dict[str, Any]) -> None:
    result, sent = results["native"][0]
    people = result.outputs["people"]
    assert [(p["name"], p["age"], p["role"], p["home"]["city"]) for p in people] == [
        ("Ada Lovelace", 36, "engineer", "London"), ("Grace Hopper", 85, "scientist", "New York")]
    assert [p["email"] for p in people] == ["ada@example.org", None]
    assert result.outputs["main"] == people[0]
    assert "Ada Lovelace" in result.outputs["summary"]
    # the JSON module asked for DSPy's structured outputs schema, with the declared types as $defs
    schema = sent[0]["response_format"]["json_schema"]["schema"]
    assert sorted(schema["$defs"]) == ["Address", "Person", "Role"]
    assert schema["$defs"]["Role"]["enum"] == ["engineer", "scientist", "writer", "manager", "other"]
    # the describe module got the record as DSPy renders a model instance: every field, in order
    user = sent[1]["messages"][-1]["content"]
    assert '[[ ## person ## ]]\n{"name": "Ada Lovelace", "age": 36, "role": "engineer"' in user
    empty, _ = results["native"][1]
    assert empty.outputs == {"people": [], "main": None, "summary": "No one is mentioned."}


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_same_outputs_steps_messages_and_bodies_as_native(results: dict[str, Any], backend: str) -> None:
    for inputs, (base, base_sent), (other, other_sent) in zip(CASES, results["native"], results[backend],
                                                              strict=True):
        label = f"{inputs} on {backend}"
        assert other.outputs == base.outputs, label
        assert other.flow_sequence() == base.flow_sequence(), label
        assert [b["messages"] for b in other_sent] == [b["messages"] for b in base_sent], label
        for mine, theirs in zip(base_sent, other_sent, strict=True):
            assert mine.get("temperature") == theirs.get("temperature"), label
            if backend.endswith("native]"):
                assert mine == theirs, label  # the same executor in a worker: the same bodies


def test_the_cli_runs_it_as_written() -> None:
    from stepbridge.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["run", str(EXAMPLE), "-i", f"text={TEXT}", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["outputs"]["main"]["name"] == "Ada Lovelace"
