"""The step interpreter every in-process adapter shares: the tree of steps, traces and errors.

Adapters differ only in how they *call a module* (the native executor formats the prompt and
calls the LM itself; the DSPy adapter calls a real ``dspy.Predict``). Everything else lives here
once, so every adapter built on it runs the same sequence of steps by construction: values
(references and operations, compiled once per program by :func:`plan`), ``map`` fan-out with
bounded concurrency and input-order results, ``parallel`` calls (the first failure cancels the
others), ``set``, ``if``, ``switch``, bounded ``loop``\\ s, ``return`` wherever steps end, one
scope per run, the trace (one record per step that runs, in the order steps start, each with its
JSON pointer and, inside loops, its pass numbers), ``StepError`` with the step's pointer and the
partial trace, and the run timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from . import operations
from .adapter import RunOptions
from .errors import OperationError, RunTimeoutError, StepbridgeError, StepError
from .operations import SIZES_KEY, WORK_KEY, truthy
from .program import CallStep, IfStep, LoopStep, MapStep, ParallelStep, Program, ReturnStep, SetStep, SwitchStep
from .result import LMCall, RunResult, StepTrace, Usage, constructor, fast_construct
from .values import Getter, compile_args, compile_value, parse_value

__all__ = [
    "DEFAULT_MAP_CONCURRENCY",
    "ModuleCall",
    "PlanStep",
    "RunContext",
    "execute",
    "plan",
    "run_plan",
    "to_typed_error",
]

DEFAULT_MAP_CONCURRENCY = 16
_step_trace = constructor(StepTrace)  # a record with every field given, unvalidated: two per loop pass
_YIELD_EVERY = 64  # loop passes between explicit yields to the event loop (timeouts, cancellation)


@dataclass(slots=True)
class PlanStep:
    """A ``call`` or ``map`` step ready to run: its values compiled (see :mod:`stepbridge.values`).

    ``index`` is the top-level step the step belongs to; ``pointer`` its JSON pointer."""

    index: int
    kind: str  # call | map
    module: str | None = None
    module_type: str | None = None
    args: Getter | None = None
    over: Getter | None = None
    item: str = "item"
    name: str | None = None
    concurrency: int | None = None
    pointer: str = ""


@dataclass(slots=True)
class _Node:
    """Any other step: ``return``, ``set``, ``if``, ``switch``, ``loop`` or ``parallel``."""

    index: int
    kind: str
    pointer: str
    value: Getter | None = None  # return/set: the mapping; if: the condition; switch: the value; loop: over
    bodies: list[list[Any]] = field(default_factory=list)  # if: then, else; switch: cases..., default; loop: steps
    whens: list[list[Any]] = field(default_factory=list)  # switch: each case's literals
    has_else: bool = False  # if: an else; switch: a default
    until: Getter | None = None
    max: int = 0
    item: str | None = None
    index_name: str | None = None
    calls: list[PlanStep] = field(default_factory=list)  # parallel


class RunContext:
    """Per-run state: options, usage and the trace so far (kept for partial traces on failure)."""

    __slots__ = ("options", "trace", "usage")

    def __init__(self, options: RunOptions):
        self.options = options
        self.trace: list[StepTrace] = []
        self.usage = Usage.zero()


#: How an adapter calls one module: ``(step, args, ctx, lm_calls) -> outputs``; it appends the LM calls
#: it makes to ``lm_calls`` (also when it fails) and adds their usage to ``ctx.usage``.
ModuleCall = Callable[[PlanStep, dict[str, Any], RunContext, list[LMCall]], Awaitable[dict[str, Any]]]


# -- planning ---------------------------------------------------------------------------------------
def plan(program: Program) -> list[Any]:
    """The program's steps, ready to interpret (values parsed and compiled once)."""
    return _plan_list(program, program.steps, "/steps", None)


