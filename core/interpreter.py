"""The step interpreter every in-process adapter shares: call, map, return, traces and errors.

Adapters differ only in how they *call a module* (the native executor formats the prompt and
calls the LM itself; the DSPy adapter calls a real ``dspy.Predict``). Everything else — reference
resolution, ``map`` fan-out with bounded concurrency and input-order results, the per-step trace,
``StepError`` with the partial trace, the run timeout — lives here once, so every adapter built on
it runs the same sequence of steps by construction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .adapter import RunOptions
from .errors import RunTimeoutError, StepbridgeError, StepError
from .program import CallStep, Program, ReturnStep
from .references import parse_value, resolve
from .result import LMCall, RunResult, StepTrace, Usage, fast_construct

__all__ = ["DEFAULT_MAP_CONCURRENCY", "ModuleCall", "PlanStep", "RunContext", "plan", "run_plan", "to_typed_error"]

DEFAULT_MAP_CONCURRENCY = 16


@dataclass(slots=True)
class PlanStep:
    """One step with its argument map pre-parsed (references are :class:`~stepbridge.references.Ref`)."""

    index: int
    kind: str  # call | map | return
    module: str | None = None
    module_type: str | None = None
    args: Any = None
    over: Any = None
    item: str = "item"
    name: str | None = None
    concurrency: int | None = None


class RunContext:
    """Per-run state: options, usage and the trace so far (kept for partial traces on failure)."""

    __slots__ = ("options", "trace", "usage")

    def __init__(self, options: RunOptions):
        self.options = options
        self.trace: list[StepTrace] = []
        self.usage = Usage()


#: How an adapter calls one module: ``(step, args, ctx, lm_calls) -> outputs``; it appends the LM calls
#: it makes to ``lm_calls`` (also when it fails) and adds their usage to ``ctx.usage``.
ModuleCall = Callable[[PlanStep, dict[str, Any], RunContext, list[LMCall]], Awaitable[dict[str, Any]]]


def plan(program: Program) -> list[PlanStep]:
    """The program's steps, ready to interpret."""
    steps: list[PlanStep] = []
    for index, step in enumerate(program.steps):
        if isinstance(step, ReturnStep):
            steps.append(PlanStep(index, "return", args=parse_value(step.return_)))
        elif isinstance(step, CallStep):
            steps.append(PlanStep(index, "call", step.call, program.modules[step.call].type,
                                  parse_value(step.with_), name=step.as_))
        else:
            steps.append(PlanStep(index, "map", step.map, program.modules[step.map].type, parse_value(step.with_),
                                  over=parse_value(step.over), item=step.item, name=step.as_,
                                  concurrency=step.concurrency))
    return steps


async def run_plan(program: Program, steps: list[PlanStep], inputs: dict[str, Any], options: RunOptions, *,
                   call: ModuleCall, backend: str, map_concurrency: int = DEFAULT_MAP_CONCURRENCY) -> RunResult:
    """Interpret ``steps`` with ``call`` and return the :class:`RunResult` (or raise a typed error)."""
    ctx = RunContext(options)
    start = time.perf_counter()
    try:
        if options.timeout is not None:
            async with asyncio.timeout(options.timeout):
                outputs = await _execute(steps, inputs, ctx, call, map_concurrency)
        else:
            outputs = await _execute(steps, inputs, ctx, call, map_concurrency)
    except TimeoutError:
        raise RunTimeoutError(f"run exceeded its timeout of {options.timeout}s", timeout=options.timeout,
                              trace=ctx.trace) from None
    return fast_construct(RunResult, {
        "outputs": outputs, "trace": ctx.trace, "usage": ctx.usage, "backend": backend,
        "program_hash": program.content_hash, "execution_id": options.execution_id,
        "duration_ms": (time.perf_counter() - start) * 1000, "attempts": options.attempt, "worker": None})


