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
with the reason, a declared one must pass, and for each capability a program can need there is a
negative test (an adapter that does not declare it must raise ``UnsupportedCapabilityError``).

This module holds the fixtures, the protocol test, the data-driven cases (``test_case``), the
comparison with the native adapter (``test_equivalence``) and the negative tests; the behavioural
tests are in :mod:`stepbridge.conformance.behaviour`.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from stepbridge.adapter import RunOptions
from stepbridge.errors import ProgramValidationError, StepError, UnsupportedCapabilityError
from stepbridge.loader import load_program

from . import SUITE_VERSION, fixtures
from .behaviour import BehaviourTests, check_error, check_outputs, native_observation
from .cases import FORMAT_2_CAPABILITIES, Case, CaseRun, load_cases, name_matches, negative_cases
from .checks import (
    CAPABILITY_PARTS,
    describe_error,
    describe_outcome,
    diff_requests,
    expected_fields_difference,
    fail,
    first_difference,
    record_part,
    request_divergence,
    request_position,
    trace_divergence,
    trace_labels,
)
from .harness import Harness, Observed, as_trace, describe_spec
from .meta import capability, meta_of

__all__ = ["SUITE_VERSION", "AdapterConformance", "conformance_meta"]

_CASES = load_cases()
_BY_ID = {c.id: c for c in _CASES}
_RUNS = [pytest.param(run, id=run.id) for case in _CASES for run in case.runs]
_ADAPTER_RUNS = [pytest.param(run, id=run.id) for case in _CASES for run in case.runs
                 if case.checked_by == "adapter"]
_INVALID = [pytest.param(case, id=case.id) for case in _CASES if case.invalid]
#: capability -> the case whose program needs exactly that capability
NEGATIVE_CASES = {cap: case.id for cap, case in negative_cases(_CASES).items()}


def conformance_meta(item: Any) -> tuple[str, str, str] | None:
    """(capability, category, scope) of a collected suite test; None for tests that are not the suite's."""
    fn = getattr(item, "function", None)
    meta = meta_of(fn)
    if meta is None:
        cls = getattr(item, "cls", None)
        if isinstance(cls, type) and issubclass(cls, AdapterConformance):
            meta = meta_of(getattr(AdapterConformance, getattr(fn, "__name__", ""), None))
    if meta is None:
        return None
    cap, category, scope = meta
    params = getattr(getattr(item, "callspec", None), "params", {})
    if cap == "<case>":
        run = params.get("run")
        case = run.case if isinstance(run, CaseRun) else params.get("case")
        cap = case.capability if isinstance(case, Case) else "core"
        if isinstance(case, Case) and case.checked_by == "core":
            scope = "core"
    elif cap == "<param>":
        cap = str(params.get("capability", "core"))
    return cap, category, scope


def _xfail_mark(fn: Any) -> Any:
    for mark in getattr(fn, "pytestmark", []):
        if getattr(mark, "name", None) == "xfail":
            return mark
    return None


def _is_async(fn: Any) -> bool:
    """A coroutine function, also behind decorators (``functools.wraps``) or as an object with ``async __call__``."""
    for candidate in (fn, inspect.unwrap(fn), getattr(fn, "__call__", None)):  # noqa: B004
        if candidate is not None and (inspect.iscoroutinefunction(candidate) or
                                      inspect.iscoroutinefunction(inspect.unwrap(candidate))):
            return True
    return False