def _plan_list(program: Program, steps: list[Any], pointer: str, top: int | None) -> list[Any]:
    return [_plan_step(program, step, f"{pointer}/{i}", i if top is None else top) for i, step in enumerate(steps)]


def _value(program: Program, raw: Any, pointer: str) -> Getter:
    return compile_value(parse_value(raw, version=program.stepbridge, pointer=pointer), pointer)


def _mapping(program: Program, raw: dict[str, Any], pointer: str) -> Getter:
    return compile_args(parse_value(raw, version=program.stepbridge, pointer=pointer), pointer)


def _plan_call(program: Program, step: CallStep, pointer: str, top: int) -> PlanStep:
    return PlanStep(top, "call", step.call, program.modules[step.call].type,
                    _mapping(program, step.with_, f"{pointer}/with"), name=step.as_, pointer=pointer)


def _plan_step(program: Program, step: Any, pointer: str, top: int) -> Any:
    if isinstance(step, CallStep):
        return _plan_call(program, step, pointer, top)
    if isinstance(step, MapStep):
        return PlanStep(top, "map", step.map, program.modules[step.map].type,
                        _mapping(program, step.with_, f"{pointer}/with"),
                        over=_value(program, step.over, f"{pointer}/over"), item=step.item, name=step.as_,
                        concurrency=step.concurrency, pointer=pointer)
    if isinstance(step, ReturnStep):
        return _Node(top, "return", pointer, _mapping(program, step.return_, f"{pointer}/return"))
    if isinstance(step, SetStep):
        return _Node(top, "set", pointer, _mapping(program, step.set, f"{pointer}/set"))
    if isinstance(step, IfStep):
        bodies = [_plan_list(program, step.then, f"{pointer}/then", top)]
        if step.else_ is not None:
            bodies.append(_plan_list(program, step.else_, f"{pointer}/else", top))
        return _Node(top, "if", pointer, _value(program, step.if_, f"{pointer}/if"), bodies,
                     has_else=step.else_ is not None)
    if isinstance(step, SwitchStep):
        bodies = [_plan_list(program, case.steps, f"{pointer}/cases/{i}/steps", top)
                  for i, case in enumerate(step.cases)]
        whens = [list(case.when) if isinstance(case.when, list) else [case.when] for case in step.cases]
        whens = [[parse_value(w, version=2) for w in ws] for ws in whens]
        if step.default is not None:
            bodies.append(_plan_list(program, step.default, f"{pointer}/default", top))
        return _Node(top, "switch", pointer, _value(program, step.switch, f"{pointer}/switch"), bodies, whens,
                     has_else=step.default is not None)
    if isinstance(step, LoopStep):
        spec = step.loop
        base = f"{pointer}/loop"
        return _Node(top, "loop", pointer,
                     _value(program, spec.over, f"{base}/over") if spec.over is not None else None,
                     [_plan_list(program, spec.steps, f"{base}/steps", top)],
                     until=_value(program, spec.until, f"{base}/until") if spec.until is not None else None,
                     max=spec.max, item=spec.item if spec.over is not None else None, index_name=spec.index)
    if isinstance(step, ParallelStep):
        calls = [_plan_call(program, call, f"{pointer}/parallel/{i}", top) for i, call in enumerate(step.parallel)]
        return _Node(top, "parallel", pointer, calls=calls)
    raise TypeError(f"unknown step {type(step).__name__}")


