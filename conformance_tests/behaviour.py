"""The suite's behavioural tests (a mixin of :class:`~stepbridge.conformance.AdapterConformance`).

Each test provokes one promise of the protocol and judges it from outside the adapter where it can:
the requests and connections the suite's reference LM saw, the side effects on the suite's ledger,
and the native adapter's behaviour on the same program. Waits are causal, never performance
thresholds: "no request arrived in the second after the run was cancelled", not "it was fast".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from stepbridge.adapter import RunOptions
from stepbridge.errors import RunCancelledError, RunTimeoutError, StepError
from stepbridge.loader import load_program
from stepbridge.program import CallStep, LMConfig, MapStep, Program
from stepbridge.result import RunResult, StepTrace

from .cases import load_cases
from .checks import (
    describe_error,
    describe_outcome,
    diff_requests,
    fail,
    first_difference,
    same,
    short,
    trace_labels,
)
from .harness import Harness, Observed, as_trace
from .meta import capability

__all__ = ["BehaviourTests", "check_error", "check_outputs", "check_partial_trace", "native_observation"]

_BY_ID = {c.id: c for c in load_cases()}

Diagnosis = tuple[str | None, tuple[str, ...] | None]


# ================================================================================================
# shared judgements
# ================================================================================================
#: Native's observation of each case run, for every harness of this process: the reference LM and the native
#: adapter are deterministic, so one native run per case run is enough (a run of many adapters, such as the
#: suite's mutation test, pays for it once).
_NATIVE_RUNS: dict[str, Observed] = {}


def native_observation(h: Harness, run: Any) -> Observed:
    """Native's observation of a case run (cached)."""
    seen = _NATIVE_RUNS.get(run.id)
    if seen is None:
        case = run.case
        seen = _NATIVE_RUNS[run.id] = h.observe(
            lambda: h.run(case.native_program, run.inputs, native=True, options=h.options(run.lm)))
    return seen


def check_outputs(expected: dict[str, Any], actual: Any, what: str, *, baseline: str = "the case's",
                  difference: str | None = None, look_at: tuple[str, ...] | None = None) -> None:
    """Outputs equal, types included (``1`` is not ``1.0``), by name."""
    if not isinstance(actual, dict):
        fail(f"{what}: RunResult.outputs is not a dict of the program's outputs", expected="a dict",
             actual=type(actual).__name__, look_at="outputs")
    diff = first_difference(expected, actual)
    if diff:
        fail(f"{what}: the outputs are not {baseline}",
             expected=short(json.dumps(expected, ensure_ascii=False), 400),
             actual=short(json.dumps(actual, ensure_ascii=False, default=repr), 400),
             difference=difference or f"output {diff}",
             look_at=look_at or (("outputs", "parsing") if not difference else ("prompt",)))


def check_error(err: BaseException | None, expected: dict[str, Any], what: str, program: Program | None = None,
                result: Any = None, *, diagnose: Callable[[], Diagnosis] | None = None) -> None:
    """The typed error a case expects: type, details, cause, and (for StepError) the partial trace."""
    want = expected["type"]
    if err is None or type(err).__name__ != want:
        cause, look = diagnose() if diagnose is not None else (None, None)
        if err is None:
            fail(f"{what}: the run succeeded where it must fail", expected=_describe_expected(expected),
                 actual=describe_outcome(result, None), difference=cause,
                 look_at=look or (("parsing",) if "Parse" in json.dumps(expected) else ("errors",)))
        fail(f"{what}: the run failed with another error type", expected=_describe_expected(expected),
             actual=describe_outcome(None, err), difference=cause, look_at=look or ("errors",))
    for key, value in expected.items():
        if key in ("type", "cause", "message_contains"):
            continue
        actual = getattr(err, key, "<missing>")
        if not same(value, actual):
            fail(f"{what}: {want}.{key} is not kept", expected=f"{key}={value!r}", actual=f"{key}={actual!r}",
                 look_at="errors")
    if "message_contains" in expected and expected["message_contains"] not in str(err):
        fail(f"{what}: the {want} message does not say what failed",
             expected=f"a message mentioning {expected['message_contains']!r}", actual=repr(str(err)[:300]),
             look_at="errors")
    if "cause" in expected:
        cause_error = getattr(err, "cause", None)
        if cause_error is None:
            fail(f"{what}: {want}.cause is missing", expected=_describe_expected(expected["cause"]),
                 actual=describe_error(err), look_at="errors")
        check_error(cause_error, expected["cause"], f"{what} (its cause)")
    if isinstance(err, StepError) and program is not None:
        check_partial_trace(err, program, what)


def _describe_expected(expected: dict[str, Any]) -> str:
    details = ", ".join(f"{k}={v!r}" for k, v in expected.items() if k not in ("type", "cause"))
    cause = f", cause={_describe_expected(expected['cause'])}" if "cause" in expected else ""
    return f"{expected['type']}({details}{cause})".replace("(, ", "(")


def check_partial_trace(err: StepError, program: Program, what: str) -> None:
    """A StepError's trace: every finished step with its outputs, the failed one with its typed error."""
    try:
        trace = as_trace(err.trace)
    except Exception as exc:
        fail(f"{what}: the error's trace is not a list of StepTrace records", actual=str(exc)[:300],
             look_at="errors")
    if not trace:
        fail(f"{what}: the StepError carries no partial trace",
             expected="StepError(..., trace=[the finished steps with outputs, the failed step with error])",
             actual="an empty trace", look_at="errors")
    by_step: dict[int, StepTrace] = {}
    for record in trace:
        by_step.setdefault(record.step, record)
    for index in range(err.step):
        if index >= len(program.steps) or not isinstance(program.steps[index], CallStep | MapStep):
            continue
        done = by_step.get(index)
        if done is None or done.error is not None or done.outputs is None:
            fail(f"{what}: the partial trace lacks finished step {index}",
                 expected=f"step {index} with its outputs", actual=short(repr(done), 300), look_at="trace")
    failed = by_step.get(err.step)
    cause = err.cause
    if failed is None or not isinstance(failed.error, dict):
        fail(f"{what}: the partial trace lacks the failed step {err.step}",
             expected=f"step {err.step} with `error` set to the cause's to_dict()", actual=short(repr(failed), 300),
             look_at="trace")
    if cause is not None and failed.error.get("type") != type(cause).__name__:
        fail(f"{what}: the failed step's trace error is not the cause",
             expected=type(cause).__name__, actual=str(failed.error.get("type")), look_at="trace")