class AdapterConformance(BehaviourTests):
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
            if not name.startswith("test") or meta_of(getattr(AdapterConformance, name, None)) is None:
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
            if isinstance(spec, str):
                from .hosted import hosted_spec

                spec = hosted_spec(spec)
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
    # the protocol
    # ================================================================================================
    @capability("core")
    def test_declares_adapter_protocol(self, conformance: Harness) -> None:
        """``name``, ``capabilities`` and awaitable ``prepare``/``run``/``aclose`` (``async def``, decorated
        coroutine functions, or plain methods that return an awaitable)."""
        from stepbridge.adapter import CAPABILITIES

        h = conformance
        adapter = h.adapter
        name = getattr(adapter, "name", None)
        if not isinstance(name, str) or not name:
            fail("the adapter has no usable name", expected="a non-empty str `name`", actual=repr(name),
                 look_at="protocol")
        caps = getattr(adapter, "capabilities", None)
        if not isinstance(caps, frozenset | set) or not all(isinstance(c, str) for c in caps):
            fail("`capabilities` is not a set of names", expected="a frozenset of str", actual=repr(caps),
                 look_at="protocol")
        known = CAPABILITIES | FORMAT_2_CAPABILITIES | {cap for case in _CASES for cap in case.capabilities}
        unknown = sorted(set(caps) - known)
        if unknown:
            fail("the adapter declares capabilities nobody defines", expected=f"names from {sorted(known)}",
                 actual=f"also {unknown}", look_at="capabilities")
        missing = [m for m in ("prepare", "run", "aclose") if not callable(getattr(adapter, m, None))]
        if missing:
            fail("the adapter lacks protocol methods", expected="prepare, run and aclose",
                 actual=f"no {', '.join(missing)}", look_at="protocol")
        program = _BY_ID["predict"].program
        run = _BY_ID["predict"].runs[0]

        async def call_without_awaiting_first() -> tuple[bool, bool, Any]:
            prepared = adapter.prepare(program)
            prepare_ok = inspect.isawaitable(prepared)
            if prepare_ok:
                await prepared
            started = adapter.run(program, dict(run.inputs), RunOptions())
            run_ok = inspect.isawaitable(started)
            return prepare_ok, run_ok, (await started) if run_ok else started

        prepare_ok, run_ok, result = h.loop.call(call_without_awaiting_first(), what=f"adapter {h.name!r}")
        if not prepare_ok or not run_ok:
            bad = "prepare(program)" if not prepare_ok else "run(program, inputs, options)"
            fail(f"{bad} did not return an awaitable", expected="a coroutine (async def) or another awaitable",
                 actual=f"returned {type(result).__name__ if not run_ok else 'a non-awaitable'}", look_at="protocol")
        if not _is_async(adapter.aclose):
            fresh = h.new_adapter()

            async def close() -> str | None:
                closing = fresh.aclose()
                if not inspect.isawaitable(closing):
                    return type(closing).__name__
                await closing
                return None

            returned = h.loop.call(close(), what="aclose()")
            h.forget(fresh)
            if returned is not None:
                fail("aclose() did not return an awaitable", expected="a coroutine (async def) or another awaitable",
                     actual=f"returned {returned}", look_at="protocol")

    # ================================================================================================
    # data-driven cases
    # ================================================================================================
    @capability("<case>", "case")
    @pytest.mark.parametrize("run", _RUNS)
    def test_case(self, conformance: Harness, run: CaseRun) -> None:
        """A data-driven case: the adapter's outputs (or typed error), and the requests it sent, are the case
        file's expectation."""
        h = conformance
        case = run.case
        self.require(h, case.capabilities, f"case {case.id!r}")
        program = case.program
        if not program.required_capabilities <= case.capabilities:  # the suite checks its own data
            fail(f"suite bug: case {case.id!r} needs {sorted(program.required_capabilities)} but declares "
                 f"{sorted(case.capabilities)}")
        what = f"case {run.id} ({case.description})"
        seen = h.case_runs[run.id] = h.observe(lambda: h.run(program, run.inputs, options=h.options(run.lm)))
        request_diff = None
        if run.requests is not None:
            request_diff = expected_fields_difference(run.requests, seen.bodies)
        if request_diff is not None:
            fail(f"{what}: the LM received other requests than the case expects",
                 expected=f"{len(run.requests or [])} request(s) with the fields {run.requests}",
                 actual=f"{len(seen.bodies)} request(s); the run {describe_outcome(seen.result, seen.error)}",
                 difference=request_diff[1], look_at=_look_for(request_diff[0], case))
        if run.error is not None or seen.error is not None or run.outputs is not None:
            self._judge_case(h, run, seen, what)
        if run.lm_requests is not None and len(seen.bodies) != run.lm_requests:
            cause, look = (None, None) if case.checked_by == "core" else _diagnose(native_observation(h, run), seen,
                                                                                   case)
            fail(f"{what}: the LM received another number of requests", expected=str(run.lm_requests),
                 actual=str(len(seen.bodies)), difference=cause,
                 look_at=look or (("capabilities",) if run.lm_requests == 0 else (*_case_parts(case), "retries")))

    @staticmethod
    def _judge_case(h: Harness, run: CaseRun, seen: Observed, what: str) -> None:
        """Outputs or error against the case. When they differ, first say whether the adapter asked the LM
        something else than native did: then the request (prompt, settings), not the parsing, is the bug."""
        case = run.case

        def diagnose() -> tuple[str | None, tuple[str, ...] | None]:
            if case.checked_by == "core":
                return None, None
            return _diagnose(native_observation(h, run), seen, case)

        if run.error is not None:
            check_error(seen.error, run.error, what, case.program, seen.result, diagnose=diagnose)
            return
        if seen.error is not None:
            cause, look = diagnose()
            hint = _fixture_hint(seen.error)
            fail(f"{what}: the run failed", expected=f"outputs {run.outputs}",
                 actual=describe_outcome(None, seen.error) + hint, difference=cause,
                 look_at=look or (("fixtures",) if hint else ("errors",)))
        assert seen.result is not None and run.outputs is not None
        if first_difference(run.outputs, getattr(seen.result, "outputs", None)) is not None:
            cause, look = diagnose()
            check_outputs(run.outputs, seen.result.outputs, what, difference=cause, look_at=look)

    @capability("<case>", "equivalence")
    @pytest.mark.parametrize("run", _ADAPTER_RUNS)
    def test_equivalence(self, conformance: Harness, run: CaseRun) -> None:
        """The native adapter's behaviour: same outcome, outputs, step sequence, and the same requests at the LM,
        request by request and field by field (messages, model, every sampling setting, response_format)."""
        h = conformance
        case = run.case
        self.require(h, case.capabilities, f"case {case.id!r}")
        what = f"case {run.id}: adapter {h.name!r} vs native"
        base = native_observation(h, run)
        seen = h.case_runs.pop(run.id, None) or h.observe(
            lambda: h.run(case.program, run.inputs, options=h.options(run.lm)))
        diff = diff_requests(base.bodies, seen.bodies, labels=trace_labels(_trace_of(base)), tolerate=_tolerated)
        if diff is not None:
            cause, look = _diagnose(base, seen, case)
            fail(f"{what}: the LM received other requests from this adapter than from native",
                 expected=f"native's {len(base.bodies)} request(s); native {describe_outcome(base.result, base.error)}",
                 actual=f"{len(seen.bodies)} request(s); the adapter {describe_outcome(seen.result, seen.error)}",
                 difference=cause, look_at=look or _look_for(diff[0], case))
        if (base.error is None) != (seen.error is None) or (
                base.error is not None and type(base.error) is not type(seen.error)):
            fail(f"{what}: the same requests, another outcome",
                 expected=f"native {describe_outcome(base.result, base.error)}",
                 actual=describe_outcome(seen.result, seen.error) + _fixture_hint(seen.error),
                 look_at=("parsing", "errors") if base.error is not None else ("errors", "fixtures"))
        if base.error is not None:
            assert seen.error is not None
            if isinstance(base.error, StepError):
                assert isinstance(seen.error, StepError)
                if (seen.error.step, seen.error.module) != (base.error.step, base.error.module) or \
                        type(seen.error.cause) is not type(base.error.cause):
                    fail(f"{what}: the run failed elsewhere", expected=describe_error(base.error),
                         actual=describe_error(seen.error), look_at="errors")
            return
        if first_difference(base.result.outputs, getattr(seen.result, "outputs", None)) is not None:
            cause, look = _diagnose(base, seen, case)
            check_outputs(base.result.outputs, seen.result.outputs, what, baseline="native's", difference=cause,
                          look_at=look)
        if seen.result.step_sequence() != base.result.step_sequence():
            fail(f"{what}: the trace's step sequence differs", expected=str(base.result.step_sequence()),
                 actual=str(seen.result.step_sequence()), look_at="trace")
        found = trace_divergence(as_trace(base.result.trace), as_trace(seen.result.trace))
        if found is not None:
            fail(f"{what}: the trace records other step inputs or outputs than native's",
                 expected="each step's resolved inputs and its outputs, as native records them",
                 actual="another record", difference=found[2],
                 look_at=("trace", *_parts_of(_part(found[1]), case)))

    @capability("core", "case", scope="core")
    @pytest.mark.parametrize("case", _INVALID)
    def test_invalid_program(self, conformance: Harness, case: Case) -> None:
        """ProgramValidationError: every problem with its pointer, before any adapter runs (stepbridge's check)."""
        assert case.invalid is not None
        with pytest.raises(ProgramValidationError) as info:
            load_program(case.program_data, base_dir=case.path.parent)
        pointers = {i.pointer for i in info.value.issues if i.severity == "error"}
        missing = set(case.invalid.get("pointers", [])) - pointers
        if missing:
            fail(f"case {case.id}: the validation error misses problems", expected=str(sorted(missing)),
                 actual=str(sorted(pointers)))

    # ================================================================================================
    # negative tests: an undeclared capability is refused, never half-run
    # ================================================================================================
    @capability("<param>", "negative", scope="core")
    @pytest.mark.parametrize("capability", sorted(NEGATIVE_CASES))
    def test_undeclared_capability_via_runner(self, conformance: Harness, capability: str) -> None:
        """The core Runner refuses a program needing an undeclared capability (stepbridge's check)."""
        h = conformance
        if capability in h.capabilities:
            pytest.skip(f"adapter {h.name!r} declares {capability!r}; the negative test is for adapters that do not")
        case = _BY_ID[NEGATIVE_CASES[capability]]
        seen = h.observe(lambda: h.run(case.program, case.runs[0].inputs))
        error = seen.error
        if not isinstance(error, UnsupportedCapabilityError) or error.capability != capability:
            fail(f"the core Runner did not refuse a program needing {capability!r}",
                 expected=f"UnsupportedCapabilityError(capability={capability!r})",
                 actual=describe_outcome(seen.result, error), look_at="capabilities")
        if seen.bodies:
            fail("the LM received requests for a refused program", expected="none",
                 actual=f"{len(seen.bodies)} request(s)", look_at="capabilities")

    @capability("<param>", "negative")
    @pytest.mark.parametrize("capability", sorted(NEGATIVE_CASES))
    def test_undeclared_capability_direct(self, conformance: Harness, capability: str) -> None:
        """Called directly (no Runner), the adapter itself refuses what it does not declare, before any work."""
        h = conformance
        if capability in h.capabilities:
            pytest.skip(f"adapter {h.name!r} declares {capability!r}; the negative test is for adapters that do not")
        case = _BY_ID[NEGATIVE_CASES[capability]]
        seen = h.observe(lambda: h.run(case.program, case.runs[0].inputs, direct=True))
        expected = f"UnsupportedCapabilityError(capability={capability!r}) from prepare() or run(), no LM request"
        error = seen.error
        if error is None:
            fail(f"adapter.run accepted a program that needs undeclared {capability!r}", expected=expected,
                 actual=describe_outcome(seen.result, None), look_at="capabilities")
        if not isinstance(error, UnsupportedCapabilityError):
            fail(f"adapter.run failed the wrong way on a program needing undeclared {capability!r}",
                 expected=expected, actual=describe_outcome(None, error), look_at="capabilities")
        if error.capability not in (None, capability):
            fail("UnsupportedCapabilityError names another capability", expected=repr(capability),
                 actual=repr(error.capability), look_at="capabilities")
        if seen.bodies:
            fail(f"the adapter half-ran a program needing undeclared {capability!r}", expected=expected,
                 actual=f"{len(seen.bodies)} LM request(s) before refusing", look_at="capabilities")