# -- running ----------------------------------------------------------------------------------------
async def run_plan(program: Program, steps: list[Any], inputs: dict[str, Any], options: RunOptions, *,
                   call: ModuleCall, backend: str, map_concurrency: int = DEFAULT_MAP_CONCURRENCY) -> RunResult:
    """Interpret ``steps`` with ``call`` and return the :class:`RunResult` (or raise a typed error)."""
    ctx = RunContext(options)
    start = time.perf_counter()
    try:
        run = _Run(ctx, call, map_concurrency)
        scope = _scope(inputs)
        if options.timeout is not None:
            async with asyncio.timeout(options.timeout):
                outputs = await run.steps(steps, scope, ())
        else:
            outputs = await run.steps(steps, scope, ())
    except TimeoutError:
        raise RunTimeoutError(f"run exceeded its timeout of {options.timeout}s", timeout=options.timeout,
                              trace=ctx.trace) from None
    if outputs is None:
        raise AssertionError("validated programs return on every path")
    return fast_construct(RunResult, {
        "outputs": outputs, "trace": ctx.trace, "usage": ctx.usage, "backend": backend,
        "program_hash": program.content_hash, "execution_id": options.execution_id,
        "duration_ms": (time.perf_counter() - start) * 1000, "attempts": options.attempt, "worker": None})


async def execute(steps: list[Any], inputs: dict[str, Any], ctx: RunContext, call: ModuleCall,
                  map_concurrency: int = DEFAULT_MAP_CONCURRENCY) -> dict[str, Any]:
    """Run planned steps in one scope and return the program outputs (the trace goes to ``ctx``)."""
    run = _Run(ctx, call, map_concurrency)
    outputs = await run.steps(steps, _scope(inputs), ())
    if outputs is None:
        raise AssertionError("validated programs return on every path")
    return outputs


def _scope(inputs: dict[str, Any]) -> dict[str, Any]:
    r"""A run's scope: its inputs, its work budget and the sizes its ``$concat``\ s remembered."""
    return {"inputs": inputs, WORK_KEY: [operations.MAX_WORK], SIZES_KEY: {}}