async def _execute(steps: list[PlanStep], inputs: dict[str, Any], ctx: RunContext, call: ModuleCall,
                   map_concurrency: int) -> dict[str, Any]:
    scope: dict[str, Any] = {"inputs": inputs}
    trace = ctx.trace
    for step in steps:
        if step.kind == "return":
            outputs: dict[str, Any] = resolve(step.args, scope)
            trace.append(_record(step=step.index, kind="return", inputs=outputs, outputs=outputs))
            return outputs
        began = time.perf_counter()
        calls: list[LMCall] = []
        children: list[StepTrace] = []
        args: dict[str, Any] = {}
        try:
            if step.kind == "call":
                args = resolve(step.args, scope)
                result: Any = await call(step, args, ctx, calls)
            else:
                args = {"over": resolve(step.over, scope)}
                result = await _map(step, args["over"], scope, ctx, children, call,
                                    step.concurrency or map_concurrency)
        except BaseException as exc:
            error = to_typed_error(exc) if not isinstance(exc, asyncio.CancelledError) else None
            trace.append(_record(
                step=step.index, kind=step.kind, module=step.module, module_type=step.module_type, inputs=args,
                lm_calls=calls, children=children, duration_ms=(time.perf_counter() - began) * 1000,
                error=error.to_dict() if error else {"type": "RunCancelledError", "message": "cancelled"}))
            if error is None or isinstance(exc, StepError):
                raise
            raise StepError(f"step {step.index} ({step.kind} {step.module!r}) failed: {error.message}",
                            step=step.index, module=step.module, cause=error, trace=trace) from exc
        trace.append(_record(
            step=step.index, kind=step.kind, module=step.module, module_type=step.module_type, inputs=args,
            outputs=result, lm_calls=calls, children=children, duration_ms=(time.perf_counter() - began) * 1000))
        if step.name is not None:
            scope[step.name] = result
    raise AssertionError("validated programs end with a return step")


async def _map(step: PlanStep, items: list[Any], scope: dict[str, Any], ctx: RunContext, children: list[StepTrace],
               call: ModuleCall, concurrency: int) -> list[Any]:
    limit = asyncio.Semaphore(concurrency)
    records: list[StepTrace | None] = [None] * len(items)

    async def one(position: int, element: Any) -> Any:
        async with limit:
            began = time.perf_counter()
            calls: list[LMCall] = []
            args = resolve(step.args, {**scope, step.item: element})
            out: Any = None
            error: dict[str, Any] | None = None
            try:
                out = await call(step, args, ctx, calls)
                return out
            except Exception as exc:
                error = to_typed_error(exc).to_dict()
                raise
            finally:
                records[position] = _record(
                    step=step.index, kind="call", module=step.module, module_type=step.module_type, inputs=args,
                    outputs=out, lm_calls=calls, duration_ms=(time.perf_counter() - began) * 1000, error=error)

    tasks = [asyncio.ensure_future(one(i, e)) for i, e in enumerate(items)]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        children.extend(r for r in records if r is not None)


def to_typed_error(exc: BaseException) -> StepbridgeError:
    """Our typed error as is; anything else wrapped with its type name (never the object itself)."""
    if isinstance(exc, StepbridgeError):
        return exc
    return StepbridgeError(f"{type(exc).__name__}: {exc}")


def _record(*, step: int, kind: str, module: str | None = None, module_type: str | None = None,
            inputs: Any = None, outputs: Any = None, lm_calls: list[LMCall] | None = None,
            children: list[StepTrace] | None = None, duration_ms: float = 0.0,
            error: dict[str, Any] | None = None) -> StepTrace:
    # every field given and no validation: this runs per step on the hot path
    return fast_construct(StepTrace, {
        "step": step, "kind": kind, "module": module, "module_type": module_type,
        "inputs": inputs if inputs is not None else {}, "outputs": outputs,
        "lm_calls": lm_calls if lm_calls is not None else [], "children": children if children is not None else [],
        "duration_ms": duration_ms, "error": error})