def _trace_of(seen: Observed) -> Any:
    if seen.result is not None:
        return getattr(seen.result, "trace", None)
    return getattr(seen.error, "trace", None)


def _look_for(field: str, case: Case | None = None) -> tuple[str, ...]:
    """The part of the protocol a request difference in ``field`` points at (``requests``: how many; in a
    format-2 case, first the parts its constructs belong to: a missing or extra request is then more often a
    branch, a loop, an agent or an ensemble that went elsewhere than a retry)."""
    parts = _case_parts(case)
    if field == "requests":
        return (*parts, "retries", "prompt")
    if field in ("model", "temperature", "max_tokens", "n"):
        found: tuple[str, ...] = ("lm_settings",)
    elif field == "response_format":
        found = ("response_format",)
    elif field == "messages.user":
        found = ("inputs", "prompt")
    elif field.startswith("messages"):
        found = ("prompt",)
    else:
        found = ("prompt", "retries")
    return (*found, *parts)


def _case_parts(case: Case | None) -> tuple[str, ...]:
    caps = case.capabilities if case is not None else frozenset()
    return tuple(part for cap, part in CAPABILITY_PARTS.items() if cap in caps)


def _parts_of(part: str, case: Case | None) -> tuple[str, ...]:
    """``part`` first, then the format-2 parts of the case (each once)."""
    return (part, *(p for p in _case_parts(case) if p != part))