class _Run:
    __slots__ = ("call", "ctx", "map_concurrency", "trace")

    def __init__(self, ctx: RunContext, call: ModuleCall, map_concurrency: int):
        self.ctx = ctx
        self.trace = ctx.trace
        self.call = call
        self.map_concurrency = map_concurrency

    async def steps(self, steps: list[Any], scope: dict[str, Any], passes: tuple[int, ...]) -> dict[str, Any] | None:
        """Run a list of steps; the outputs if a ``return`` ran, else None."""
        for step in steps:
            kind = step.kind
            if kind == "call":  # the hot path, inline (module_step does the same for map)
                began = time.perf_counter()
                calls: list[LMCall] = []
                args: dict[str, Any] = {}
                try:
                    args = step.args(scope)
                    result = await self.call(step, args, self.ctx, calls)
                except BaseException as exc:
                    self.fail(exc, step.pointer, step.index, kind, step.module, step.module_type, args, calls, None,
                              began, passes)
                self.trace.append(_step_trace({  # _record's fields, without its call
                    "step": step.index, "kind": kind, "module": step.module, "module_type": step.module_type,
                    "inputs": args, "outputs": result, "lm_calls": calls, "children": [],
                    "duration_ms": (time.perf_counter() - began) * 1000, "error": None, "pointer": step.pointer,
                    "passes": list(passes) if passes else []}))
                if step.name is not None:
                    scope[step.name] = result
            elif kind == "map":
                await self.module_step(step, scope, passes)
            elif kind == "set":  # the body of most loops: kept off the generic control path
                began = time.perf_counter()
                try:
                    values = step.value(scope)
                except Exception as exc:
                    self.fail(exc, step.pointer, step.index, kind, None, None, {}, None, None, began, passes)
                self.trace.append(_step_trace({  # _record's fields, without its call
                    "step": step.index, "kind": kind, "module": None, "module_type": None, "inputs": {},
                    "outputs": values, "lm_calls": [], "children": [],
                    "duration_ms": (time.perf_counter() - began) * 1000, "error": None, "pointer": step.pointer,
                    "passes": list(passes) if passes else []}))
                scope.update(values)
            elif kind == "return":
                outputs = self.evaluate(step, step.value, scope, passes)
                self.trace.append(_record(step=step.index, kind="return", inputs=outputs, outputs=outputs,
                                          pointer=step.pointer, passes=passes))
                return outputs  # type: ignore[no-any-return,unused-ignore]
            else:
                returned = await self.control_step(step, scope, passes)
                if returned is not None:
                    return returned
        return None

    async def module_step(self, step: PlanStep, scope: dict[str, Any], passes: tuple[int, ...]) -> None:
        began = time.perf_counter()
        calls: list[LMCall] = []
        children: list[StepTrace] = []
        args: dict[str, Any] = {}
        try:
            if step.kind == "call":
                args = step.args(scope)  # type: ignore[misc]
                result: Any = await self.call(step, args, self.ctx, calls)
            else:
                over = step.over(scope)  # type: ignore[misc]
                args = {"over": over}
                if not isinstance(over, list):
                    raise OperationError(f"{step.pointer}/over: 'over' is {type(over).__name__}, not a list",
                                         pointer=f"{step.pointer}/over")
                result = await self.map(step, over, scope, children, passes,
                                        step.concurrency or self.map_concurrency)
        except BaseException as exc:
            self.fail(exc, step.pointer, step.index, step.kind, step.module, step.module_type, args, calls,
                      children, began, passes)
        self.trace.append(_record(
            step=step.index, kind=step.kind, module=step.module, module_type=step.module_type, inputs=args,
            outputs=result, lm_calls=calls, children=children, duration_ms=(time.perf_counter() - began) * 1000,
            pointer=step.pointer, passes=passes))
        if step.name is not None:
            scope[step.name] = result

    def fail(self, exc: BaseException, pointer: str, index: int, kind: str, module: str | None,
             module_type: str | None, args: Any, calls: list[LMCall] | None, children: list[StepTrace] | None,
             began: float, passes: tuple[int, ...], record: StepTrace | None = None) -> NoReturn:
        """Record a failed step and raise: a StepError naming it (or the inner step's StepError)."""
        error = to_typed_error(exc) if not isinstance(exc, asyncio.CancelledError) else None
        data = error.to_dict() if error else {"type": "RunCancelledError", "message": "cancelled"}
        if record is not None:  # a control step's record, already in the trace
            record.__dict__["error"] = data
            record.__dict__["duration_ms"] = (time.perf_counter() - began) * 1000
        else:
            self.trace.append(_record(
                step=index, kind=kind, module=module, module_type=module_type, inputs=args, lm_calls=calls,
                children=children, duration_ms=(time.perf_counter() - began) * 1000, error=data, pointer=pointer,
                passes=passes))
        if error is None or isinstance(exc, StepError):
            raise exc
        where = f"step {index}" if pointer == f"/steps/{index}" else f"step {pointer}"
        what = f"{kind} {module!r}" if module is not None else kind
        raise StepError(f"{where} ({what}) failed: {error.message}", step=index, module=module, cause=error,
                        pointer=pointer, trace=self.trace) from exc

    def evaluate(self, node: _Node, getter: Getter | None, scope: dict[str, Any], passes: tuple[int, ...],
                 record: StepTrace | None = None) -> Any:
        try:
            return getter(scope)  # type: ignore[misc]
        except Exception as exc:
            self.fail(exc, node.pointer, node.index, node.kind, None, None, {}, None, None, time.perf_counter(),
                      passes, record)

    async def map(self, step: PlanStep, items: list[Any], scope: dict[str, Any], children: list[StepTrace],
                  passes: tuple[int, ...], concurrency: int) -> list[Any]:
        limit = asyncio.Semaphore(concurrency)
        records: list[StepTrace | None] = [None] * len(items)
        call, ctx, getter = self.call, self.ctx, step.args

        async def one(position: int, element: Any) -> Any:
            async with limit:
                began = time.perf_counter()
                calls: list[LMCall] = []
                args: dict[str, Any] = {}
                out: Any = None
                error: dict[str, Any] | None = None
                try:
                    args = getter({**scope, step.item: element})  # type: ignore[misc]
                    out = await call(step, args, ctx, calls)
                    return out
                except Exception as exc:
                    error = to_typed_error(exc).to_dict()
                    raise
                finally:
                    records[position] = _record(
                        step=step.index, kind="call", module=step.module, module_type=step.module_type, inputs=args,
                        outputs=out, lm_calls=calls, duration_ms=(time.perf_counter() - began) * 1000, error=error,
                        pointer=step.pointer, passes=passes)

        try:
            return await _gather([one(i, e) for i, e in enumerate(items)])
        finally:
            children.extend(r for r in records if r is not None)

    async def control_step(self, node: _Node, scope: dict[str, Any], passes: tuple[int, ...]) -> dict[str, Any] | None:
        kind = node.kind
        began = time.perf_counter()
        record = _record(step=node.index, kind=kind, pointer=node.pointer, passes=passes)
        self.trace.append(record)  # control steps are recorded when they start: their steps follow
        outputs: dict[str, Any] = {}
        try:
            if kind == "if":
                cond = self.evaluate(node, node.value, scope, passes, record)
                record.__dict__["inputs"] = {"condition": cond}
                branch = 0 if truthy(cond) else (1 if node.has_else else None)
                outputs["branch"] = None if branch is None else ("then" if branch == 0 else "else")
                return await self.steps(node.bodies[branch], scope, passes) if branch is not None else None
            if kind == "switch":
                value = self.evaluate(node, node.value, scope, passes, record)
                record.__dict__["inputs"] = {"value": value}
                case = _match(value, node.whens)
                if case is None and node.has_else:
                    case = len(node.whens)
                outputs["case"] = None if case is None else ("default" if case == len(node.whens) else case)
                return await self.steps(node.bodies[case], scope, passes) if case is not None else None
            if kind == "loop":
                return await self.loop(node, scope, passes, record, outputs)
            await self.parallel(node, scope, passes, record, outputs)
            return None
        except BaseException as exc:
            if record.error is None:  # a step inside failed: the enclosing steps' records say why too
                typed = to_typed_error(exc) if not isinstance(exc, asyncio.CancelledError) else None
                if isinstance(typed, StepError) and typed.cause is not None:
                    typed = typed.cause
                record.__dict__["error"] = (typed.to_dict() if typed is not None
                                            else {"type": "RunCancelledError", "message": "cancelled"})
            raise
        finally:
            record.__dict__["outputs"] = outputs
            record.__dict__["duration_ms"] = (time.perf_counter() - began) * 1000

    async def loop(self, node: _Node, scope: dict[str, Any], passes: tuple[int, ...], record: StepTrace,
                   outputs: dict[str, Any]) -> dict[str, Any] | None:
        items: list[Any] | None = None
        if node.value is not None:
            items = self.evaluate(node, node.value, scope, passes, record)
            record.__dict__["inputs"] = {"over": items}
            problem = None
            if not isinstance(items, list):
                problem = f"'over' is {type(items).__name__}, not a list"
            elif len(items) > node.max:
                problem = f"'over' has {len(items):,} elements, more than the loop's max of {node.max:,}"
            if problem is not None:
                err = OperationError(f"{node.pointer}/loop/over: {problem}", pointer=f"{node.pointer}/loop/over")
                self.fail(err, node.pointer, node.index, "loop", None, None, {}, None, None, time.perf_counter(),
                          passes, record)
        body, until, item, index_name = node.bodies[0], node.until, node.item, node.index_name
        count = len(items) if items is not None else node.max
        done = 0
        outputs["passes"] = 0
        try:
            for i in range(count):
                if items is not None and item is not None:
                    scope[item] = items[i]
                if index_name is not None:
                    scope[index_name] = i
                result = await self.steps(body, scope, (*passes, i))
                done += 1
                outputs["passes"] = done
                if result is not None:
                    return result
                if until is not None:
                    try:
                        stop = until(scope)
                    except Exception as exc:
                        self.fail(exc, node.pointer, node.index, "loop", None, None, {}, None, None,
                                  time.perf_counter(), passes, record)
                    if stop:  # truthy()
                        outputs["stopped"] = "until"
                        return None
                if done % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a loop of pure steps must still see timeouts and cancellation
            return None
        finally:
            for name in (node.item, node.index_name):
                if name is not None:
                    scope.pop(name, None)

    async def parallel(self, node: _Node, scope: dict[str, Any], passes: tuple[int, ...], record: StepTrace,
                       outputs: dict[str, Any]) -> None:
        records: list[StepTrace | None] = [None] * len(node.calls)
        call, ctx = self.call, self.ctx

        async def one(position: int, step: PlanStep) -> Any:
            began = time.perf_counter()
            calls: list[LMCall] = []
            args: dict[str, Any] = {}
            out: Any = None
            error: dict[str, Any] | None = None
            try:
                args = step.args(scope)  # type: ignore[misc]
                out = await call(step, args, ctx, calls)
                return out
            except asyncio.CancelledError:
                error = {"type": "RunCancelledError", "message": "cancelled"}
                raise
            except Exception as exc:
                typed = to_typed_error(exc)
                error = typed.to_dict()
                where = f"step {step.pointer}"
                raise StepError(f"{where} (call {step.module!r}) failed: {typed.message}", step=step.index,
                                module=step.module, cause=typed, pointer=step.pointer, trace=self.trace) from exc
            finally:
                records[position] = _record(
                    step=step.index, kind="call", module=step.module, module_type=step.module_type, inputs=args,
                    outputs=out, lm_calls=calls, duration_ms=(time.perf_counter() - began) * 1000, error=error,
                    pointer=step.pointer, passes=passes)

        began = time.perf_counter()
        try:
            results = await _gather([one(i, s) for i, s in enumerate(node.calls)])
        except BaseException as exc:
            record.__dict__["children"] = [r for r in records if r is not None]
            self.fail(exc, node.pointer, node.index, "parallel", None, None, {}, None, None, began, passes, record)
        record.__dict__["children"] = [r for r in records if r is not None]
        for step, result in zip(node.calls, results, strict=True):
            if step.name is not None:
                scope[step.name] = result
        outputs["calls"] = len(results)


