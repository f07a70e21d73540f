"""The conformance suite: :class:`AdapterConformance`, to subclass in an adapter's own test tree.

::

    from stepbridge.conformance import AdapterConformance
    from mypkg.adapter import make_adapter

    class TestMyAdapter(AdapterConformance):
        adapter_factory = make_adapter          # a factory, "pkg.mod:factory" or a registered name
        adapter_kwargs = {}                      # passed to the factory
        expected_failures = {                    # test name (glob) -> reason; strict
            "test_timeout": "timeouts land in 0.3 (issue #12)",
        }

Overriding a suite test is allowed only as a strict expected failure with a reason
(``@pytest.mark.xfail(strict=True, reason="...")``); anything else is refused when the class is
defined. Capabilities are read from the adapter: a test of an undeclared capability is skipped
with the reason, a declared one must pass, and for each capability a program needs there is a
negative test (an adapter that does not declare it must raise ``UnsupportedCapabilityError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NoReturn

import pytest
from stepbridge.adapter import CAPABILITIES, RunOptions
from stepbridge.errors import (
    ProgramValidationError,
    RunCancelledError,
    RunTimeoutError,
    StepbridgeError,
    StepError,
    UnsupportedCapabilityError,
)
from stepbridge.loader import load_program
from stepbridge.program import CallStep, MapStep, Program
from stepbridge.result import RunResult, StepTrace

from . import SUITE_VERSION, fixtures
from .cases import Case, CaseRun, load_cases, name_matches
from .harness import Harness, as_trace, describe_spec, first_difference, messages_of, same

__all__ = ["SUITE_VERSION", "AdapterConformance", "conformance_meta"]


#: For each capability a program can need: the case whose program needs exactly that capability.
NEGATIVE_CASES = {"retrieve": "retrieve", "tools": "tools", "map": "map_predict", "json_adapter": "json_format",
                  "dspy_modules": "dspy_module", "control_flow": "control_return_anywhere",
                  "parallel": "parallel_calls"}

#: Capabilities no program needs: no negative test exists for them (reported as such).
BEHAVIOUR_ONLY = sorted(CAPABILITIES - set(NEGATIVE_CASES))

_CASES = load_cases()
_BY_ID = {c.id: c for c in _CASES}
_RUNS = [pytest.param(run, id=run.id) for case in _CASES for run in case.runs]
_INVALID = [pytest.param(case, id=case.id) for case in _CASES if case.invalid]

_TYPE_HINT = (
    "The error's type was lost. Raise stepbridge's typed errors (a failed step is a StepError whose `cause` is "
    "the typed error underneath, e.g. LMError); across a process boundary send `error.to_dict()` and rebuild it "
    "with `stepbridge.errors.error_from_dict()`; never wrap them in RuntimeError or a bare StepbridgeError.")


def capability(name: str, category: str = "behaviour") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Tag a suite test with the capability it certifies (``core`` for what every adapter must do)."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__conformance__ = (name, category)  # type: ignore[attr-defined]
        return fn

    return decorate


def conformance_meta(item: Any) -> tuple[str, str] | None:
    """(capability, category) of a collected suite test, or None for tests that are not the suite's."""
    fn = getattr(item, "function", None)
    meta = getattr(fn, "__conformance__", None)
    if meta is None:
        cls = getattr(item, "cls", None)
        original = _suite_test(cls, getattr(fn, "__name__", "")) if cls is not None else None
        meta = getattr(original, "__conformance__", None)
    if meta is None:
        return None
    cap, category = meta
    params = getattr(getattr(item, "callspec", None), "params", {})
    if cap == "<case>":
        run = params.get("run")
        case = run.case if isinstance(run, CaseRun) else params.get("case")
        cap = case.capability if isinstance(case, Case) else "core"
    elif cap == "<param>":
        cap = str(params.get("capability", "core"))
    return cap, category


def _suite_test(cls: type, name: str) -> Any:
    return AdapterConformance.__dict__.get(name) if isinstance(cls, type) and issubclass(cls, AdapterConformance) \
        else None


def _xfail_mark(fn: Any) -> Any:
    for mark in getattr(fn, "pytestmark", []):
        if getattr(mark, "name", None) == "xfail":
            return mark
    return None


def _fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