def _diagnose(base: Observed, seen: Observed, case: Case) -> tuple[str | None, tuple[str, ...] | None]:
    """Why an adapter's run differs from native's: the first request that differs -- unless the run already
    went elsewhere in an earlier step (a branch, a pass, a parsed value), which the request only follows from;
    with the same requests, the first trace record that differs. (None, None) when nothing differs."""
    base_trace, seen_trace = _records(base), _records(seen)
    # an adapter that kept no trace at all (an untyped error) is judged by its error, not record by record
    traced = trace_divergence(base_trace, seen_trace) if base_trace and seen_trace else None
    found = request_divergence(base.bodies, seen.bodies, labels=trace_labels(_trace_of(base)), tolerate=_tolerated)
    if found is not None:
        at = request_position(base_trace, found[2].get("messages")) if found[2] is not None else None
        if traced is not None and (at is None or traced[0] < at) and traced[0] < len(base_trace or []):
            return (f"the run went elsewhere before the requests differ: {traced[2]}",
                    _parts_of(_part(traced[1]), case))
        return f"the requests already differ from native's: {found[1]}", _look_for(found[0], case)
    if traced is not None:
        return f"the same requests as native's, but {traced[2]}", _parts_of(_part(traced[1]), case)
    return None, None


def _part(record: Any) -> str:
    """The protocol part of a differing trace record (``trace`` when records are missing or extra)."""
    return record_part(record) if record is not None else "trace"


def _records(seen: Observed) -> list[Any] | None:
    try:
        return as_trace(_trace_of(seen))
    except Exception:
        return None


def _tolerated(body: dict[str, Any]) -> frozenset[str]:
    """Fields an adapter may leave out of a request native sends: ``response_format`` when the model is a
    fault-injection name (``reference/...``), because DSPy's LM engine sends none for models it does not know."""
    model = str(body.get("model", ""))
    return frozenset({"response_format"}) if model.startswith("reference") else frozenset()


def _fixture_hint(error: BaseException | None) -> str:
    if isinstance(error, ProgramValidationError | StepError) and "conformance_" in str(error) and \
            "registered" in str(error):
        return (" -- the suite's tools are registered in the test process only; this adapter ran the program "
                "elsewhere (worker processes?): register them there (stepbridge.conformance.hosted:native, or "
                "stepbridge.conformance.fixtures.register() in the worker's adapter factory)")
    if isinstance(error, UnsupportedCapabilityError):
        return (f" -- the adapter declares the capabilities this test needs but raised UnsupportedCapabilityError "
                f"(capability={error.capability!r}): implement it, or remove it from `capabilities`")
    return ""