def _all_calls(trace: list[StepTrace]) -> list[Any]:
    calls: list[Any] = []
    for record in trace:
        calls.extend(record.lm_calls)
        calls.extend(_all_calls(record.children))
    return calls


def _load(data: dict[str, Any], base_dir: Path | None = None) -> Program:
    return load_program(data, base_dir=base_dir)


def _chain(name: str, steps: int, *, model: str | None = None, first_model: str | None = None) -> Program:
    """``steps`` predict steps, each one's answer feeding the next (the question travels along)."""
    modules: dict[str, Any] = {}
    program_steps: list[dict[str, Any]] = []
    previous = None
    for i in range(steps):
        signature = "question -> answer" if previous is None else "question, previous -> answer"
        module: dict[str, Any] = {"type": "predict", "signature": signature}
        lm = first_model if i == 0 and first_model else model
        if lm:
            module["lm"] = {"model": lm}
        modules[f"s{i}"] = module
        args = {"question": "$inputs.question"} if previous is None else \
            {"question": "$inputs.question", "previous": f"${previous}.answer"}
        program_steps.append({"call": f"s{i}", "with": args, "as": f"r{i}"})
        previous = f"r{i}"
    program_steps.append({"return": {"answer": f"${previous}.answer", "first": "$r0.answer"}})
    return _load({"stepbridge": 1, "name": name, "signature": "question -> answer, first", "modules": modules,
                  "steps": program_steps})


def _usage_of(entries: list[dict[str, Any]]) -> dict[str, int] | None:
    """The usage the LM reported, summed over its successful answers (None when the log does not say)."""
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "lm_calls": 0}
    for entry in entries:
        if "status" not in entry:
            return None
        if entry["status"] != 200:
            continue
        usage = entry.get("usage") or {}
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            total[key] += int(usage.get(key) or 0)
        total["lm_calls"] += 1
    return total