def _describe(error: BaseException) -> str:
    """An error for a failure message, with a hint when the suite's fixtures are missing in another process."""
    text = f"{type(error).__name__}: {str(error)[:500]}"
    if isinstance(error, ProgramValidationError) and ("'conformance_" in str(error)):
        text += ("\nThe suite's tools / DSPy modules are registered in the test process only, and this adapter "
                 "validated or ran the program elsewhere (worker processes?). Register them there: host "
                 "`stepbridge.conformance.hosted:native` (or `:dspy`) in the workers - e.g. certify "
                 "`stepbridge.conformance.hosted:pool_native` - or call `stepbridge.conformance.fixtures.register()` "
                 "in your worker's adapter factory.")
    if isinstance(error, UnsupportedCapabilityError):
        text += (f"\nThe adapter declares the capabilities this test needs but raised UnsupportedCapabilityError "
                 f"(capability={error.capability!r}): implement it, or remove it from `capabilities`.")
    return text


class AdapterConformance:
    """Subclass with ``adapter_factory = make_adapter`` to certify an adapter (see the module docstring)."""

    #: A factory (class or function), ``"pkg.mod:factory"`` or a registered adapter name; None: ``--adapter``.
    adapter_factory: ClassVar[Any] = None
    #: Keyword arguments for the factory.
    adapter_kwargs: ClassVar[dict[str, Any]] = {}
    #: Known failures: test name or glob (``test_case[json_*]``) -> reason. Strict: a pass is a failure.
    expected_failures: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        problems = []
        for name, value in vars(cls).items():
            if not name.startswith("test") or name not in AdapterConformance.__dict__:
                continue
            mark = _xfail_mark(value)
            reason = str((mark.kwargs.get("reason") if mark is not None else "") or "").strip()
            if mark is None or mark.kwargs.get("strict") is not True or not reason:
                problems.append(name)
        if problems:
            raise TypeError(
                f"{cls.__qualname__} overrides conformance test(s) {', '.join(problems)} without marking them "
                "@pytest.mark.xfail(strict=True, reason=\"...\"). A suite test may only be overridden as a strict "
                "expected failure with a reason (or listed in `expected_failures` / an --expected-failures file); "
                "remove the override or mark it.")
        for name, reason in cls.expected_failures.items():
            if not str(reason or "").strip():
                raise TypeError(f"{cls.__qualname__}.expected_failures[{name!r}] needs a reason")

    # ================================================================================================
    # fixtures
    # ================================================================================================
    @pytest.fixture(scope="class")
    @classmethod
    def conformance(cls, request: pytest.FixtureRequest) -> Iterator[Harness]:
        """The adapter under test (created once per class), the native baseline and the suite's reference LM."""
        cls = request.cls
        spec = inspect.getattr_static(cls, "adapter_factory", None)
        if isinstance(spec, staticmethod | classmethod):
            spec = spec.__func__
        if spec is None:
            spec = request.config.getoption("--adapter", default=None)
        if not spec:
            pytest.skip("no adapter to certify: pass --adapter pkg.mod:factory (with -p stepbridge.conformance.plugin) "
                        "or set adapter_factory on the test class")
        fixtures.register()
        kwargs = dict(getattr(cls, "adapter_kwargs", {}) or {})
        harness = Harness(spec, describe_spec(spec), kwargs)
        from .report import record_adapter

        record_adapter(request.config, request.node.nodeid, harness)
        AdapterConformance._warn_stale(request, cls)
        try:
            yield harness
        finally:
            harness.close()

    @staticmethod
    def _warn_stale(request: pytest.FixtureRequest, cls: Any) -> None:
        names = [i.name for i in request.session.items if getattr(i, "cls", None) is cls]
        for pattern in getattr(cls, "expected_failures", {}) or {}:
            if not any(name_matches(n, pattern) for n in names):
                warnings.warn(f"{cls.__qualname__}.expected_failures entry {pattern!r} matches no conformance test "
                              "(stale: remove it)", pytest.PytestWarning, stacklevel=1)

    @pytest.fixture(autouse=True)
    def _conformance_expected_failures(self, request: pytest.FixtureRequest) -> None:
        for pattern, reason in (getattr(request.cls, "expected_failures", {}) or {}).items():
            if name_matches(request.node.name, pattern):
                request.applymarker(pytest.mark.xfail(strict=True, reason=str(reason)))

    # ================================================================================================
    # helpers
    # ================================================================================================
    @staticmethod
    def require(h: Harness, needs: Any, what: str = "this test") -> None:
        missing = sorted(set(needs) - h.capabilities)
        if missing:
            pytest.skip(f"adapter {h.name!r} does not declare capability {', '.join(map(repr, missing))} "
                        f"(needed by {what})")

    @staticmethod
    def check_outputs(expected: dict[str, Any], actual: Any, label: str, baseline: str = "expected") -> None:
        if not isinstance(actual, dict):
            _fail(f"{label}: RunResult.outputs must be a dict of the program's output fields, got "
                  f"{type(actual).__name__}")
        diff = first_difference(expected, actual)
        if diff:
            _fail(f"{label}: outputs differ from the {baseline} outputs at {diff}.\n"
                  f"  expected: {json.dumps(expected, ensure_ascii=False)[:600]}\n"
                  f"  actual:   {json.dumps(actual, ensure_ascii=False, default=repr)[:600]}\n"
                  "Fix: return exactly the program's `return` values, parsed with the signature's types (the same "
                  "parsing as stepbridge.formats.Prompt.parse: int stays int, Literal values exact, lists in order).")

    @classmethod
    def check_error(cls, err: BaseException | None, expected: dict[str, Any], label: str,
                    program: Program | None = None, result: Any = None) -> None:
        want = expected["type"]
        if err is None:
            outputs = getattr(result, "outputs", None)
            _fail(f"{label}: expected {want} but the run succeeded (outputs {outputs!r}). Raise the typed error.")
        got = type(err).__name__
        if got != want:
            hint = _TYPE_HINT if (not isinstance(err, StepbridgeError) or type(err) is StepbridgeError or
                                  want == "StepbridgeError") else \
                "Raise exactly the documented error type."
            if isinstance(err, ProgramValidationError):
                hint = ""
            _fail(f"{label}: expected {want}, got {type(err).__module__}.{_describe(err)}\n{hint}".rstrip())
        for key, value in expected.items():
            if key in ("type", "cause", "message_contains"):
                continue
            actual = getattr(err, key, "<missing>")
            if not same(value, actual):
                _fail(f"{label}: {want}.{key} should be {value!r}, got {actual!r}. Keep the error's details "
                      f"(`{key}`) when raising or re-raising it.")
        if "message_contains" in expected and expected["message_contains"] not in str(err):
            _fail(f"{label}: the {want} message should mention {expected['message_contains']!r}: {str(err)[:300]!r}")
        if "cause" in expected:
            cause = getattr(err, "cause", None)
            if cause is None:
                _fail(f"{label}: {want}.cause is missing; set it to the typed error that made the step fail "
                      f"(expected a {expected['cause']['type']}). {_TYPE_HINT}")
            cls.check_error(cause, expected["cause"], f"{label} (cause)")
        if isinstance(err, StepError) and program is not None:
            cls.check_partial_trace(err, program, label)

    @staticmethod
    def check_partial_trace(err: StepError, program: Program, label: str) -> None:
        try:
            trace = as_trace(err.trace)
        except Exception as exc:
            _fail(f"{label}: the StepError's trace is not a list of StepTrace records ({exc})")
        if not trace:
            _fail(f"{label}: the StepError carries no partial trace. Attach the steps run so far "
                  "(StepError(..., trace=[StepTrace, ...])): the completed steps with their outputs and the failed "
                  "step with `error` set to the typed error's to_dict().")
        by_step: dict[int, StepTrace] = {}
        for record in trace:
            by_step.setdefault(record.step, record)
        for index in range(err.step):
            if not isinstance(program.steps[index], CallStep | MapStep):
                continue
            done = by_step.get(index)
            if done is None or done.error is not None or done.outputs is None:
                _fail(f"{label}: the partial trace should hold completed step {index} with its outputs "
                      f"(got {done!r:.300}). Record every finished step before raising.")
        failed = by_step.get(err.step)
        cause = err.cause
        if failed is None or not isinstance(failed.error, dict):
            _fail(f"{label}: the partial trace should hold the failed step {err.step} with `error` set "
                  f"(got {failed!r:.300}).")
        if cause is not None and failed.error.get("type") != type(cause).__name__:
            _fail(f"{label}: the failed step's trace error is {failed.error.get('type')!r}, but the cause is "
                  f"{type(cause).__name__}; record `cause.to_dict()` on the failed step.")

    # ================================================================================================
    # the contract every adapter meets
    # ================================================================================================
    @capability("core")
    def test_declares_adapter_protocol(self, conformance: Harness) -> None:
        adapter = conformance.adapter
        name = getattr(adapter, "name", None)
        if not isinstance(name, str) or not name:
            _fail("the adapter needs a non-empty `name` (str)")
        caps = getattr(adapter, "capabilities", None)
        if not isinstance(caps, frozenset | set) or not all(isinstance(c, str) for c in caps):
            _fail(f"`capabilities` must be a frozenset of strings, got {caps!r}")
        unknown = sorted(set(caps) - CAPABILITIES)
        if unknown:
            _fail(f"unknown capabilities {unknown}: declare only names from stepbridge.adapter.CAPABILITIES "
                  f"({', '.join(sorted(CAPABILITIES))})")
        for method in ("prepare", "run", "aclose"):
            if not inspect.iscoroutinefunction(getattr(adapter, method, None)):
                _fail(f"`{method}` must be an async method (async def {method}(...))")

    @capability("<case>", "case")
    @pytest.mark.parametrize("run", _RUNS)
    def test_case(self, conformance: Harness, run: CaseRun) -> None:
        """A data-driven case: the adapter's outputs (or typed error) equal the case file's expectation."""
        h = conformance
        case = run.case
        self.require(h, case.capabilities, f"case {case.id!r}")
        program = case.program
        if not program.required_capabilities <= case.capabilities:  # the suite checks its own data
            _fail(f"suite bug: case {case.id!r} needs {sorted(program.required_capabilities)} but declares "
                  f"{sorted(case.capabilities)}")
        label = f"case {run.id} ({case.description})"
        result, error, bodies = h.observe(lambda: h.run(program, run.inputs, options=h.options(run.lm)))
        if run.error is not None:
            self.check_error(error, run.error, label, program, result)
        else:
            if error is not None:
                _fail(f"{label}: the run raised {_describe(error)}")
            assert result is not None
            if run.outputs is not None:
                self.check_outputs(run.outputs, result.outputs, label)
        if run.lm_requests is not None and len(bodies) != run.lm_requests:
            _fail(f"{label}: the LM received {len(bodies)} requests, expected {run.lm_requests}")

    @capability("<case>", "equivalence")
    @pytest.mark.parametrize("run", _RUNS)
    def test_equivalence(self, conformance: Harness, run: CaseRun) -> None:
        """Same outputs, same steps and the same chat messages at the LM as the native adapter."""
        h = conformance
        case = run.case
        self.require(h, case.capabilities, f"case {case.id!r}")
        label = f"case {run.id}: adapter {h.name!r} vs native"
        base, base_err, base_bodies = h.observe(
            lambda: h.run(case.native_program, run.inputs, native=True, options=h.options(run.lm)))
        result, error, bodies = h.observe(lambda: h.run(case.program, run.inputs, options=h.options(run.lm)))
        if base_err is None and error is not None:
            _fail(f"{label}: the native adapter succeeded but this adapter raised {_describe(error)}")
        if base_err is not None:
            if type(error) is not type(base_err):
                _fail(f"{label}: the native adapter raised {type(base_err).__name__} ({str(base_err)[:200]}), this "
                      f"adapter {'succeeded' if error is None else _describe(error)}.\n{_TYPE_HINT}")
            if isinstance(base_err, StepError):
                assert isinstance(error, StepError)
                if (error.step, error.module) != (base_err.step, base_err.module) or \
                        type(error.cause) is not type(base_err.cause):
                    _fail(f"{label}: native failed at step {base_err.step} ({base_err.module}) with "
                          f"{type(base_err.cause).__name__}; this adapter at step {error.step} ({error.module}) with "
                          f"{type(error.cause).__name__}")
            distinct_base, distinct = sorted(set(messages_of(base_bodies))), sorted(set(messages_of(bodies)))
            if distinct != distinct_base:
                self._message_diff(label, distinct_base, distinct)
            return
        assert base is not None and result is not None
        self.check_outputs(base.outputs, result.outputs, label, baseline="native adapter's")
        if result.step_sequence() != base.step_sequence():
            _fail(f"{label}: the trace's step sequence differs: native {base.step_sequence()}, this adapter "
                  f"{result.step_sequence()}. Record one StepTrace per executed step (index, kind, module), "
                  "including the return step, in program order.")
        self._compare_messages(label, messages_of(base_bodies), messages_of(bodies))

    @staticmethod
    def _compare_messages(label: str, expected: list[str], actual: list[str]) -> None:
        if sorted(expected) != sorted(actual):
            AdapterConformance._message_diff(label, sorted(expected), sorted(actual))

    @staticmethod
    def _message_diff(label: str, expected: list[str], actual: list[str]) -> None:
        detail = f"native sent {len(expected)} requests, this adapter {len(actual)}"
        for i, (a, b) in enumerate(zip(expected, actual, strict=False)):
            if a != b:
                at = next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
                detail = (f"request {i} differs at character {at}:\n  native: ...{a[max(0, at - 80):at + 80]!r}\n"
                          f"  this:   ...{b[max(0, at - 80):at + 80]!r}")
                break
        _fail(f"{label}: the reference LM received different chat messages ({detail}).\nFix: build the messages "
              "exactly as DSPy's ChatAdapter/JSONAdapter do (use stepbridge.formats.Prompt), send one request per "
              "module call, and on a chat-format parse error retry once in the JSON format as DSPy does.")

    @capability("core", "case")
    @pytest.mark.parametrize("case", _INVALID)
    def test_invalid_program(self, conformance: Harness, case: Case) -> None:
        """ProgramValidationError: every problem with its pointer, before any adapter runs."""
        assert case.invalid is not None
        with pytest.raises(ProgramValidationError) as info:
            load_program(case.program_data, base_dir=case.path.parent)
        pointers = {i.pointer for i in info.value.issues if i.severity == "error"}
        missing = set(case.invalid.get("pointers", [])) - pointers
        if missing:
            _fail(f"case {case.id}: the validation error does not report {sorted(missing)} (got {sorted(pointers)})")

    @capability("core")
    def test_result_shape(self, conformance: Harness) -> None:
        """RunResult: backend, program hash, the execution id it was given, one trace record per step."""
        h = conformance
        case = _BY_ID["literals_and_lm_overrides"]
        program = case.program
        options = RunOptions(execution_id="conformance-" + "0" * 20)
        result = h.run(program, case.runs[0].inputs, options=options)
        if not isinstance(result, RunResult):
            _fail(f"adapter.run must return a stepbridge.RunResult, got {type(result).__name__}")
        if result.program_hash != program.content_hash:
            _fail(f"RunResult.program_hash is {result.program_hash!r}; it must be program.content_hash")
        if result.execution_id != options.execution_id:
            _fail(f"RunResult.execution_id is {result.execution_id!r}; it must be the RunOptions.execution_id given "
                  f"({options.execution_id!r})")
        if not isinstance(result.backend, str) or not result.backend:
            _fail("RunResult.backend must name the backend that ran it")
        expected = [(i, "return" if not isinstance(s, CallStep | MapStep) else
                     ("call" if isinstance(s, CallStep) else "map"),
                     s.call if isinstance(s, CallStep) else (s.map if isinstance(s, MapStep) else None))
                    for i, s in enumerate(program.steps)]
        if result.step_sequence() != expected:
            _fail(f"the trace should have one record per step {expected}, got {result.step_sequence()}")
        if result.duration_ms < 0:
            _fail("RunResult.duration_ms must not be negative")

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
        self.check_outputs(run.outputs, first.outputs, "direct adapter.run")
        self.check_outputs(run.outputs, second.outputs, "second direct adapter.run")
        if first.execution_id == second.execution_id:
            _fail("two runs with fresh RunOptions got the same execution_id; use RunOptions.execution_id")

    @capability("core")
    def test_unicode_inputs(self, conformance: Harness) -> None:
        """Non-ASCII text (CJK, RTL, emoji, combining marks) reaches the LM unchanged; results equal native's."""
        h = conformance
        program = _BY_ID["predict"].program
        text = "Qu'est-ce que 富士山? مرحبا بالعالم — emoji 👩‍🔬🚀, combining e\u0301 vs é, ß, Ω, \u200b zero-width."
        inputs = {"question": text}
        base, _, base_bodies = h.observe(lambda: h.run(program, inputs, native=True))
        result, error, bodies = h.observe(lambda: h.run(program, inputs))
        if error is not None:
            _fail(f"a unicode input made the run fail: {type(error).__name__}: {error}")
        assert base is not None and result is not None
        if not any(text in json.dumps(b.get("messages"), ensure_ascii=False) for b in bodies):
            _fail("the unicode input did not reach the LM unchanged (encode requests as UTF-8 JSON; do not normalise "
                  "or escape-mangle text)")
        self.check_outputs(base.outputs, result.outputs, "unicode input", baseline="native adapter's")
        self._compare_messages("unicode input", messages_of(base_bodies), messages_of(bodies))

    @capability("core")
    def test_one_megabyte_input(self, conformance: Harness) -> None:
        """A 1 MB input runs, reaches the LM whole, and gives the native adapter's outputs."""
        h = conformance
        program = _BY_ID["predict"].program
        filler = "The quick brown fox jumps over the lazy dog. "
        text = "What is the marker? " + filler * (2**20 // len(filler)) + " marker: ZEBRA-42."
        inputs = {"question": text}
        base, _, _ = h.observe(lambda: h.run(program, inputs, native=True))
        result, error, bodies = h.observe(lambda: h.run(program, inputs))
        if error is not None:
            _fail(f"a 1 MB input made the run fail: {type(error).__name__}: {str(error)[:300]}")
        assert base is not None and result is not None
        if not any(text in json.dumps(b.get("messages"), ensure_ascii=False) for b in bodies):
            _fail("the 1 MB input did not reach the LM whole (no truncation; raise frame/body limits to at least a "
                  "few MB)")
        self.check_outputs(base.outputs, result.outputs, "1 MB input", baseline="native adapter's")

    @capability("core")
    def test_runs_after_failures(self, conformance: Harness) -> None:
        """A failed run leaves the adapter healthy: the next run succeeds."""
        h = conformance
        case = _BY_ID["error_lm"]
        failing = case.runs[-1]  # the LM answers garbage
        _, error, _ = h.observe(lambda: h.run(case.program, failing.inputs, options=h.options(failing.lm)))
        if not isinstance(error, StepError):
            _fail(f"expected a StepError from an LM that answers garbage, got {error!r}")
        ok = _BY_ID["predict"]
        result = h.run(ok.program, ok.runs[0].inputs)
        assert ok.runs[0].outputs is not None
        self.check_outputs(ok.runs[0].outputs, result.outputs, "run after a failed run")

    # ================================================================================================
    # capabilities
    # ================================================================================================
    @capability("async")
    def test_100_concurrent_runs(self, conformance: Harness) -> None:
        """100 runs awaited at once on one event loop: each gets its own correct result."""
        h = conformance
        self.require(h, {"async"})
        program = _BY_ID["predict"].program
        rows = [{"question": f"Question {i}: what is {i} + {i}? Answer {i * 2}."} for i in range(100)]

        async def many(adapter: Any) -> list[Any]:
            runner = h.runner(adapter)
            return await asyncio.gather(*(runner.run(program, r) for r in rows), return_exceptions=True)

        base = h.loop.call(many(h.native), what="the native adapter")
        results = h.loop.call(many(h.adapter), what=f"adapter {h.name!r} (100 concurrent runs)")
        failures = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        if failures:
            i, exc = failures[0]
            _fail(f"{len(failures)} of 100 concurrent runs failed; run {i}: {type(exc).__name__}: {str(exc)[:300]}")
        for i, (b, r) in enumerate(zip(base, results, strict=True)):
            self.check_outputs(b.outputs, r.outputs, f"concurrent run {i}", baseline="native adapter's")
        if len({r.execution_id for r in results}) != 100:
            _fail("concurrent runs share execution ids; each run must carry its own RunOptions.execution_id")

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
            _fail(f"batch rows should end ok, InputValidationError, ok, StepError; got {kinds}")

    @capability("map")
    def test_map_trace_children(self, conformance: Harness) -> None:
        """A map step's trace has one child record per element, in input order."""
        h = conformance
        self.require(h, {"map"})
        case = _BY_ID["map_predict"]
        run = case.runs[0]
        result = h.run(case.program, run.inputs)
        step = as_trace(result.trace)[0]
        if step.kind != "map" or len(step.children) != len(run.inputs["questions"]):
            _fail(f"the map step should record one child per element ({len(run.inputs['questions'])}), got kind "
                  f"{step.kind!r} with {len(step.children)} children")
        got = [c.inputs.get("question") for c in step.children]
        if got != run.inputs["questions"]:
            _fail(f"map children must be in input order: {got}")

    @capability("lm_trace")
    def test_lm_trace_matches_the_wire(self, conformance: Harness) -> None:
        """Each step's LM calls in the trace hold exactly the messages the LM received, with the response."""
        h = conformance
        self.require(h, {"lm_trace"})
        case = _BY_ID["literals_and_lm_overrides"]
        result, error, bodies = h.observe(lambda: h.run(case.program, case.runs[0].inputs))
        if error is not None:
            _fail(f"the run failed: {error!r}")
        assert result is not None
        calls = [c for step in as_trace(result.trace) for c in step.lm_calls]
        traced = [json.dumps(c.messages, sort_keys=True, ensure_ascii=False) for c in calls]
        if traced != messages_of(bodies):
            _fail(f"the trace's LM calls ({len(traced)}) do not hold the messages the LM received ({len(bodies)}), "
                  "in order. Record each call's messages as sent (LMCall.messages).")
        if any(not isinstance(c.response, str) or not c.response for c in calls):
            _fail("each traced LM call needs the raw response text (LMCall.response)")
        if result.usage.lm_calls != len(bodies):
            _fail(f"usage.lm_calls is {result.usage.lm_calls}, but the LM received {len(bodies)} requests")

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
                _fail("storage returned a different program (suite/storage bug)")
            fresh = h.new_adapter()
            result = h.run(loaded, run.inputs, adapter=fresh, what=f"a fresh {h.name!r} adapter")
            assert run.outputs is not None
            self.check_outputs(run.outputs, result.outputs, "rehydrated program on a fresh adapter")
            recorded = h.loop.call(h.runner(fresh, store=store).run(version.hash, run.inputs),
                                   what="a run by hash through a Runner with a store")
            execution = store.get_execution(recorded.execution_id)
            if execution is None or str(getattr(execution.status, "value", execution.status)) != "succeeded":
                _fail(f"the run by hash was not recorded as succeeded ({execution!r:.300})")

    @capability("timeout")
    def test_timeout(self, conformance: Harness) -> None:
        """RunOptions.timeout ends a run with RunTimeoutError carrying the partial trace."""
        h = conformance
        self.require(h, {"timeout"})
        program = _slow_second_step(6000)
        h.run(_BY_ID["predict"].program, {"question": "warm up"})  # connections up, so the fast step stays fast
        mark = h.lm.mark()
        _, error, _ = h.observe(lambda: h.run(program, {"question": "Will this time out?"},
                                              options=RunOptions(timeout=1.5)))
        if error is None:
            _fail("the run finished normally although its LM answered only after 6 s and RunOptions.timeout was "
                  "1.5 s: the adapter ignores the timeout. Enforce it (e.g. `async with asyncio.timeout("
                  "options.timeout)`) and raise RunTimeoutError with the partial trace.")
        if not isinstance(error, RunTimeoutError):
            _fail(f"a run past its timeout must raise RunTimeoutError, got {type(error).__name__}: {error}. "
                  f"{_TYPE_HINT}")
        if error.timeout != 1.5:
            _fail(f"RunTimeoutError.timeout should be the run's timeout (1.5), got {error.timeout!r}")
        reached_slow = any("slow-6000" in str(b.get("model")) for b in h.lm.since(mark))
        if reached_slow:
            trace = as_trace(error.trace)
            first = next((t for t in trace if t.step == 0), None)
            if first is None or first.outputs is None:
                _fail("RunTimeoutError must carry the partial trace: step 0 had finished before the timeout, but "
                      f"the error's trace is {[(t.step, t.kind, t.module) for t in trace]}")

    @capability("cancel")
    def test_cancel(self, conformance: Harness) -> None:
        """Cancelling the awaiting task stops the run (CancelledError); the adapter keeps serving."""
        h = conformance
        self.require(h, {"cancel"})
        program = _BY_ID["predict"].program
        options = h.options({"model": "openai/reference/slow-20000"})
        mark = h.lm.mark()

        async def go() -> str:
            task = asyncio.ensure_future(h.runner().run(program, {"question": "cancel me"}, options))
            while not any("slow-20000" in str(b.get("model")) for b in h.lm.since(mark)):
                if task.done():
                    return f"the run ended before it was cancelled: {task.result()!r:.200}"
                await asyncio.sleep(0.01)
            task.cancel()
            try:
                result = await task
            except asyncio.CancelledError:
                return "cancelled"
            except RunCancelledError:
                return "cancelled"
            except BaseException as exc:
                return f"raised {type(exc).__name__}: {exc}"
            return f"completed although cancelled (outputs {result.outputs!r:.100})"

        outcome = h.loop.call(go(), what=f"adapter {h.name!r} (cancel)")
        if outcome != "cancelled":
            _fail(f"cancelling the task awaiting adapter.run should raise CancelledError promptly; instead it "
                  f"{outcome}. Let asyncio.CancelledError propagate and stop the work (cancel the LM request).")
        ok = _BY_ID["predict"]
        result = h.run(ok.program, ok.runs[0].inputs)
        assert ok.runs[0].outputs is not None
        self.check_outputs(ok.runs[0].outputs, result.outputs, "a run after a cancelled run")

    @capability("out_of_process")
    def test_out_of_process_reports_worker(self, conformance: Harness) -> None:
        """An out-of-process adapter says which worker ran each run (RunResult.worker)."""
        h = conformance
        self.require(h, {"out_of_process"})
        ok = _BY_ID["predict"]
        result = h.run(ok.program, ok.runs[0].inputs)
        if not isinstance(result.worker, str) or not result.worker:
            _fail("an out_of_process adapter must set RunResult.worker to the worker that ran the program")

    # ================================================================================================
    # negative tests: an undeclared capability is refused, never half-run
    # ================================================================================================
    @capability("<param>", "negative")
    @pytest.mark.parametrize("capability", sorted(NEGATIVE_CASES))
    def test_undeclared_capability_via_runner(self, conformance: Harness, capability: str) -> None:
        h = conformance
        if capability in h.capabilities:
            pytest.skip(f"adapter {h.name!r} declares {capability!r}; the negative test is for adapters that do not")
        case = _BY_ID[NEGATIVE_CASES[capability]]
        run = case.runs[0]
        _, error, bodies = h.observe(lambda: h.run(case.program, run.inputs))
        if not isinstance(error, UnsupportedCapabilityError) or error.capability != capability:
            _fail(f"the core Runner should refuse a program needing {capability!r} with UnsupportedCapabilityError"
                  f"(capability={capability!r}); got {error!r}")
        if bodies:
            _fail(f"the LM received {len(bodies)} requests for a refused program")

    @capability("<param>", "negative")
    @pytest.mark.parametrize("capability", sorted(NEGATIVE_CASES))
    def test_undeclared_capability_direct(self, conformance: Harness, capability: str) -> None:
        h = conformance
        if capability in h.capabilities:
            pytest.skip(f"adapter {h.name!r} declares {capability!r}; the negative test is for adapters that do not")
        case = _BY_ID[NEGATIVE_CASES[capability]]
        run = case.runs[0]
        result, error, bodies = h.observe(lambda: h.run(case.program, run.inputs, direct=True))
        fix = (f"Fix: in prepare() or run(), raise UnsupportedCapabilityError(capability={capability!r}) when "
               f"`program.required_capabilities - self.capabilities` is not empty; never run part of such a program.")
        if error is None:
            _fail(f"adapter.run accepted a program that needs {capability!r}, which the adapter does not declare "
                  f"(outputs {getattr(result, 'outputs', None)!r:.200}). {fix}")
        if not isinstance(error, UnsupportedCapabilityError):
            _fail(f"adapter.run raised {type(error).__name__} ({str(error)[:200]}) for a program needing undeclared "
                  f"{capability!r}. {fix}")
        if error.capability not in (None, capability):
            _fail(f"UnsupportedCapabilityError.capability is {error.capability!r}, expected {capability!r}")
        if bodies:
            _fail(f"the LM received {len(bodies)} requests for a program the adapter cannot run: it half-ran. {fix}")


def _slow_second_step(ms: int) -> Program:
    """Two predict steps; the second one's LM answers after ``ms`` milliseconds."""
    return load_program({
        "stepbridge": 1, "name": "conformance_slow", "signature": "question -> answer, final",
        "modules": {
            "fast": {"type": "predict", "signature": "question -> answer"},
            "slow": {"type": "predict", "signature": "question, answer -> final",
                     "lm": {"model": f"openai/reference/slow-{ms}"}},
        },
        "steps": [
            {"call": "fast", "with": {"question": "$inputs.question"}, "as": "a"},
            {"call": "slow", "with": {"question": "$inputs.question", "answer": "$a.answer"}, "as": "b"},
            {"return": {"answer": "$a.answer", "final": "$b.final"}},
        ],
    })