async def _gather(coroutines: list[Awaitable[Any]]) -> list[Any]:
    """All results in order; on the first failure the others are cancelled (and awaited) first."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _match(value: Any, whens: list[list[Any]]) -> int | None:
    from .operations import json_equal

    for i, literals in enumerate(whens):
        if any(json_equal(value, literal) for literal in literals):
            return i
    return None


def to_typed_error(exc: BaseException) -> StepbridgeError:
    """Our typed error as is; anything else wrapped with its type name (never the object itself)."""
    if isinstance(exc, StepbridgeError):
        return exc
    return StepbridgeError(f"{type(exc).__name__}: {exc}")


def _record(*, step: int, kind: str, module: str | None = None, module_type: str | None = None,
            inputs: Any = None, outputs: Any = None, lm_calls: list[LMCall] | None = None,
            children: list[StepTrace] | None = None, duration_ms: float = 0.0,
            error: dict[str, Any] | None = None, pointer: str = "", passes: tuple[int, ...] = ()) -> StepTrace:
    # every field given and no validation: this runs per step on the hot path
    return _step_trace({
        "step": step, "kind": kind, "module": module, "module_type": module_type,
        "inputs": inputs if inputs is not None else {}, "outputs": outputs,
        "lm_calls": lm_calls if lm_calls is not None else [], "children": children if children is not None else [],
        "duration_ms": duration_ms, "error": error, "pointer": pointer, "passes": list(passes) if passes else []})