class BehaviourTests:
    """The behavioural half of the suite."""

    @staticmethod
    def require(h: Harness, needs: Any, what: str = "this test") -> None:
        missing = sorted(set(needs) - h.capabilities)
        if missing:
            pytest.skip(f"adapter {h.name!r} does not declare capability {', '.join(map(repr, missing))} "
                        f"(needed by {what})")

    # ================================================================================================
    # what every adapter does
    # ================================================================================================
    @capability("core")
    def test_result_shape(self, conformance: Harness) -> None:
        """RunResult: backend, program hash, the execution id it was given, one trace record per step."""
        h = conformance
        program = _BY_ID["literals_and_lm_overrides"].program
        options = RunOptions(execution_id="conformance-" + "0" * 20)
        result = h.run(program, _BY_ID["literals_and_lm_overrides"].runs[0].inputs, options=options)
        if not isinstance(result, RunResult):
            fail("adapter.run returned something else than a RunResult", expected="stepbridge.RunResult",
                 actual=type(result).__name__, look_at="result")
        if result.program_hash != program.content_hash:
            fail("RunResult.program_hash is not the program's content hash", expected=program.content_hash,
                 actual=repr(result.program_hash), look_at="result")
        if result.execution_id != options.execution_id:
            fail("RunResult.execution_id is not the one the run was given", expected=options.execution_id,
                 actual=repr(result.execution_id), look_at="result")
        if not isinstance(result.backend, str) or not result.backend:
            fail("RunResult.backend is empty", expected="the backend's name", actual=repr(result.backend),
                 look_at="result")
        expected = [(i, "return" if not isinstance(s, CallStep | MapStep) else
                     ("call" if isinstance(s, CallStep) else "map"),
                     s.call if isinstance(s, CallStep) else (s.map if isinstance(s, MapStep) else None))
                    for i, s in enumerate(program.steps)]
        if result.step_sequence() != expected:
            fail("the trace is not one record per step", expected=str(expected), actual=str(result.step_sequence()),
                 look_at="trace")
        if result.duration_ms < 0:
            fail("RunResult.duration_ms is negative", actual=str(result.duration_ms), look_at="result")

    @capability("core")
    def test_direct_run_and_idempotent_prepare(self, conformance: Harness) -> None:
        """Without the core Runner: prepare twice (idempotent), then run, then run again."""
        h = conformance
        case = _BY_ID["predict"]
        run = case.runs[0]

        async def go() -> list[RunResult]:
            await h.adapter.prepare(case.program)
            await h.adapter.prepare(case.program)
            return [await h.adapter.run(case.program, dict(run.inputs), RunOptions()) for _ in range(2)]

        first, second = h.loop.call(go(), what=f"adapter {h.name!r}")
        assert run.outputs is not None
        check_outputs(run.outputs, first.outputs, "direct adapter.run")
        check_outputs(run.outputs, second.outputs, "second direct adapter.run")
        if first.execution_id == second.execution_id:
            fail("two runs with fresh RunOptions got the same execution_id",
                 expected="each run's RunOptions.execution_id", actual=repr(first.execution_id), look_at="result")

    @capability("core")
    def test_unicode_inputs(self, conformance: Harness) -> None:
        """Non-ASCII text (CJK, RTL, emoji, combining marks) reaches the LM unchanged; the same requests as native."""
        text = "Qu'est-ce que 富士山? مرحبا بالعالم — emoji 👩‍🔬🚀, combining e\u0301 vs é, ß, Ω, \u200b zero-width."
        self._same_as_native(conformance, _BY_ID["predict"].program, {"question": text}, "unicode input")

    @capability("core")
    def test_one_megabyte_input(self, conformance: Harness) -> None:
        """A 1 MB input runs, reaches the LM whole, and gives the native adapter's outputs and requests."""
        filler = "The quick brown fox jumps over the lazy dog. "
        text = "What is the marker? " + filler * (2**20 // len(filler)) + " marker: ZEBRA-42."
        self._same_as_native(conformance, _BY_ID["predict"].program, {"question": text}, "1 MB input")

    def _same_as_native(self, h: Harness, program: Program, inputs: dict[str, Any], what: str,
                        options: RunOptions | None = None) -> tuple[Observed, Observed]:
        base = h.observe(lambda: h.run(program, inputs, native=True, options=options))
        seen = h.observe(lambda: h.run(program, inputs, options=options))
        diff = diff_requests(base.bodies, seen.bodies, labels=trace_labels(_trace(base)))
        if diff is not None:
            fail(f"{what}: the LM received other requests than native sent",
                 expected=f"native's {len(base.bodies)} request(s)", actual=f"{len(seen.bodies)} request(s)",
                 difference=diff[1], look_at=("inputs", "prompt") if diff[0].startswith("messages") else "lm_settings")
        if (base.error is None) != (seen.error is None):
            fail(f"{what}: another outcome than native's", expected=describe_outcome(base.result, base.error),
                 actual=describe_outcome(seen.result, seen.error), look_at="errors")
        if base.error is None:
            check_outputs(base.result.outputs, seen.result.outputs, what, baseline="native's")
        return base, seen

    @capability("core")
    def test_runs_after_failures(self, conformance: Harness) -> None:
        """A failed run leaves the adapter healthy: the next run succeeds."""
        h = conformance
        program = _BY_ID["error_lm"].program
        for model in ("openai/reference/garbage", "openai/reference/error-404"):
            options = h.options({"model": model})
            seen = h.observe(partial(h.run, program, {"question": "Fail, please."}, options=options))
            if not isinstance(seen.error, StepError):
                fail(f"a run against a failing LM ({model}) did not fail with a StepError",
                     expected="StepError(step=0)", actual=describe_outcome(seen.result, seen.error), look_at="errors")
        ok = _BY_ID["predict"]
        seen = h.observe(lambda: h.run(ok.program, ok.runs[0].inputs))
        if seen.error is not None:
            fail("the adapter does not recover from failed runs", expected="the next run succeeds",
                 actual=describe_outcome(None, seen.error), look_at="errors")
        assert ok.runs[0].outputs is not None
        check_outputs(ok.runs[0].outputs, seen.result.outputs, "a run after failed runs")

    @capability("core")
    def test_programs_sharing_a_name(self, conformance: Harness) -> None:
        """Two different programs with the same name (and module names) on one adapter: each runs as itself."""
        h = conformance

        def program(instructions: str, signature: str) -> Program:
            return _load({"stepbridge": 1, "name": "conformance_same_name", "signature": "question -> answer",
                          "modules": {"qa": {"type": "predict", "signature": signature, "instructions": instructions}},
                          "steps": [{"call": "qa", "with": {"question": "$inputs.question"}, "as": "r"},
                                    {"return": {"answer": "$r.answer"}}]})

        first = program("Answer in one word.", "question -> answer")
        second = program("Answer with the year only.", "question -> answer: int")
        inputs = {"question": "When was Python first released? In 1991."}
        for label, prog in (("the first program", first), ("the second program (same name, other content)", second),
                            ("the first program again", first)):
            base = h.observe(partial(h.run, prog, inputs, native=True))
            seen = h.observe(partial(h.run, prog, inputs))
            diff = diff_requests(base.bodies, seen.bodies)
            if diff is not None or (base.error is None) != (seen.error is None) or (
                    base.error is None and not same(base.result.outputs, seen.result.outputs)):
                fail(f"{label} did not run as itself after another program with its name ran",
                     expected=f"native {describe_outcome(base.result, base.error)}",
                     actual=describe_outcome(seen.result, seen.error),
                     difference=diff[1] if diff else first_difference(
                         getattr(base.result, "outputs", None), getattr(seen.result, "outputs", None)),
                     look_at="plan_cache")

    @capability("core")
    def test_usage_is_what_the_lm_reported(self, conformance: Harness) -> None:
        """RunResult.usage: the token counts the LM reported, summed over every call (map elements and retries
        of transient errors included)."""
        h = conformance
        runs = [("two chained steps", _BY_ID["literals_and_lm_overrides"], 0),
                ("a run whose LM failed once before answering", _BY_ID["lm_recovery"], 1),
                ("a chat reply that did not parse, then the JSON retry", _BY_ID["json_fallback"], 0)]
        if "map" in h.capabilities:
            runs.append(("a map step", _BY_ID["map_predict"], 0))
        for label, case, index in runs:
            run = case.runs[index]
            seen = h.observe(partial(h.run, case.program, run.inputs, options=h.options(run.lm)))
            if seen.error is not None:
                fail(f"usage, {label}: the run failed", actual=describe_outcome(None, seen.error), look_at="errors")
            time.sleep(0.05)  # the server logs an answer's usage as it sends it
            reported = _usage_of(h.lm.entries(seen.mark))
            if reported is None:
                pytest.skip("this stepbridge's reference LM does not log the usage it reports")
            usage = seen.result.usage
            got = {k: getattr(usage, k, None) for k in reported}
            if got != reported:
                key = next(k for k in reported if got[k] != reported[k])
                fail(f"usage, {label}: RunResult.usage is not what the LM reported",
                     expected=str(reported), actual=str(got),
                     difference=f"{key}: the LM reported {reported[key]}, the adapter says {got[key]}",
                     look_at="usage")

    @capability("core")
    def test_json_retry_request(self, conformance: Harness) -> None:
        """The JSON-format retry after a chat reply that did not parse, on the suite's own model: the same request
        as native's, field by field (its messages and the response_format DSPy's JSONAdapter sends), and its
        answer is the step's result."""
        h = conformance
        server = h.lm.app.state.reference
        case = _BY_ID["json_fallback"]
        server.fault = "chat-garbage"  # for now, every chat-format prompt is answered with garbage
        try:
            _, seen = self._same_as_native(h, case.program, case.runs[0].inputs, "the JSON-format retry")
        finally:
            server.fault = None
        if len(seen.bodies) != 2:
            fail("a chat reply that did not parse was not retried once in the JSON format",
                 expected="2 requests: the chat try and the JSON-format retry", actual=f"{len(seen.bodies)}",
                 look_at="parsing")

    # ================================================================================================
    # capabilities
    # ================================================================================================
    @capability("async")
    def test_concurrent_multi_step_runs(self, conformance: Harness) -> None:
        """20 three-step runs awaited at once on one event loop, against a slow LM: each run sees only its own
        inputs and step results."""
        h = conformance
        self.require(h, {"async"})
        program = _chain("conformance_concurrent", 3)
        rows = [{"question": f"Who is runner {i}? Runner {i} is number {i * 7}."} for i in range(20)]

        async def many(adapter: Any) -> list[Any]:
            runner = h.runner(adapter)
            return await asyncio.gather(*(runner.run(program, r, h.options({"model": "openai/reference/slow-100"}))
                                          for r in rows), return_exceptions=True)

        base = h.loop.call(many(h.native), what="the native adapter")
        mark = h.lm.mark()
        results = h.loop.call(many(h.adapter), what=f"adapter {h.name!r} (20 concurrent runs)")
        arrivals = sorted(e["time"] for e in h.lm.entries(mark))
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        if failures:
            i, exc = failures[0]
            fail(f"{len(failures)} of 20 concurrent runs failed", expected="20 results",
                 actual=f"run {i}: {describe_outcome(None, exc)}", look_at="state")
        wrong = [i for i, (b, r) in enumerate(zip(base, results, strict=True)) if not same(b.outputs, r.outputs)]
        if wrong:
            i = wrong[0]
            fail(f"{len(wrong)} of 20 concurrent runs returned another run's results",
                 expected=f"run {i}: {base[i].outputs}", actual=f"run {i}: {results[i].outputs}",
                 difference=f"run {i} {first_difference(base[i].outputs, results[i].outputs)}", look_at="state")
        if len({r.execution_id for r in results}) != 20:
            fail("concurrent runs share execution ids", expected="each run's RunOptions.execution_id",
                 actual=f"{len({r.execution_id for r in results})} distinct ids", look_at="result")
        # the LM answers after 100 ms: runs one after another never have two requests within 100 ms
        if not any(b - a < 0.09 for a, b in pairwise(arrivals)):
            fail("20 runs awaited at once ran one after another", expected="their LM requests waiting at once",
                 actual=f"{len(arrivals)} requests, each after the previous one was answered (a lock around run? "
                        "blocking calls on the event loop?)", look_at="state")

    @capability("batch")
    def test_batch_keeps_going_and_keeps_order(self, conformance: Harness) -> None:
        """A batch through the core Runner: failed rows carry typed errors, the others succeed, order is kept."""
        h = conformance
        self.require(h, {"batch"})
        program = _BY_ID["predict"].program
        rows: list[dict[str, Any]] = [{"question": "first?"}, {"question": 5}, {"question": "third?"},
                                      {"question": "fourth?"}]

        def options(index: int, row: dict[str, Any]) -> RunOptions:
            return h.options({"model": "openai/reference/garbage"}) if index == 3 else RunOptions()

        async def go() -> list[Any]:
            items = [item async for item in h.runner().stream(program, rows, concurrency=4, options=options)]
            return sorted(items, key=lambda i: i.index)

        items = h.loop.call(go(), what=f"adapter {h.name!r} (batch)")
        kinds = [type(i.error).__name__ if i.error is not None else "ok" for i in items]
        if kinds != ["ok", "InputValidationError", "ok", "StepError"]:
            fail("a batch did not end each row as it should", expected="ok, InputValidationError, ok, StepError",
                 actual=", ".join(kinds), look_at="errors")

    @capability("map")
    def test_map_keeps_input_order(self, conformance: Harness) -> None:
        """Map elements that finish in another order than they started (an LM that answers each after its own
        delay; tools that sleep): results and child records in input order."""
        h = conformance
        self.require(h, {"map"})
        questions = [f"Question number {i}?" for i in range(8)]  # jitter-200 answers them out of order
        program = _load({"stepbridge": 1, "name": "conformance_map_order", "signature": "questions: list[str] -> "
                         "answers: list[str]", "modules": {"qa": {"type": "predict", "signature": "question -> answer",
                                                                   "lm": {"model": "openai/reference/jitter-200"}}},
                         "steps": [{"map": "qa", "over": "$inputs.questions", "item": "q", "with": {"question": "$q"},
                                    "as": "each"}, {"return": {"answers": "$each.answer"}}]})
        self._map_in_order(h, program, {"questions": questions}, "answers", "question", questions, "an LM map")
        if "tools" in h.capabilities:
            items = ["200 first", "0 second", "120 third", "50 fourth", "150 fifth"]
            program = _load({"stepbridge": 1, "name": "conformance_map_order_tools",
                             "signature": "items: list[str] -> echoed: list[str]",
                             "modules": {"echo": {"type": "tool", "tool": "conformance_slow_echo"}},
                             "steps": [{"map": "echo", "over": "$inputs.items", "item": "it", "with": {"text": "$it"},
                                        "as": "each"}, {"return": {"echoed": "$each.result"}}]})
            self._map_in_order(h, program, {"items": items}, "echoed", "text", items, "a tool map")

    @staticmethod
    def _map_in_order(h: Harness, program: Program, inputs: dict[str, Any], output: str, field: str,
                      items: list[str], what: str) -> None:
        base = h.observe(lambda: h.run(program, inputs, native=True))
        seen = h.observe(lambda: h.run(program, inputs))
        if seen.error is not None:
            fail(f"{what} failed", expected=describe_outcome(base.result, base.error),
                 actual=describe_outcome(None, seen.error), look_at="map")
        expected = base.result.outputs.get(output)
        if not same(seen.result.outputs.get(output), expected):
            fail(f"{what}: results are not in input order (the elements finished in another order)",
                 expected=str(expected), actual=str(seen.result.outputs.get(output)), look_at="map")
        step = as_trace(seen.result.trace)[0]
        got = [c.inputs.get(field) for c in step.children]
        if step.kind != "map" or got != items:
            fail(f"{what}: the child records are not one per element in input order", expected=str(items),
                 actual=f"kind {step.kind!r}, children {got}", look_at=("map", "trace"))

    @capability("map")
    def test_map_runs_elements_at_once(self, conformance: Harness) -> None:
        """A map over a blocking (synchronous) tool: its elements run at the same time -- the tool is called off
        the event loop, as a thread, and the elements are not run one after another."""
        h = conformance
        self.require(h, {"map", "tools"})
        key = f"overlap-{uuid.uuid4().hex[:8]}"
        program = _load({"stepbridge": 1, "name": "conformance_map_overlap", "signature": "key, items: list[str] -> "
                         "done: list[str]", "modules": {"nap": {"type": "tool", "tool": "conformance_sleep_sync"}},
                         "steps": [{"map": "nap", "over": "$inputs.items", "item": "it",
                                    "with": {"key": "$inputs.key", "item": "$it"}, "as": "each"},
                                   {"return": {"done": "$each.result"}}]})
        seen = h.observe(partial(h.run, program, {"key": key, "items": ["500 a", "500 b"]}))
        if seen.error is not None:
            fail("a map over a synchronous tool failed", actual=describe_outcome(None, seen.error), look_at="map")
        events = [item.split(" ")[0] for _, item in sorted(h.lm.ledger.of(key))]
        if events[:2] != ["start", "start"]:
            fail("a map step's elements ran one after another", expected="both elements started before either "
                 "ended (a blocking tool runs in a thread; elements run concurrently)",
                 actual=f"the tool's calls went {', '.join(events)}", look_at="map")

    @capability("map")
    def test_map_respects_concurrency(self, conformance: Harness) -> None:
        """A map step with ``concurrency: 2`` never has more than two elements waiting on the LM at once."""
        h = conformance
        self.require(h, {"map"})
        program = _load({"stepbridge": 1, "name": "conformance_map_limit", "signature": "questions: list[str] -> "
                         "answers: list[str]", "modules": {"qa": {"type": "predict", "signature": "question -> answer",
                                                                   "lm": {"model": "openai/reference/slow-200"}}},
                         "steps": [{"map": "qa", "over": "$inputs.questions", "item": "q", "with": {"question": "$q"},
                                    "as": "each", "concurrency": 2}, {"return": {"answers": "$each.answer"}}]})
        questions = [f"Question number {i}?" for i in range(6)]
        seen = h.observe(lambda: h.run(program, {"questions": questions}))
        if seen.error is not None:
            fail("a map step failed", actual=describe_outcome(None, seen.error), look_at="map")
        times = sorted(e["time"] for e in seen.entries)
        # the LM answers after 200 ms, so the third request can only come once one of the first two was answered
        crowded = [i for i in range(2, len(times)) if times[i] - times[i - 2] < 0.15]
        if crowded:
            i = crowded[0]
            fail("a map step ran more elements at once than its `concurrency`",
                 expected="at most 2 requests waiting on the LM (it answers after 200 ms)",
                 actual=f"requests {i - 1}, {i} and {i + 1} arrived within {times[i] - times[i - 2]:.3f}s",
                 look_at="map")

    @capability("map")
    def test_map_failure_cancels_the_rest(self, conformance: Harness) -> None:
        """The first failing element fails the step at once and cancels the others: no side effect happens
        after the run has failed."""
        h = conformance
        self.require(h, {"map", "tools"})
        key = f"map-failure-{uuid.uuid4().hex[:8]}"
        items = ["0 fail", "400 second", "400 third", "400 fourth", "400 fifth"]
        program = _load({"stepbridge": 1, "name": "conformance_map_failure", "signature": "key, items: list[str] -> "
                         "done: list[str]", "modules": {"effect": {"type": "tool", "tool": "conformance_effect",
                                                                   "side_effects": True}},
                         "steps": [{"map": "effect", "over": "$inputs.items", "item": "it",
                                    "with": {"key": "$inputs.key", "item": "$it"}, "as": "each"},
                                   {"return": {"done": "$each.result"}}]})
        _fails_fast(h, partial(h.run, program, {"key": key, "items": items}), key, "a map step", "element", "map")

    @capability("parallel")
    def test_parallel_runs_at_once_and_fails_fast(self, conformance: Harness) -> None:
        """The calls of a ``parallel`` step run at the same time (two blocking tools: both start before either
        ends), and the first failing call fails the step at once and cancels the others: no side effect happens
        after the run has failed."""
        h = conformance
        self.require(h, {"parallel", "tools"})

        def program(name: str, tool: str, items: tuple[str, str]) -> Program:
            return _load({"stepbridge": 2, "name": name, "signature": "key -> first, second",
                          "modules": {"one": {"type": "tool", "tool": tool, "side_effects": True},
                                      "two": {"type": "tool", "tool": tool, "side_effects": True}},
                          "steps": [{"parallel": [
                              {"call": "one", "with": {"key": "$inputs.key", "item": items[0]}, "as": "a"},
                              {"call": "two", "with": {"key": "$inputs.key", "item": items[1]}, "as": "b"}]},
                              {"return": {"first": "$a.result", "second": "$b.result"}}]})

        key = f"parallel-{uuid.uuid4().hex[:8]}"
        seen = h.observe(partial(h.run, program("conformance_parallel_overlap", "conformance_sleep_sync",
                                                ("400 a", "400 b")), {"key": key}))
        if seen.error is not None:
            fail("a parallel step of two tools failed", actual=describe_outcome(None, seen.error), look_at="parallel")
        events = [item.split(" ")[0] for _, item in sorted(h.lm.ledger.of(key))]
        if events[:2] != ["start", "start"]:
            fail("a parallel step's calls ran one after another",
                 expected="both calls started before either ended (a blocking tool runs in a thread)",
                 actual=f"the tool's calls went {', '.join(events)}", look_at="parallel")
        key = f"parallel-failure-{uuid.uuid4().hex[:8]}"
        failing = program("conformance_parallel_failure", "conformance_effect", ("0 fail", "400 second"))
        _fails_fast(h, partial(h.run, failing, {"key": key}), key, "a parallel step", "call", "parallel")

    @capability("tools")
    def test_side_effect_tool_runs_once(self, conformance: Harness) -> None:
        """A tool step that fails after its side effect (a charge declined after it was made) fails the run; the
        tool ran exactly once -- never retried by the adapter."""
        h = conformance
        self.require(h, {"tools"})
        account = f"acct-{uuid.uuid4().hex[:8]}"
        program = _load({"stepbridge": 1, "name": "conformance_charge", "signature": "account, amount: int -> receipt",
                         "modules": {"charge": {"type": "tool", "tool": "conformance_charge", "side_effects": True}},
                         "steps": [{"call": "charge", "as": "c",
                                    "with": {"account": "$inputs.account", "amount": "$inputs.amount"}},
                                   {"return": {"receipt": "$c.result"}}]})
        seen = h.observe(lambda: h.run(program, {"account": account, "amount": 42}))
        time.sleep(0.3)
        charges = h.lm.ledger.of(account)
        if len(charges) != 1 or not isinstance(seen.error, StepError):
            fail("a failed side-effect tool was not left alone",
                 expected="the tool called once; the run fails with StepError(step=0)",
                 actual=f"the tool was called {len(charges)} time(s); the run "
                        f"{describe_outcome(seen.result, seen.error)}", look_at="side_effects")

    @capability("retrieve")
    def test_programs_in_two_folders(self, conformance: Harness) -> None:
        """The same program content beside two different corpora: each run searches its own folder's corpus."""
        h = conformance
        self.require(h, {"retrieve"})
        data = {"stepbridge": 1, "name": "conformance_two_folders", "signature": "query -> passages: list[str]",
                "modules": {"search": {"type": "retrieve", "retriever": {"kind": "bm25", "corpus": "corpus.jsonl"},
                                       "k": 1}},
                "steps": [{"call": "search", "with": {"query": "$inputs.query"}, "as": "s"},
                          {"return": {"passages": "$s.passages"}}]}
        texts = {"left": "The lighthouse keeper lives on the left island.",
                 "right": "The lighthouse on the right island is automated."}
        for folder, text in texts.items():
            path = h.tmp / "folders" / folder
            path.mkdir(parents=True, exist_ok=True)
            (path / "corpus.jsonl").write_text(json.dumps({"id": folder, "text": text}) + "\n"
                                               + json.dumps({"id": "other", "text": "Nothing about it."}) + "\n",
                                               encoding="utf-8")
        for folder in ("left", "right", "left"):
            program = _load(data, base_dir=h.tmp / "folders" / folder)
            seen = h.observe(partial(h.run, program, {"query": "lighthouse island"}))
            expected = {"passages": [texts[folder]]}
            if seen.error is not None or not same(expected, seen.result.outputs):
                fail(f"the program in folder {folder!r} did not search its own corpus",
                     expected=str(expected), actual=describe_outcome(seen.result, seen.error),
                     look_at="plan_cache")

    @capability("lm_trace")
    def test_lm_trace_matches_the_wire(self, conformance: Harness) -> None:
        """Each step's LM calls in the trace hold exactly the messages the LM received, with the response."""
        h = conformance
        self.require(h, {"lm_trace"})
        case = _BY_ID["literals_and_lm_overrides"]
        seen = h.observe(lambda: h.run(case.program, case.runs[0].inputs))
        if seen.error is not None:
            fail("the run failed", actual=describe_outcome(None, seen.error), look_at="errors")
        self._trace_is_the_wire(as_trace(seen.result.trace), seen, "a successful run")
        if seen.result.usage.lm_calls != len(seen.bodies):
            fail("usage.lm_calls is not the number of LM calls", expected=str(len(seen.bodies)),
                 actual=str(seen.result.usage.lm_calls), look_at="usage")

    @capability("lm_trace")
    def test_failed_step_trace_keeps_lm_calls(self, conformance: Harness) -> None:
        """A step that failed on an unparsable reply keeps both LM calls in the error's trace: the chat try and
        the JSON-format retry, each with the messages sent and the reply."""
        h = conformance
        self.require(h, {"lm_trace"})
        case = _BY_ID["error_partial_trace"]
        seen = h.observe(lambda: h.run(case.program, case.runs[0].inputs))
        if not isinstance(seen.error, StepError):
            fail("the run did not fail as the case expects", expected="StepError(step=1, cause=LMParseError)",
                 actual=describe_outcome(seen.result, seen.error), look_at="parsing")
        self._trace_is_the_wire(as_trace(seen.error.trace), seen, "a failed run's partial trace")

    @staticmethod
    def _trace_is_the_wire(trace: list[StepTrace], seen: Observed, what: str) -> None:
        calls = _all_calls(trace)
        traced = [c.messages for c in calls]
        sent = [b.get("messages") for b in seen.bodies]
        if traced != sent:
            where = next((i for i, (a, b) in enumerate(zip(sent, traced, strict=False)) if a != b),
                         min(len(sent), len(traced)))
            fail(f"{what}: the trace's LM calls are not the requests the LM received",
                 expected=f"{len(sent)} call(s) with the messages as sent, in order",
                 actual=f"{len(traced)} traced call(s)",
                 difference=(f"call {where + 1}: " + ("missing from the trace" if where >= len(traced) else
                                                      "not sent" if where >= len(sent) else
                                                      "other messages than sent")),
                 look_at="trace")
        replies = [e.get("reply") for e in seen.entries]
        for i, (call, reply) in enumerate(zip(calls, replies, strict=True)):
            if not isinstance(call.response, str) or not call.response:
                fail(f"{what}: traced LM call {i + 1} has no reply", expected="LMCall.response: the raw reply",
                     actual=repr(call.response), look_at="trace")
            if reply is not None and call.response != reply:
                fail(f"{what}: traced LM call {i + 1} holds another reply than the LM sent", expected=short(reply),
                     actual=short(call.response), look_at="trace")

    @capability("rehydrate")
    def test_rehydrate_from_store(self, conformance: Harness) -> None:
        """Publish to a store, load by hash, run on a fresh adapter instance: the same outputs."""
        h = conformance
        self.require(h, {"rehydrate"})
        try:
            from stepbridge.storage import Store
        except ImportError as exc:
            pytest.skip(f"stepbridge.storage is not importable ({exc})")
        case = _BY_ID["rag"] if "retrieve" in h.capabilities else _BY_ID["chain_of_thought"]
        run = case.runs[0]
        with contextlib.closing(Store(f"sqlite:///{h.tmp / 'rehydrate.db'}")) as store:
            version = store.publish(case.program, message="conformance")
            loaded = store.load(version.hash)
            if loaded.content_hash != case.program.content_hash:
                fail("storage returned a different program (a stepbridge bug, not the adapter's)")
            fresh = h.fresh_adapter()
            result = h.run(loaded, run.inputs, adapter=fresh, what=f"a fresh {h.name!r} adapter")
            assert run.outputs is not None
            check_outputs(run.outputs, result.outputs, "rehydrated program on a fresh adapter")
            recorded = h.loop.call(h.runner(fresh, store=store).run(version.hash, run.inputs),
                                   what="a run by hash through a Runner with a store")
            execution = store.get_execution(recorded.execution_id)
            if execution is None or str(getattr(execution.status, "value", execution.status)) != "succeeded":
                fail("the run by hash was not recorded as succeeded", actual=short(repr(execution), 300))

    @capability("core")
    def test_aclose_closes_connections(self, conformance: Harness) -> None:
        """After ``aclose`` no connection the adapter opened to the LM is left open (seen from the server).

        Judged on the harness's second instance (the one the rehydration test used, which runs just before this
        test, or a new one): the connections opened since it was created, while only it ran, are its own."""
        h = conformance
        if h.lm.connections() is None:
            pytest.skip("this OS does not show the server's connections (/proc/net/tcp)")
        adapter = h.fresh_adapter()
        before = h.fresh_before or set()
        program = _BY_ID["predict"].program

        async def three() -> list[Any]:
            runner = h.runner(adapter)
            return await asyncio.gather(*(runner.run(program, {"question": f"Connection {i}?"},
                                                     h.options({"model": "openai/reference/slow-200"}))
                                          for i in range(3)))

        h.loop.call(three(), what=f"a fresh {h.name!r} adapter")
        opened = (h.lm.connections() or set()) - before
        h.forget(adapter)
        h.loop.call(adapter.aclose(), what="adapter.aclose()")
        if not opened:
            return  # nothing stayed open after the runs (no keep-alive): nothing to leak
        left = opened
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            left = opened & (h.lm.connections() or set())
            if not left:
                return
            time.sleep(0.05)
        fail("aclose() left connections to the LM open", expected="every connection the adapter opened closed",
             actual=f"{len(left)} of the {len(opened)} connection(s) it opened still open 3 s after aclose() "
                    "returned", look_at="aclose")

    @capability("timeout")
    def test_timeout(self, conformance: Harness) -> None:
        """RunOptions.timeout bounds the whole run: five 200 ms steps under a 0.6 s timeout end in RunTimeoutError
        (no single call is slow), with the steps that finished in the partial trace."""
        h = conformance
        self.require(h, {"timeout"})
        program = _chain("conformance_timeout", 5)
        options = RunOptions(timeout=0.6, lm=LMConfig(model="openai/reference/slow-200"))
        began = time.time()
        seen = h.observe(lambda: h.run(program, {"question": "Will this time out?"}, options=options))
        if seen.error is None:
            fail("the run finished although it took longer than its timeout",
                 expected="RunTimeoutError(timeout=0.6): five steps of 200 ms each take 1 s",
                 actual=f"succeeded after {seen.ended - began:.1f}s: the timeout is not applied to the whole run "
                        "(per call, or not at all?)", look_at="timeout")
        if not isinstance(seen.error, RunTimeoutError):
            fail("a run past its timeout failed with another error", expected="RunTimeoutError(timeout=0.6)",
                 actual=describe_outcome(None, seen.error), look_at=("timeout", "errors"))
        if seen.error.timeout != 0.6:
            fail("RunTimeoutError.timeout is not the run's timeout", expected="0.6", actual=repr(seen.error.timeout),
                 look_at="timeout")
        answered = len(seen.bodies) - 1  # every request but the last was answered before the next step began
        trace = {t.step: t for t in as_trace(seen.error.trace)}
        done = [i for i in range(answered) if trace.get(i) is None or trace[i].outputs is None]
        if done:
            fail("RunTimeoutError does not carry the partial trace",
                 expected=f"steps 0..{answered - 1} (they had finished) with their outputs",
                 actual=f"trace steps {sorted(trace)}; step {done[0]} missing or without outputs", look_at="timeout")
        finished = sum(1 for t in trace.values() if t.kind == "call" and t.outputs is not None)
        time.sleep(0.6)  # the next step of a run left going would ask the LM within 200 ms
        sent = len(h.lm.entries(seen.mark))
        if sent > finished + 1:
            fail("the run went on after its timeout", expected=f"at most {finished + 1} LM requests: the {finished} "
                 "finished steps' and the one cut short", actual=f"{sent} requests (the run's work was not cancelled)",
                 look_at="timeout")

    @capability("cancel")
    def test_cancel(self, conformance: Harness) -> None:
        """Cancelling the task awaiting the run raises CancelledError and stops all of the run's work: no LM
        request arrives afterwards; the adapter keeps serving."""
        h = conformance
        self.require(h, {"cancel"})
        program = _chain("conformance_cancel", 2, first_model="openai/reference/slow-400")
        mark = h.lm.mark()

        async def go() -> tuple[str, float]:
            task = asyncio.ensure_future(h.runner().run(program, {"question": "cancel me"}))
            while not h.lm.since(mark):
                if task.done():
                    return f"the run ended before it was cancelled: {describe_outcome(*_outcome(task))}", time.time()
                await asyncio.sleep(0.01)
            task.cancel()
            cancelled_at = time.time()
            try:
                result = await task
            except (asyncio.CancelledError, RunCancelledError):
                return "cancelled", cancelled_at
            except BaseException as exc:
                return f"raised {describe_error(exc)}", cancelled_at
            return f"completed although cancelled (outputs {short(result.outputs)})", cancelled_at

        outcome, cancelled_at = h.loop.call(go(), what=f"adapter {h.name!r} (cancel)")
        if outcome != "cancelled":
            fail("cancelling the task awaiting the run did not cancel it",
                 expected="asyncio.CancelledError promptly", actual=outcome, look_at="cancel")
        while time.time() < cancelled_at + 0.8:  # step 0's reply would come at +0.4 s, step 1's request after it
            time.sleep(0.05)
        late = h.requests_after(cancelled_at, mark)
        if late:
            fail("the LM received requests after the run was cancelled",
                 expected="no request after the cancellation",
                 actual=f"{len(late)} request(s) up to {late[-1]['time'] - cancelled_at:.2f}s later: the run's work "
                        "went on in the background", look_at="cancel")
        ok = _BY_ID["predict"]
        seen = h.observe(lambda: h.run(ok.program, ok.runs[0].inputs))
        if seen.error is not None:
            fail("the adapter does not serve after a cancelled run", expected="the next run succeeds",
                 actual=describe_outcome(None, seen.error), look_at="cancel")

    @capability("out_of_process")
    def test_out_of_process_reports_worker(self, conformance: Harness) -> None:
        """An out-of-process adapter says which worker ran each run (RunResult.worker)."""
        h = conformance
        self.require(h, {"out_of_process"})
        ok = _BY_ID["predict"]
        result = h.run(ok.program, ok.runs[0].inputs)
        if not isinstance(result.worker, str) or not result.worker:
            fail("RunResult.worker is empty", expected="the worker that ran the program", actual=repr(result.worker),
                 look_at="result")


def _fails_fast(h: Harness, run: Callable[[], Any], key: str, what: str, part: str, look_at: str) -> None:
    """``run`` (step 0 fans out ``conformance_effect`` calls: one fails at once, the others would act at +400 ms)
    fails the step at once, and none of the others performs its side effect after the run failed."""
    began = time.time()
    seen = h.observe(run)
    if not isinstance(seen.error, StepError) or seen.error.step != 0:
        fail(f"{what} whose {part} raised did not fail the run",
             expected=f"StepError(step=0) as soon as the first {part} fails",
             actual=describe_outcome(seen.result, seen.error), look_at=look_at)
    while time.time() < max(began + 0.8, seen.ended + 0.2):  # the other calls would act at +400 ms
        time.sleep(0.05)
    late = [(t, item) for t, item in h.lm.ledger.of(key) if t > seen.ended]
    if late:
        fail(f"after one {part} of {what} failed, the others went on and performed side effects",
             expected=f"the failure cancels the other {part}s: nothing happens after the run failed",
             actual=f"{len(late)} side effect(s) after the run had failed ({', '.join(i for _, i in late)})",
             look_at=look_at)


def _trace(seen: Observed) -> Any:
    if seen.result is not None:
        return getattr(seen.result, "trace", None)
    return getattr(seen.error, "trace", None)


def _outcome(task: asyncio.Future[Any]) -> tuple[Any, BaseException | None]:
    if task.cancelled():
        return None, asyncio.CancelledError()
    return (task.result(), None) if task.exception() is None else (None, task.exception())

