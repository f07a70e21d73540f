"""The native executor end to end: real programs, the real reference LM over real HTTP."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, TypedDict

import httpx
import pytest
import stepbridge as sb
from stepbridge.adapters.native import NativeAdapter
from stepbridge.errors import (
    InputValidationError,
    LMError,
    LMParseError,
    RunTimeoutError,
    StepError,
    UnsupportedCapabilityError,
)
from stepbridge.lm import LMPool, LMProfile

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def http_adapter(url: str, **profile: Any) -> NativeAdapter:
    prof = LMProfile(**{"name": "default", "base_url": url, "model": "openai/reference", "max_retries": 1, **profile})
    return NativeAdapter(lm=LMPool(profiles={"default": prof}))


def server_log(url: str) -> list[dict[str, Any]]:
    root = url.removesuffix("/v1")
    return [e["body"] for e in httpx.get(f"{root}/_stepbridge/requests").json()["requests"]]


def clear_log(url: str) -> None:
    httpx.delete(url.removesuffix("/v1") + "/_stepbridge/requests")


async def run_with(adapter: Any, program: Any, inputs: dict[str, Any], **options: Any) -> sb.RunResult:
    async with sb.Runner(adapter) as runner:
        return await runner.run(program, inputs, **options)


def test_rag_over_http_matches_in_process(reference_lm: str) -> None:
    program = sb.load_program(EXAMPLES / "rag_qa.yaml")
    inputs = {"question": "Who designed the Eiffel Tower?"}
    clear_log(reference_lm)
    over_http = asyncio.run(run_with(http_adapter(reference_lm), program, inputs))
    in_process = sb.run(program, inputs)  # no profile configured: the in-process reference model

    assert over_http.outputs == in_process.outputs
    assert "Eiffel" in over_http.outputs["answer"]
    assert over_http.step_sequence() == [(0, "call", "search"), (1, "call", "answer"), (2, "return", None)]
    # the trace holds exactly the messages the server received
    sent = server_log(reference_lm)
    assert len(sent) == 1
    assert sent[0]["messages"] == over_http.trace[1].lm_calls[0].messages
    assert sent[0]["model"] == "reference"  # provider prefix stripped like DSPy's client
    assert sent[0]["temperature"] == 0.0
    assert over_http.trace[0].outputs["passages"][0].startswith("Eiffel Tower")
    assert over_http.usage.lm_calls == 1 and over_http.usage.total_tokens > 0
    assert over_http.program_hash == program.content_hash


def test_multihop_map_runs_every_element_in_order() -> None:
    program = sb.load_program(EXAMPLES / "multihop.yaml")
    result = sb.run(program, {"question": "Where was the designer of the Eiffel Tower born?"})
    map_step = result.trace[3]
    assert map_step.kind == "map" and map_step.module == "extract"
    assert len(map_step.children) == 2  # k=2 passages from the second hop
    second_passages = result.trace[2].outputs["passages"]
    assert [c.inputs["passage"] for c in map_step.children] == second_passages
    # $extracted.fact on a map result is the list of facts, in input order
    assert result.trace[4].inputs["facts"] == [c.outputs["fact"] for c in map_step.children]
    assert result.usage.lm_calls == 4


def test_map_concurrency_is_bounded_and_results_keep_order() -> None:
    active = 0
    peak = 0

    async def slow_upper(text: str) -> str:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        return text.upper()

    sb.tools.register("test_slow_upper", slow_upper)
    try:
        b = sb.ProgramBuilder("upper_all", "words: list[str] -> shouted: list[str]")
        b.tool("up", "test_slow_upper")
        res = b.map("up", b.inputs.words, item="w", text=b.item("w"), concurrency=3)
        program = b.returns(shouted=res.result).build()
        words = [f"w{i}" for i in range(12)]
        result = sb.run(program, {"words": words})
    finally:
        sb.tools.unregister("test_slow_upper")
    assert result.outputs["shouted"] == [w.upper() for w in words]
    assert 1 < peak <= 3


class Stats(TypedDict):
    count: int
    longest: str


def test_sync_tool_and_typed_dict_outputs() -> None:
    def stats(words: list[str]) -> Stats:
        return {"count": len(words), "longest": max(words, key=len)}

    sb.tools.register("test_stats", stats)
    try:
        b = sb.ProgramBuilder("stats", "words: list[str] -> count: int, longest")
        b.tool("s", "test_stats")
        r = b.call("s", words=b.inputs.words)
        program = b.returns(count=r.count, longest=r.longest).build()
        result = sb.run(program, {"words": ["a", "abc", "ab"]})
    finally:
        sb.tools.unregister("test_stats")
    assert result.outputs == {"count": 3, "longest": "abc"}


def test_lm_failure_is_a_step_error_with_partial_trace(reference_lm: str) -> None:
    program = sb.load_program(EXAMPLES / "rag_qa.yaml")
    clear_log(reference_lm)
    with pytest.raises(StepError) as info:
        asyncio.run(run_with(http_adapter(reference_lm), program, {"question": "q?"},
                             lm=sb.LMConfig(model="openai/reference/error-500")))
    err = info.value
    assert err.step == 1 and err.module == "answer"
    assert isinstance(err.cause, LMError) and err.cause.status == 500 and err.cause.retriable
    # partial trace: the retrieve step finished, the failing step is recorded with its error
    assert err.trace[0].outputs["passages"]
    assert err.trace[1].error is not None and err.trace[1].error["type"] == "LMError"
    assert len(server_log(reference_lm)) == 2  # one try + max_retries=1 retry


def test_retry_recovers_from_transient_429(reference_lm: str) -> None:
    program = sb.load_program(EXAMPLES / "classify.yaml")
    clear_log(reference_lm)
    adapter = http_adapter(reference_lm, max_retries=3)
    result = asyncio.run(run_with(adapter, program, {"ticket": "I was charged twice, refund please"},
                                  lm=sb.LMConfig(model="openai/reference/flaky-2")))
    assert result.outputs["team"] in ("billing", "technical", "sales")
    assert len(server_log(reference_lm)) == 3


def test_garbage_reply_falls_back_to_json_then_fails_typed(reference_lm: str) -> None:
    program = sb.load_program(EXAMPLES / "classify.yaml")
    clear_log(reference_lm)
    with pytest.raises(StepError) as info:
        asyncio.run(run_with(http_adapter(reference_lm), program, {"ticket": "hello"},
                             lm=sb.LMConfig(model="openai/reference/garbage")))
    assert isinstance(info.value.cause, LMParseError)
    sent = server_log(reference_lm)
    # DSPy's ChatAdapter retries once with the JSON adapter on a parse error; so do we.
    assert len(sent) == 2 and "response_format" not in sent[0] and "response_format" in sent[1]
    assert len(info.value.trace[0].lm_calls) == 2


def test_timeout_raises_run_timeout_with_partial_trace(reference_lm: str) -> None:
    program = sb.load_program(EXAMPLES / "rag_qa.yaml")
    with pytest.raises(RunTimeoutError) as info:
        asyncio.run(run_with(http_adapter(reference_lm), program, {"question": "q?"}, timeout=0.3,
                             lm=sb.LMConfig(model="openai/reference/slow-5000")))
    assert info.value.timeout == 0.3
    assert [t.module for t in info.value.trace] == ["search", "answer"]


def test_cancel_stops_the_run(reference_lm: str) -> None:
    program = sb.load_program(EXAMPLES / "rag_qa.yaml")

    async def go() -> None:
        async with sb.Runner(http_adapter(reference_lm)) as runner:
            task = asyncio.ensure_future(runner.run(program, {"question": "q?"},
                                                    lm=sb.LMConfig(model="openai/reference/slow-5000")))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(go(), 3))


def test_dspy_module_is_unsupported_natively() -> None:
    sb.dspy_modules.register("test_dspy_thing", object)
    try:
        program = sb.load_program({
            "stepbridge": 1, "name": "d", "signature": "q -> a",
            "modules": {"m": {"type": "dspy", "module": "test_dspy_thing", "signature": "q -> a"}},
            "steps": [{"call": "m", "with": {"q": "$inputs.q"}, "as": "r"}, {"return": {"a": "$r.a"}}],
        })
    finally:
        sb.dspy_modules.unregister("test_dspy_thing")
    with pytest.raises(UnsupportedCapabilityError) as info:
        sb.run(program, {"q": "x"})
    assert info.value.capability == "dspy_modules"


def test_inputs_are_checked_before_running() -> None:
    program = sb.load_program(EXAMPLES / "rag_qa.yaml")
    with pytest.raises(InputValidationError, match="missing input 'question'"):
        sb.run(program, {})
    with pytest.raises(InputValidationError, match="did you mean 'question'"):
        sb.run(program, {"questoin": "x"})
    with pytest.raises(InputValidationError, match="must be str"):
        sb.run(program, {"question": 3})


class _NoRetrieve:
    """A minimal adapter that declares nothing beyond async: the core must refuse retrieval programs."""

    name = "bare"
    capabilities = frozenset({"async"})

    async def prepare(self, program: sb.Program) -> None:
        raise AssertionError("prepare must not be reached")

    async def run(self, program: sb.Program, inputs: dict[str, Any], options: sb.RunOptions) -> sb.RunResult:
        raise AssertionError("run must not be reached")

    async def aclose(self) -> None:
        return None


def test_core_refuses_programs_needing_undeclared_capabilities() -> None:
    with pytest.raises(UnsupportedCapabilityError) as info:
        sb.run(EXAMPLES / "rag_qa.yaml", {"question": "q"}, backend=_NoRetrieve())
    assert info.value.capability == "retrieve" and info.value.adapter == "bare"


def test_batch_keeps_going_past_failures_and_keeps_order() -> None:
    rows = [{"ticket": "refund my invoice"}, {"ticket": 5}, {"ticket": "the app crashes on login"}]
    items = sb.batch(EXAMPLES / "classify.yaml", rows, concurrency=2)
    assert [i.index for i in items] == [0, 1, 2]
    assert items[0].ok and items[2].ok
    assert isinstance(items[1].error, InputValidationError)


def test_json_adapter_sends_response_format_and_parses(reference_lm: str) -> None:
    clear_log(reference_lm)
    program = sb.load_program({
        "stepbridge": 1, "name": "j", "signature": "ticket -> team: Literal['billing', 'technical'], score: int",
        "lm": {"adapter": "json", "temperature": 0.5, "max_tokens": 300},
        "modules": {"m": {"type": "predict",
                          "signature": "ticket -> team: Literal['billing', 'technical'], score: int"}},
        "steps": [{"call": "m", "with": {"ticket": "$inputs.ticket"}, "as": "r"},
                  {"return": {"team": "$r.team", "score": "$r.score"}}],
    })
    result = asyncio.run(run_with(http_adapter(reference_lm), program, {"ticket": "my bill has 3 errors"}))
    assert result.outputs["team"] in ("billing", "technical") and isinstance(result.outputs["score"], int)
    body = server_log(reference_lm)[0]
    assert body["response_format"] and body["temperature"] == 0.5 and body["max_tokens"] == 300


def test_response_cache_skips_repeated_requests(reference_lm: str) -> None:
    clear_log(reference_lm)
    adapter = http_adapter(reference_lm, cache=True)
    program = sb.load_program(EXAMPLES / "classify.yaml")

    async def twice() -> list[sb.RunResult]:
        async with sb.Runner(adapter) as runner:
            return [await runner.run(program, {"ticket": "refund"}) for _ in range(2)]

    first, second = asyncio.run(twice())
    assert first.outputs == second.outputs
    assert second.trace[0].lm_calls[0].cached
    assert len(server_log(reference_lm)) == 1
