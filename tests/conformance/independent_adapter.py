"""An adapter written from the public protocol only: the conformance suite's own control subject.

The suite is mutation-tested against this adapter (``mutants.py`` holds single-bug variants of it),
so it must not share code with the native executor: it has its own step loop, its own reference
resolution, its own ``map`` fan-out, its own HTTP client with its own retries, its own timeout
and trace records. What it takes from stepbridge is what any third-party adapter may take:

* the program model (:mod:`stepbridge.program`), results, errors and run options;
* DSPy's prompt format and reply parsing, :class:`stepbridge.formats.Prompt` (public: formatting
  DSPy's ChatAdapter/JSONAdapter byte for byte is not something an adapter author re-derives);
* the operator's LM profiles (:func:`stepbridge.lm.load_profiles` / :func:`resolve_profile`),
  the tool registry and the built-in retriever by name.

Format 2 (``control_flow``, ``parallel``, ``agents``, ``ensembles``, ``typed_objects``, ``xml_adapter``)
has its own step walk here too (``if``/``switch``/``loop``/``parallel``/``set``, ``return`` anywhere),
trace records and errors. For it the adapter also takes what a program file's language defines:
the value language (:mod:`stepbridge.values`: references and the closed set of operations) and
DSPy's agent and ensemble prompt pieces (:mod:`stepbridge.react`, :mod:`stepbridge.ensembles`).

Every hook a mutant breaks is a small method (``lm_config``, ``request_body``, ``send``, ``parse``,
``run_map``, ``branch``, ``loop_passes``, ``bind_parallel``, ``observation``, ``attempt_wins``...), so
each mutant overrides exactly one promise.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from stepbridge import ensembles, operations, react
from stepbridge.adapter import RunOptions
from stepbridge.errors import (
    LMError,
    LMParseError,
    OperationError,
    RunTimeoutError,
    StepbridgeError,
    StepError,
    UnsupportedCapabilityError,
)
from stepbridge.formats import Prompt, chain_of_thought
from stepbridge.interface import module_interface
from stepbridge.lm import LMProfile, load_profiles, resolve_profile
from stepbridge.program import (
    BestOfNModule,
    CallStep,
    ChainOfThoughtModule,
    IfStep,
    LMConfig,
    LoopStep,
    MapStep,
    MultiChainComparisonModule,
    ParallelStep,
    PredictModule,
    Program,
    ReactModule,
    RefineModule,
    RetrieveModule,
    ReturnStep,
    SetStep,
    SwitchStep,
    ToolModule,
)
from stepbridge.registry import metrics, tools
from stepbridge.result import LMCall, RunResult, StepTrace, Usage
from stepbridge.signature import Signature
from stepbridge.values import compile_args, compile_value, parse_value

__all__ = ["IndependentAdapter", "make_adapter"]

_RETRIABLE = frozenset({408, 409, 429, 500, 502, 503, 504})


class _Plan:
    """What ``prepare`` builds once per program content and folder: prompts, retrievers, tools, and (format 2)
    compiled values by JSON pointer."""

    def __init__(self) -> None:
        self.prompts: dict[Any, Prompt] = {}
        self.retrievers: dict[str, Any] = {}
        self.tools: dict[str, Any] = {}
        self.values: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self.agent_tools: dict[str, dict[str, react.ToolSpec]] = {}


@dataclass
class _Attempt:
    """What an ensemble changes for the LM calls of one attempt (DSPy: a temperature and rollout id set on the
    module's predictors, Refine's hints, ``settings.trace``)."""

    temperature: float | None = None
    hints: Mapping[str, str] | None = None
    trace: list[tuple[str, dict[str, Any], dict[str, Any]]] | None = None


#: the attempt whose LM calls are being made (None outside ensembles); a context variable follows the tasks
_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("independent_attempt", default=None)


class _Run:
    """Everything one run owns (nothing of it lives on the adapter)."""

    def __init__(self, program: Program, options: RunOptions, plan: _Plan):
        self.program = program
        self.options = options
        self.plan = plan
        self.trace: list[StepTrace] = []
        self.usage = Usage()


class IndependentAdapter:
    """Predict, chain_of_thought, retrieve, tool, react, best_of_n, refine and multi_chain_comparison modules;
    every step kind of formats 1 and 2; chat, JSON and XML."""

    name = "independent"
    version = "1.1.0"
    capabilities = frozenset({"async", "batch", "map", "retrieve", "tools", "json_adapter", "lm_trace", "timeout",
                              "cancel", "rehydrate", "control_flow", "parallel", "agents", "ensembles",
                              "typed_objects", "xml_adapter"})

    #: map elements in flight at once when the step does not say
    map_concurrency = 16

    def __init__(self) -> None:
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._clients: dict[tuple[str, int], httpx.AsyncClient] = {}
        self._profiles: dict[str, LMProfile] | None = None

    # ==============================================================================================
    # the protocol
    # ==============================================================================================
    async def prepare(self, program: Program) -> None:
        self.plan_for(program)

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        plan = self.plan_for(program)
        state = _Run(program, options, plan)
        began = time.perf_counter()
        try:
            async with asyncio.timeout(options.timeout):
                outputs = await self.execute(state, inputs)
        except TimeoutError:
            raise RunTimeoutError(f"the run took longer than its timeout ({options.timeout}s)",
                                  timeout=options.timeout, trace=state.trace) from None
        return RunResult(outputs=outputs, trace=state.trace, usage=state.usage, backend=self.name,
                         program_hash=program.content_hash, execution_id=options.execution_id,
                         duration_ms=(time.perf_counter() - began) * 1000, attempts=options.attempt)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    # ==============================================================================================
    # preparing
    # ==============================================================================================
    def plan_key(self, program: Program) -> tuple[str, str]:
        return program.content_hash, str(program.base_dir)

    def plan_for(self, program: Program) -> _Plan:
        missing = program.required_capabilities - self.capabilities
        if missing:
            capability = sorted(missing)[0]
            raise UnsupportedCapabilityError(f"adapter {self.name!r} cannot run {capability!r} programs",
                                             capability=capability, adapter=self.name)
        key = self.plan_key(program)
        plan = self._plans.get(key)
        if plan is None:
            plan = _Plan()
            for name, module in program.modules.items():
                if isinstance(module, RetrieveModule):
                    from stepbridge.retrieve import make_retriever

                    plan.retrievers[name] = make_retriever(module.retriever, program.base_dir)
                elif isinstance(module, ToolModule):
                    plan.tools[name] = tools.get(module.tool)
                elif isinstance(module, ReactModule):
                    specs = {t: react.tool_spec(t, tools.get(t).func) for t in module.tools}
                    specs[react.FINISH] = react.finish_tool(module.effective_signature)
                    plan.agent_tools[name] = specs
            self._plans[key] = plan
        return plan

    def prompt(self, state: _Run, name: str, mode: str) -> Prompt:
        key = (name, mode)
        prompt = state.plan.prompts.get(key)
        if prompt is None:
            module = state.program.modules[name]
            assert isinstance(module, PredictModule | ChainOfThoughtModule)
            signature = module.signature
            if module.instructions is not None:
                signature = signature.with_instructions(module.instructions)
            if isinstance(module, ChainOfThoughtModule):
                signature = chain_of_thought(signature)
            prompt = state.plan.prompts[key] = Prompt(signature, module.demos, _mode(mode), self.types(state))
        return prompt

    @staticmethod
    def types(state: _Run) -> Any:
        """The program's declared object types and enums (None when it declares none)."""
        return state.program.type_space if state.program.types else None

    def signature_prompt(self, state: _Run, key: Any, signature: Signature, mode: str) -> Prompt:
        """The prompt of a predictor that is not a module of the file (an agent's, an ensemble's)."""
        prompt = state.plan.prompts.get((key, mode))
        if prompt is None:
            prompt = state.plan.prompts[(key, mode)] = Prompt(signature, (), _mode(mode))
        return prompt

    # ==============================================================================================
    # the step loop
    # ==============================================================================================
    def new_scope(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The names a run's references see: its inputs, then each step's ``as`` result."""
        return {"inputs": inputs}

    async def execute(self, state: _Run, inputs: dict[str, Any]) -> dict[str, Any]:
        if state.program.stepbridge >= 2:
            scope = self.new_scope(inputs)
            scope[operations.WORK_KEY] = [operations.MAX_WORK]
            returned = await self.walk(state, state.program.steps, scope, "/steps", None, ())
            if returned is None:
                raise StepbridgeError("the program ended without a return step")
            return returned
        scope = self.new_scope(inputs)
        for index, step in enumerate(state.program.steps):
            if isinstance(step, ReturnStep):
                outputs = self.outputs_of(state.program, self.resolve(step.return_, scope))
                state.trace.append(StepTrace(step=index, kind="return", inputs=outputs, outputs=outputs))
                return outputs
            record = StepTrace(step=index, kind="call" if isinstance(step, CallStep) else "map",
                               module=step.call if isinstance(step, CallStep) else step.map)
            record.module_type = state.program.modules[record.module or ""].type
            began = time.perf_counter()
            try:
                if isinstance(step, CallStep):
                    record.inputs = self.resolve(step.with_, scope)
                    result: Any = await self.call_module(state, step.call, record.inputs, record.lm_calls)
                else:
                    assert isinstance(step, MapStep)
                    items = self.resolve(step.over, scope)
                    record.inputs = {"over": items}
                    result = await self.run_map(state, index, step, items, scope, record.children)
            except asyncio.CancelledError:
                record.error = {"type": "RunCancelledError", "message": "cancelled"}
                state.trace.append(record)
                raise
            except Exception as exc:
                cause = self.typed(exc)
                record.error = cause.to_dict()
                record.duration_ms = (time.perf_counter() - began) * 1000
                state.trace.append(record)
                raise self.step_error(index, record.module, cause, state.trace) from exc
            record.outputs = result
            record.duration_ms = (time.perf_counter() - began) * 1000
            state.trace.append(record)
            name = step.as_
            if name is not None:
                scope[name] = result
        raise StepbridgeError("the program has no return step")

    def step_error(self, index: int, module: str | None, cause: StepbridgeError, trace: list[StepTrace]) -> StepError:
        return StepError(f"step {index} ({module}) failed: {cause.message}", step=index, module=module, cause=cause,
                         trace=trace)

    @staticmethod
    def typed(exc: BaseException) -> StepbridgeError:
        if isinstance(exc, StepbridgeError):
            return exc
        return StepbridgeError(f"{type(exc).__name__}: {exc}")

    def outputs_of(self, program: Program, returned: dict[str, Any]) -> dict[str, Any]:
        """The program's outputs: the return step's values, by name."""
        return {name: returned[name] for name in program.signature.outputs}

    def input_value(self, value: Any) -> Any:
        """How an input value enters the scope (as given)."""
        return value

    def resolve(self, value: Any, scope: dict[str, Any]) -> Any:
        """``$inputs.x`` / ``$name.field`` / ``$item`` references; ``$$`` escapes a dollar."""
        if isinstance(value, str):
            if value.startswith("$$"):
                return value[1:]
            if not value.startswith("$"):
                return value
            source, _, field = value[1:].partition(".")
            found = scope[source]
            if source == "inputs":
                return self.input_value(found[field]) if field else found
            if not field:
                return found
            if isinstance(found, list):
                return [element[field] for element in found]
            return found[field]
        if isinstance(value, list):
            return [self.resolve(v, scope) for v in value]
        if isinstance(value, dict):
            return {k: self.resolve(v, scope) for k, v in value.items()}
        return value

    # ==============================================================================================
    # format 2: the step walk
    # ==============================================================================================
    def value(self, state: _Run, raw: Any, pointer: str, mapping: bool = False) -> Callable[[dict[str, Any]], Any]:
        """A format-2 value (``with``/``return``/``set`` mappings, conditions, ``over``), compiled once per plan."""
        getter = state.plan.values.get(pointer)
        if getter is None:
            parsed = parse_value(raw, version=2, pointer=pointer)
            getter = compile_args(parsed, pointer) if mapping else compile_value(parsed, pointer)
            state.plan.values[pointer] = getter
        return getter

    async def walk(self, state: _Run, steps: list[Any], scope: dict[str, Any], prefix: str, top: int | None,
                   passes: tuple[int, ...]) -> dict[str, Any] | None:
        """Run a list of steps; the program outputs when a ``return`` ran, else None."""
        for i, step in enumerate(steps):
            index = i if top is None else top
            pointer = f"{prefix}/{i}"
            if isinstance(step, ReturnStep):
                returned = self.evaluate(state, step.return_, f"{pointer}/return", scope, index, "return", pointer,
                                         passes, mapping=True)
                outputs = self.outputs_of(state.program, returned)
                state.trace.append(StepTrace(step=index, kind="return", inputs=outputs, outputs=outputs,
                                             pointer=pointer, passes=list(passes)))
                return outputs
            if isinstance(step, SetStep):
                values = self.assign(state, step, scope, index, pointer, passes)
                state.trace.append(StepTrace(step=index, kind="set", outputs=values, pointer=pointer,
                                             passes=list(passes)))
                continue
            if isinstance(step, CallStep | MapStep):
                await self.module_step(state, step, scope, index, pointer, passes)
                continue
            returned = await self.control(state, step, scope, index, pointer, passes)
            if returned is not None:
                return returned
        return None

    def assign(self, state: _Run, step: SetStep, scope: dict[str, Any], index: int, pointer: str,
               passes: tuple[int, ...]) -> dict[str, Any]:
        """A ``set``: every value computed first, then all bound (``{a: $b, b: $a}`` swaps)."""
        values: dict[str, Any] = self.evaluate(state, step.set, f"{pointer}/set", scope, index, "set", pointer,
                                               passes, mapping=True)
        scope.update(values)
        return values

    def evaluate(self, state: _Run, raw: Any, at: str, scope: dict[str, Any], index: int, kind: str, pointer: str,
                 passes: tuple[int, ...], *, mapping: bool = False, record: StepTrace | None = None) -> Any:
        """A value of a step; when it cannot be computed, the step fails (its record says why)."""
        try:
            return self.value(state, raw, at, mapping)(scope)
        except Exception as exc:
            cause = self.typed(exc)
            if record is None:
                state.trace.append(StepTrace(step=index, kind=kind, error=cause.to_dict(), pointer=pointer,
                                             passes=list(passes)))
            else:
                record.error = cause.to_dict()
            raise self.step_failure(index, None, kind, pointer, cause, state.trace) from exc

    def step_failure(self, index: int, module: str | None, kind: str, pointer: str, cause: StepbridgeError,
                     trace: list[StepTrace]) -> StepError:
        what = f"{kind} {module!r}" if module else kind
        return StepError(f"step {pointer} ({what}) failed: {cause.message}", step=index, module=module, cause=cause,
                         pointer=pointer, trace=trace)

    async def module_step(self, state: _Run, step: CallStep | MapStep, scope: dict[str, Any], index: int,
                          pointer: str, passes: tuple[int, ...]) -> None:
        module = step.call if isinstance(step, CallStep) else step.map
        record = StepTrace(step=index, kind="call" if isinstance(step, CallStep) else "map", module=module,
                           module_type=state.program.modules[module].type, pointer=pointer, passes=list(passes))
        began = time.perf_counter()
        try:
            if isinstance(step, CallStep):
                record.inputs = self.value(state, step.with_, f"{pointer}/with", True)(scope)
                result: Any = await self.call_module(state, module, record.inputs, record.lm_calls)
            else:
                items = self.value(state, step.over, f"{pointer}/over")(scope)
                record.inputs = {"over": items}
                if not isinstance(items, list):
                    raise OperationError(f"{pointer}/over: 'over' is {type(items).__name__}, not a list",
                                         pointer=f"{pointer}/over")
                result = await self.map_elements(state, index, pointer, passes, step, items, scope, record.children)
        except asyncio.CancelledError:
            record.error = {"type": "RunCancelledError", "message": "cancelled"}
            state.trace.append(record)
            raise
        except Exception as exc:
            cause = self.typed(exc)
            record.error = cause.to_dict()
            record.duration_ms = (time.perf_counter() - began) * 1000
            state.trace.append(record)
            raise self.step_failure(index, module, record.kind, pointer, cause, state.trace) from exc
        record.outputs = result
        record.duration_ms = (time.perf_counter() - began) * 1000
        state.trace.append(record)
        if step.as_ is not None:
            scope[step.as_] = result

    async def map_elements(self, state: _Run, index: int, pointer: str, passes: tuple[int, ...], step: MapStep,
                           items: list[Any], scope: dict[str, Any], children: list[StepTrace]) -> list[Any]:
        limit = asyncio.Semaphore(step.concurrency or self.map_concurrency)
        records: list[StepTrace | None] = [None] * len(items)
        getter = self.value(state, step.with_, f"{pointer}/with", True)

        async def element(position: int, item: Any) -> dict[str, Any]:
            async with limit:
                record = records[position] = StepTrace(step=index, kind="call", module=step.map, pointer=pointer,
                                                       module_type=state.program.modules[step.map].type,
                                                       passes=list(passes))
                try:
                    record.inputs = getter({**scope, step.item: item})
                    record.outputs = await self.call_module(state, step.map, record.inputs, record.lm_calls)
                    return record.outputs
                except Exception as exc:
                    record.error = self.typed(exc).to_dict()
                    raise

        try:
            return await _all_or_nothing([element(i, item) for i, item in enumerate(items)])
        finally:
            children.extend(r for r in records if r is not None)

    async def control(self, state: _Run, step: Any, scope: dict[str, Any], index: int, pointer: str,
                      passes: tuple[int, ...]) -> dict[str, Any] | None:
        """``if``, ``switch``, ``loop`` and ``parallel``: recorded when they start (the steps they run follow)."""
        kind = {IfStep: "if", SwitchStep: "switch", LoopStep: "loop", ParallelStep: "parallel"}[type(step)]
        record = StepTrace(step=index, kind=kind, pointer=pointer, passes=list(passes))
        state.trace.append(record)
        outputs: dict[str, Any] = {}
        try:
            if isinstance(step, IfStep | SwitchStep):
                chosen = self.branch(state, step, scope, index, pointer, passes, record, outputs)
                if chosen is None:
                    return None
                steps, at = chosen
                return await self.walk(state, steps, scope, at, index, passes)
            if isinstance(step, LoopStep):
                return await self.loop(state, step, scope, index, pointer, passes, record, outputs)
            await self.parallel(state, step, scope, index, pointer, passes, record, outputs)
            return None
        except BaseException as exc:
            if record.error is None:  # a step inside failed: the enclosing record says why too
                if isinstance(exc, asyncio.CancelledError):
                    record.error = {"type": "RunCancelledError", "message": "cancelled"}
                else:
                    cause = exc.cause if isinstance(exc, StepError) and exc.cause is not None else self.typed(exc)
                    record.error = cause.to_dict()
            raise
        finally:
            record.outputs = outputs

    def branch(self, state: _Run, step: IfStep | SwitchStep, scope: dict[str, Any], index: int, pointer: str,
               passes: tuple[int, ...], record: StepTrace, outputs: dict[str, Any]) -> tuple[list[Any], str] | None:
        """The steps an ``if``/``switch`` runs (and their pointer), or None; says which in ``outputs``."""
        if isinstance(step, IfStep):
            condition = self.evaluate(state, step.if_, f"{pointer}/if", scope, index, "if", pointer, passes,
                                      record=record)
            record.inputs = {"condition": condition}
            if self.holds(condition):
                outputs["branch"] = "then"
                return step.then, f"{pointer}/then"
            outputs["branch"] = "else" if step.else_ is not None else None
            return (step.else_, f"{pointer}/else") if step.else_ is not None else None
        value = self.evaluate(state, step.switch, f"{pointer}/switch", scope, index, "switch", pointer, passes,
                              record=record)
        record.inputs = {"value": value}
        for number, case in enumerate(step.cases):
            if any(operations.json_equal(value, parse_value(w, version=2)) for w in self.case_literals(case.when)):
                outputs["case"] = number
                return case.steps, f"{pointer}/cases/{number}/steps"
        outputs["case"] = "default" if step.default is not None else None
        return (step.default, f"{pointer}/default") if step.default is not None else None

    @staticmethod
    def holds(condition: Any) -> bool:
        """Whether an ``if`` takes ``then``: the condition's truthiness (false, null, 0, "", [] and {} are false)."""
        return operations.truthy(condition)

    @staticmethod
    def case_literals(when: Any) -> list[Any]:
        """The literals a ``switch`` case matches (a list: any of them)."""
        return list(when) if isinstance(when, list) else [when]

    @staticmethod
    def until_of(spec: Any) -> Any:
        """The condition checked after each pass of a loop (None: none)."""
        return spec.until

    async def loop(self, state: _Run, step: LoopStep, scope: dict[str, Any], index: int, pointer: str,
                   passes: tuple[int, ...], record: StepTrace, outputs: dict[str, Any]) -> dict[str, Any] | None:
        spec = step.loop
        items: list[Any] | None = None
        if spec.over is not None:
            items = self.evaluate(state, spec.over, f"{pointer}/loop/over", scope, index, "loop", pointer, passes,
                                  record=record)
            record.inputs = {"over": items}
            problem = self.over_problem(spec, items)
            if problem is not None:
                cause = OperationError(f"{pointer}/loop/over: {problem}", pointer=f"{pointer}/loop/over")
                record.error = cause.to_dict()
                raise self.step_failure(index, None, "loop", pointer, cause, state.trace)
        outputs["passes"] = 0
        try:
            for number in self.loop_passes(spec, items):
                if items is not None:
                    scope[spec.item] = items[number]
                if spec.index is not None:
                    scope[spec.index] = number
                returned = await self.walk(state, spec.steps, scope, f"{pointer}/loop/steps", index,
                                           (*passes, number))
                outputs["passes"] += 1
                if returned is not None:
                    return returned
                until = self.until_of(spec)
                if until is not None and operations.truthy(self.evaluate(
                        state, until, f"{pointer}/loop/until", scope, index, "loop", pointer, passes,
                        record=record)):
                    outputs["stopped"] = "until"
                    return None
                await asyncio.sleep(0)  # a loop of pure steps still sees timeouts and cancellation
            return None
        finally:
            for name in (spec.item if items is not None else None, spec.index):
                if name is not None:
                    scope.pop(name, None)

    @staticmethod
    def over_problem(spec: Any, items: Any) -> str | None:
        """Why a loop cannot run over ``items`` (not a list, or more elements than its ``max``), or None."""
        if not isinstance(items, list):
            return f"'over' is {type(items).__name__}, not a list"
        if len(items) > spec.max:
            return f"'over' has {len(items):,} elements, more than the loop's max of {spec.max:,}"
        return None

    def loop_passes(self, spec: Any, items: list[Any] | None) -> range:
        """The pass numbers a loop may make: one per element of ``over``, else up to ``max``."""
        return range(len(items) if items is not None else spec.max)

    async def parallel(self, state: _Run, step: ParallelStep, scope: dict[str, Any], index: int, pointer: str,
                       passes: tuple[int, ...], record: StepTrace, outputs: dict[str, Any]) -> None:
        records: list[StepTrace | None] = [None] * len(step.parallel)
        finished: list[int] = []

        async def one(position: int, call: CallStep) -> dict[str, Any]:
            at = f"{pointer}/parallel/{position}"
            child = records[position] = StepTrace(step=index, kind="call", module=call.call, pointer=at,
                                                  module_type=state.program.modules[call.call].type,
                                                  passes=list(passes))
            try:
                child.inputs = self.value(state, call.with_, f"{at}/with", True)(scope)
                child.outputs = await self.call_module(state, call.call, child.inputs, child.lm_calls)
                finished.append(position)
                return child.outputs
            except asyncio.CancelledError:
                child.error = {"type": "RunCancelledError", "message": "cancelled"}
                raise
            except Exception as exc:
                cause = self.typed(exc)
                child.error = cause.to_dict()
                raise self.step_failure(index, call.call, "call", at, cause, state.trace) from exc

        try:
            results = await self.gather_calls([one(i, c) for i, c in enumerate(step.parallel)])
        finally:
            record.children = [r for r in records if r is not None]
        self.bind_parallel(step, results, finished, scope)
        outputs["calls"] = len(results)

    async def gather_calls(self, calls: list[Any]) -> list[Any]:
        """A parallel step's calls at once; the first failure cancels the others."""
        return await _all_or_nothing(calls)

    def bind_parallel(self, step: ParallelStep, results: list[Any], finished: list[int], scope: dict[str, Any]) -> None:
        """Each call's result under its ``as`` (``finished``: the calls in the order they finished)."""
        for call, result in zip(step.parallel, results, strict=True):
            if call.as_ is not None:
                scope[call.as_] = result

    # ==============================================================================================
    # map
    # ==============================================================================================
    async def run_map(self, state: _Run, index: int, step: MapStep, items: list[Any], scope: dict[str, Any],
                      children: list[StepTrace]) -> list[Any]:
        limit = asyncio.Semaphore(step.concurrency or self.map_concurrency)
        records: list[StepTrace | None] = [None] * len(items)

        async def element(position: int, item: Any) -> dict[str, Any]:
            async with limit:
                record = StepTrace(step=index, kind="call", module=step.map,
                                   module_type=state.program.modules[step.map].type)
                records[position] = record
                began = time.perf_counter()
                try:
                    record.inputs = self.resolve(step.with_, {**scope, step.item: item})
                    record.outputs = await self.call_module(state, step.map, record.inputs, record.lm_calls)
                    return record.outputs
                except Exception as exc:
                    record.error = self.typed(exc).to_dict()
                    raise
                finally:
                    record.duration_ms = (time.perf_counter() - began) * 1000

        tasks = [asyncio.ensure_future(element(i, item)) for i, item in enumerate(items)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            children.extend(r for r in records if r is not None)

    # ==============================================================================================
    # modules
    # ==============================================================================================
    async def call_module(self, state: _Run, name: str, args: dict[str, Any], calls: list[LMCall]) -> dict[str, Any]:
        module = state.program.modules[name]
        if isinstance(module, RetrieveModule):
            hits = state.plan.retrievers[name].search(str(args["query"]), module.k)
            return {"passages": list(hits.passages), "ids": list(hits.ids), "scores": list(hits.scores)}
        if isinstance(module, ToolModule):
            return await self.call_tool(state, name, module, args)
        if isinstance(module, ReactModule):
            return _json_outputs(await self.agent(state, name, module, args, calls))
        if isinstance(module, MultiChainComparisonModule):
            ensembles.check_completions(args.get("completions"), list(module.effective_signature.outputs)[-1],
                                        module.m)
            return _json_outputs(await self.compare(state, name, module, args, calls))
        if isinstance(module, BestOfNModule | RefineModule):
            inner = state.program.modules[module.module]
            if isinstance(inner, MultiChainComparisonModule):
                ensembles.check_completions(args.get("completions"), list(inner.effective_signature.outputs)[-1],
                                            inner.m)
            return _json_outputs(await self.ensemble(state, name, module, args, calls))
        assert isinstance(module, PredictModule | ChainOfThoughtModule)
        return await self.predict(state, name, module, args, calls)

    async def call_tool(self, state: _Run, name: str, module: ToolModule, args: dict[str, Any]) -> dict[str, Any]:
        tool = state.plan.tools[name]
        if tool.is_async:
            value = await tool.func(**args)
        else:
            value = await asyncio.to_thread(tool.func, **args)
        outputs = list((module.signature or tool.signature).outputs)
        if isinstance(value, dict) and set(outputs) <= set(value):
            return {k: value[k] for k in outputs}
        if len(outputs) == 1:
            return {outputs[0]: value}
        raise TypeError(f"tool {module.tool!r} returned {type(value).__name__}, not the fields {outputs}")

    def lm_config(self, program: Program, module: PredictModule | ChainOfThoughtModule,
                  options: RunOptions) -> LMConfig:
        """Program defaults < the module's settings < the run's override."""
        config = program.lm or LMConfig()
        for override in (module.lm, options.lm):
            if override is not None:
                config = config.model_copy(update=override.model_dump(exclude_none=True))
        return config

    async def predict(self, state: _Run, name: str, module: PredictModule | ChainOfThoughtModule,
                      args: dict[str, Any], calls: list[LMCall]) -> dict[str, Any]:
        config = self.lm_config(state.program, module, state.options)
        predictor = "predict" if isinstance(module, ChainOfThoughtModule) else "self"
        return await self.ask(state, config, lambda mode: self.prompt(state, name, mode), args, calls, predictor)

    async def ask(self, state: _Run, config: LMConfig, prompt_of: Callable[[str], Prompt], args: dict[str, Any],
                  calls: list[LMCall], predictor: str, own_temperature: float | None = None) -> dict[str, Any]:
        """One predictor call (``dspy.Predict``): the prompt in the module's format, the JSON-format retry, and
        what an ensemble attempt changes (its temperature, Refine's hint, the attempt's trace)."""
        attempt = _ATTEMPT.get()
        temperature = own_temperature if own_temperature is not None else (attempt.temperature if attempt else None)
        if temperature is not None:
            config = config.model_copy(update={"temperature": temperature})
        mode = config.adapter or "chat"
        prompt = prompt_of(mode)
        hinted = attempt is not None and attempt.hints is not None
        if hinted:
            assert attempt is not None and attempt.hints is not None
            args = {**args, ensembles.HINT_FIELD: attempt.hints.get(predictor, "N/A")}
            prompt = Prompt(ensembles.add_hint(prompt.signature), prompt.demos, prompt.adapter, prompt.types)
        try:
            outputs = await self.complete(state, prompt, args, config, calls)
        except LMParseError:
            if mode == "json":
                raise
            # DSPy's ChatAdapter (and XMLAdapter) asks once more in the JSON format when a reply does not parse
            fallback = prompt.fallback() if hinted else prompt_of("json")
            assert fallback is not None
            outputs = await self.complete(state, fallback, args, config, calls)
        if attempt is not None and attempt.trace is not None:
            attempt.trace.append((predictor, dict(args), dict(outputs)))
        return outputs

    # ==============================================================================================
    # format 2: agents and ensembles, as DSPy 3.4.1 runs them
    # ==============================================================================================
    async def agent(self, state: _Run, name: str, module: ReactModule, args: dict[str, Any],
                    calls: list[LMCall]) -> dict[str, Any]:
        """``dspy.ReAct``: choose a tool, call it, observe; until ``finish`` or ``max_iters``; then extract."""
        signature = module.effective_signature
        specs = state.plan.agent_tools[name]
        config = self.lm_config(state.program, module, state.options)
        step_signature = react.react_signature(signature, [s for t, s in specs.items() if t != react.FINISH])
        extract_signature = react.extract_signature(signature)
        trajectory: dict[str, Any] = {}

        def call(key: str, sig: Signature, predictor: str) -> Any:
            mode = config.adapter or "chat"
            return self.ask(state, config, lambda m: self.signature_prompt(state, (name, key), sig, m),
                            {**args, "trajectory": react.format_trajectory(trajectory, mode)}, calls, predictor)

        for idx in range(self.agent_steps(module)):
            chosen = await call("react", step_signature, "react")
            tool_name, tool_args = chosen["next_tool_name"], chosen["next_tool_args"]
            trajectory[f"thought_{idx}"] = chosen["next_thought"]
            trajectory[f"tool_name_{idx}"] = tool_name
            trajectory[f"tool_args_{idx}"] = tool_args
            trajectory[f"observation_{idx}"] = await self.observation(specs, tool_name, tool_args)
            if tool_name == react.FINISH:
                break
        extracted = await call("extract", extract_signature, "extract.predict")
        return {"trajectory": trajectory, **extracted}

    @staticmethod
    def agent_steps(module: ReactModule) -> int:
        """The most tool calls an agent makes before it extracts (the module's ``max_iters``)."""
        return module.max_iters

    async def observation(self, specs: dict[str, react.ToolSpec], tool_name: str, tool_args: Any) -> Any:
        """What the agent observes: the tool's result, or the error text when the tool failed (the agent goes on)."""
        try:
            return await specs[tool_name].acall(tool_args)
        except Exception as exc:
            return react.tool_error_text(tool_name, exc)

    async def compare(self, state: _Run, name: str, module: MultiChainComparisonModule, args: dict[str, Any],
                      calls: list[LMCall]) -> dict[str, Any]:
        """``dspy.MultiChainComparison``: one call over ``m`` reasoning attempts, at its own temperature."""
        signature = module.effective_signature
        attempts = ensembles.mcc_attempts(args["completions"], list(signature.outputs)[-1], module.m)
        own = module.lm.temperature if module.lm is not None else None
        compare_signature = ensembles.mcc_signature(signature, module.m)
        rest = {k: v for k, v in args.items() if k != "completions"}
        return await self.ask(state, self.lm_config(state.program, module, state.options),
                              lambda m: self.signature_prompt(state, (name, "compare"), compare_signature, m),
                              {**attempts, **rest}, calls, "predict",
                              own_temperature=own if own is not None else ensembles.MCC_DEFAULT_TEMPERATURE)

    async def ensemble(self, state: _Run, name: str, module: BestOfNModule | RefineModule, args: dict[str, Any],
                       calls: list[LMCall]) -> dict[str, Any]:
        """``dspy.BestOfN`` / ``dspy.Refine``: up to ``n`` attempts at temperature 1.0, the best reward kept."""
        fail_count = module.fail_count or module.n
        best: dict[str, Any] | None = None
        best_reward: Any = -math.inf
        hints: dict[str, str] | None = None
        for idx in range(module.n):
            attempt = _Attempt(temperature=1.0, hints=hints, trace=[])
            token = _ATTEMPT.set(attempt)
            try:
                outputs = await self.call_module(state, module.module, args, calls)
            except asyncio.CancelledError:
                raise
            except Exception:
                if idx > fail_count:
                    raise
                fail_count -= 1
                continue
            finally:
                _ATTEMPT.reset(token)
            try:
                reward = await self.reward(state, module, args, outputs, calls)
            except Exception:
                if idx > fail_count:
                    raise
                fail_count -= 1
                continue
            if reward > best_reward:
                best_reward, best = reward, outputs
            if self.attempt_wins(reward, module.threshold):
                break
            if isinstance(module, BestOfNModule) or idx == module.n - 1:
                continue
            try:
                hints = await self.advice(state, module, args, outputs, attempt.trace or [], reward, calls)
            except Exception:
                if idx > fail_count:
                    raise
                fail_count -= 1
        if best is None:
            raise ensembles.no_prediction(module.type, name, module.n)
        return best

    def attempt_wins(self, reward: Any, threshold: float) -> bool:
        """An attempt reaching the threshold ends the ensemble."""
        return bool(reward >= threshold)

    async def reward(self, state: _Run, module: BestOfNModule | RefineModule, args: dict[str, Any],
                     outputs: dict[str, Any], calls: list[LMCall]) -> Any:
        """A registered metric of (inputs, prediction), or a judge module's numeric output."""
        spec = module.reward
        if spec.metric is not None:
            metric = metrics.get(spec.metric)
            example, prediction = dict(args), _json_outputs(outputs)
            if inspect.iscoroutinefunction(metric):
                return await metric(example, prediction)
            return await asyncio.to_thread(metric, example, prediction)
        assert spec.module is not None and spec.field is not None
        judge = module_interface(state.program.modules[spec.module], state.program.modules)
        available = {**args, **outputs}
        judge_args = {k: available[k] for k in (judge.inputs if judge is not None else ()) if k in available}
        judged = await self.call_module(state, spec.module, judge_args, calls)
        return judged[spec.field]

    async def advice(self, state: _Run, module: RefineModule, args: dict[str, Any], outputs: dict[str, Any],
                     trace: list[tuple[str, dict[str, Any], dict[str, Any]]], reward: Any,
                     calls: list[LMCall]) -> dict[str, str]:
        """Refine's advice for the next attempt, per predictor of the module it refines."""
        inner = state.program.modules[module.module]
        named = list(zip(ensembles.predictor_names(inner.type), self.predictor_signatures(state, module.module),
                         strict=True))
        inputs = ensembles.feedback_inputs(
            program_code=ensembles.dspy_source(inner.type), modules_defn=ensembles.describe_modules(named),
            program_inputs=args, trace=trace, program_outputs=outputs,
            reward_code=ensembles.reward_source(module.reward, state.program), threshold=module.threshold,
            reward=reward, module_names=[n for n, _ in named])
        feedback = ensembles.feedback_signature()
        result = await self.ask(state, self.lm_config(state.program, inner, state.options),
                                lambda m: self.signature_prompt(state, (module.module, "feedback"), feedback, m),
                                inputs, calls, "self")
        advice: dict[str, str] = result["advice"]
        return advice

    def predictor_signatures(self, state: _Run, name: str) -> list[Signature]:
        """The signatures of a module's predictors, in ``named_predictors()`` order."""
        module = state.program.modules[name]
        if isinstance(module, ChainOfThoughtModule):
            return [chain_of_thought(module.effective_signature)]
        if isinstance(module, ReactModule):
            specs = [s for t, s in state.plan.agent_tools[name].items() if t != react.FINISH]
            return [react.react_signature(module.effective_signature, specs),
                    react.extract_signature(module.effective_signature)]
        if isinstance(module, MultiChainComparisonModule):
            return [ensembles.mcc_signature(module.effective_signature, module.m)]
        return [module.effective_signature]

    async def complete(self, state: _Run, prompt: Prompt, args: dict[str, Any], config: LMConfig,
                       calls: list[LMCall]) -> dict[str, Any]:
        profile, model = self.endpoint(config)
        messages = prompt.messages(args)
        body = self.request_body(prompt, messages, config, profile, model)
        answered: list[tuple[LMCall, str]] = []
        for _ in range(config.n or 1):  # n completions: one request each, one after the other (as DSPy's engine)
            call = LMCall(model=model, messages=messages)
            calls.append(call)
            began = time.perf_counter()
            try:
                reply = await self.send(profile, body)
            except LMError as exc:
                call.error = exc.to_dict()
                call.latency_ms = (time.perf_counter() - began) * 1000
                raise
            call.latency_ms = (time.perf_counter() - began) * 1000
            text, usage = self.reply_of(reply)
            call.response = text
            call.usage = usage
            self.count_usage(state, usage)
            answered.append((call, text))
        first: dict[str, Any] | None = None
        for call, text in answered:  # every completion is parsed; the outputs are the first one's
            try:
                parsed = self.parse(prompt, text)
            except LMParseError as exc:
                call.error = exc.to_dict()
                raise
            if first is None:
                first = parsed
        assert first is not None
        return first

    def count_usage(self, state: _Run, usage: dict[str, Any]) -> None:
        state.usage.add(usage)
        state.usage.lm_calls += 1

    def parse(self, prompt: Prompt, text: str) -> dict[str, Any]:
        return prompt.parse(text)

    # ==============================================================================================
    # the LM over HTTP
    # ==============================================================================================
    def endpoint(self, config: LMConfig) -> tuple[LMProfile, str]:
        if self._profiles is None:
            self._profiles = load_profiles()
        profile, model = resolve_profile(config, self._profiles)
        if profile.base_url is None:
            raise LMError(f"LM profile {profile.name!r} has no base_url: this adapter only speaks HTTP")
        return profile, model

    def wire_model(self, model: str) -> str:
        """DSPy addresses OpenAI-compatible endpoints as ``openai/<model>`` and sends ``<model>``."""
        return model.removeprefix("openai/")

    def request_body(self, prompt: Prompt, messages: list[dict[str, Any]], config: LMConfig, profile: LMProfile,
                     model: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.wire_model(model), "messages": messages}
        temperature = config.temperature if config.temperature is not None else profile.temperature
        max_tokens = config.max_tokens if config.max_tokens is not None else profile.max_tokens
        if (config.n or 1) > 1 and (temperature is None or temperature <= 0.15):
            temperature = 0.7  # dspy.Predict keeps several completions apart this way
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        response_format = prompt.response_format()
        if response_format is not None:
            body["response_format"] = response_format
        return body

    def client(self, profile: LMProfile) -> httpx.AsyncClient:
        key = (profile.name, id(asyncio.get_running_loop()))
        client = self._clients.get(key)
        if client is None:
            headers = {}
            if profile.api_key_env:
                headers["authorization"] = f"Bearer {os.environ.get(profile.api_key_env, '')}"
            assert profile.base_url is not None
            client = self._clients[key] = httpx.AsyncClient(
                base_url=profile.base_url.rstrip("/") + "/", headers=headers,
                timeout=httpx.Timeout(profile.timeout, connect=min(10.0, profile.timeout)),
                limits=httpx.Limits(max_connections=profile.concurrency))
        return client

    async def send(self, profile: LMProfile, body: dict[str, Any]) -> dict[str, Any]:
        """POST the body; retry what is transient (429, 5xx, connection errors) ``max_retries`` times."""
        attempt = 0
        while True:
            try:
                return await self.post(profile, body)
            except LMError as exc:
                if not exc.retriable or attempt >= profile.max_retries:
                    raise
            attempt += 1
            await asyncio.sleep(0.05 * 2 ** attempt)

    async def post(self, profile: LMProfile, body: dict[str, Any]) -> dict[str, Any]:
        content = json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            response = await self.client(profile).post("chat/completions", content=content,
                                                       headers={"content-type": "application/json"})
        except httpx.TimeoutException as exc:
            raise LMError(f"the LM did not answer within {profile.timeout}s", retriable=True) from exc
        except httpx.TransportError as exc:
            raise LMError(f"cannot reach the LM: {type(exc).__name__}", retriable=True) from exc
        if response.status_code != 200:
            raise LMError(f"the LM answered HTTP {response.status_code}", status=response.status_code,
                          retriable=response.status_code in _RETRIABLE)
        try:
            data = response.json()
        except ValueError as exc:
            raise LMError("the LM answered something that is not JSON", status=200) from exc
        if not isinstance(data, dict):
            raise LMError("the LM answered a JSON value that is not a completion", status=200)
        return data

    @staticmethod
    def reply_of(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        try:
            text = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise LMError("the LM answered a completion without a message", status=200) from exc
        usage = data.get("usage")
        return (text if isinstance(text, str) else ""), (dict(usage) if isinstance(usage, dict) else {})


def _mode(mode: str) -> Any:
    return mode if mode in ("json", "xml") else "chat"


def _json_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """A format-2 module's outputs as JSON data (a trajectory holds whatever the tools returned)."""
    return {k: react.json_data(v) for k, v in outputs.items()}


async def _all_or_nothing(coroutines: list[Any]) -> list[Any]:
    """Every result in order; on the first failure the others are cancelled (and awaited) first."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def make_adapter(**kwargs: Any) -> IndependentAdapter:
    return IndependentAdapter(**kwargs)
