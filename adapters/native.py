"""The native executor: asyncio + httpx, the lowest-overhead backend.

``prepare`` compiles a program once into a plan (prompt templates with their system messages
pre-rendered, argument maps with references pre-parsed, retrievers and tools looked up), cached
by content hash. ``run`` then only resolves references, renders the user message, calls the LM
and parses; it never touches DSPy.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from stepbridge.adapter import RunOptions
from stepbridge.errors import (
    LMError,
    LMParseError,
    RunTimeoutError,
    StepbridgeError,
    StepError,
    UnsupportedCapabilityError,
)
from stepbridge.formats import Prompt, chain_of_thought
from stepbridge.lm import ChatRequest, LMPool, LMProfile
from stepbridge.program import (
    CallStep,
    ChainOfThoughtModule,
    DspyModule,
    LMConfig,
    PredictModule,
    Program,
    RetrieveModule,
    ReturnStep,
    ToolModule,
)
from stepbridge.references import parse_value, resolve
from stepbridge.result import LMCall, RunResult, StepTrace, Usage, fast_construct

__all__ = ["NativeAdapter"]

DEFAULT_MAP_CONCURRENCY = 16


class _Context:
    """Per-run state: the run's LM override, usage and the trace so far (kept for partial traces)."""

    __slots__ = ("lm_override", "trace", "usage")

    def __init__(self, lm_override: LMConfig | None):
        self.lm_override = lm_override
        self.trace: list[StepTrace] = []
        self.usage = Usage()


class _LMRunner:
    def __init__(self, adapter: NativeAdapter, program: Program, module: PredictModule | ChainOfThoughtModule):
        self.adapter = adapter
        self.lm_config = (program.lm or LMConfig()).merged(module.lm)
        signature = module.effective_signature
        if isinstance(module, ChainOfThoughtModule):
            signature = chain_of_thought(signature)
        self.signature = signature
        self.demos = list(module.demos)
        self._prompts: dict[str, Prompt] = {}
        # the LM when the run does not override it, per event loop (HTTP clients are bound to one loop)
        self._resolved: tuple[asyncio.AbstractEventLoop, Any, str, LMProfile] | None = None

    def prompt(self, mode: str) -> Prompt:
        prompt = self._prompts.get(mode)
        if prompt is None:
            prompt = self._prompts[mode] = Prompt(self.signature, self.demos, mode)
        return prompt

    async def __call__(self, args: dict[str, Any], ctx: _Context, calls: list[LMCall]) -> dict[str, Any]:
        if ctx.lm_override is None:
            config = self.lm_config
            loop = asyncio.get_running_loop()
            if self._resolved is None or self._resolved[0] is not loop:
                self._resolved = (loop, *self.adapter.lm.resolve(config))
            _, client, model, profile = self._resolved
        else:
            config = self.lm_config.merged(ctx.lm_override)
            client, model, profile = self.adapter.lm.resolve(config)
        mode = config.adapter or "chat"
        prompt = self.prompt(mode)
        try:
            return await self._complete(prompt, args, config, client, model, profile, ctx, calls)
        except LMParseError:
            fallback = getattr(prompt, "fallback", None)
            if mode != "chat" or fallback is None or fallback() is None:
                raise
            # DSPy's ChatAdapter retries once with the JSON adapter when the chat format did not parse.
            return await self._complete(self.prompt("json"), args, config, client, model, profile, ctx, calls)

    async def _complete(self, prompt: Prompt, args: dict[str, Any], config: LMConfig, client: Any, model: str,
                        profile: LMProfile, ctx: _Context, calls: list[LMCall]) -> dict[str, Any]:
        messages = prompt.messages(args)
        request = ChatRequest(
            model=model,
            messages=messages,
            temperature=config.temperature if config.temperature is not None else profile.temperature,
            max_tokens=config.max_tokens if config.max_tokens is not None else profile.max_tokens,
            response_format=prompt.response_format(),
        )
        try:
            response = await client.complete(request)
        except LMError as exc:
            calls.append(_call(model=model, messages=messages, error=exc.to_dict()))
            raise
        ctx.usage.add(response.usage)
        ctx.usage.__dict__["lm_calls"] += 1
        try:
            parsed = prompt.parse(response.text)
        except LMParseError as exc:
            calls.append(_call(model=model, messages=messages, response=response.text,
                                                usage=response.usage, latency_ms=response.latency_ms,
                                                cached=response.cached, error=exc.to_dict()))
            raise
        calls.append(_call(model=model, messages=messages, response=response.text,
                                            usage=response.usage, latency_ms=response.latency_ms,
                                            cached=response.cached))
        return parsed


class _RetrieveRunner:
    def __init__(self, program: Program, module: RetrieveModule):
        from stepbridge.retrieve import make_retriever

        self.retriever = make_retriever(module.retriever, program.base_dir)
        self.k = module.k

    async def __call__(self, args: dict[str, Any], ctx: _Context, calls: list[LMCall]) -> dict[str, Any]:
        return self.retriever.search(str(args["query"]), self.k).as_outputs()


class _ToolRunner:
    def __init__(self, module: ToolModule):
        from stepbridge.registry import tools

        self.tool = tools.get(module.tool)
        self.outputs = list((module.signature or self.tool.signature).outputs)

    async def __call__(self, args: dict[str, Any], ctx: _Context, calls: list[LMCall]) -> dict[str, Any]:
        if self.tool.is_async:
            value = await self.tool.func(**args)
        else:
            value = await asyncio.to_thread(self.tool.func, **args)
        if isinstance(value, dict) and set(self.outputs) <= set(value):
            return {k: value[k] for k in self.outputs}
        if len(self.outputs) == 1:
            return {self.outputs[0]: value}
        raise TypeError(f"tool {self.tool.name!r} returned {type(value).__name__}; expected a dict with "
                        f"{', '.join(self.outputs)}")


@dataclass
class _Step:
    index: int
    kind: str
    module: str | None = None
    module_type: str | None = None
    args: Any = None
    over: Any = None
    item: str = "item"
    name: str | None = None
    concurrency: int = DEFAULT_MAP_CONCURRENCY
    runner: Any = None


@dataclass
class _Plan:
    program: Program
    steps: list[_Step] = field(default_factory=list)


class NativeAdapter:
    """Runs programs in this process with asyncio; LM calls go through :mod:`stepbridge.lm`."""

    name = "native"
    capabilities = frozenset(
        {"async", "batch", "map", "retrieve", "tools", "lm_trace", "cancel", "timeout", "rehydrate", "json_adapter"}
    )

    def __init__(self, *, lm: LMPool | None = None, cache: bool | None = None,
                 map_concurrency: int = DEFAULT_MAP_CONCURRENCY):
        self.lm = lm or LMPool(cache=cache)
        self.map_concurrency = map_concurrency
        self._plans: dict[str, _Plan] = {}

    async def prepare(self, program: Program) -> None:
        self._plan(program)

    def _plan(self, program: Program) -> _Plan:
        key = program.content_hash
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        for module_name, module in program.modules.items():
            if isinstance(module, DspyModule):
                raise UnsupportedCapabilityError(
                    f"module {module_name!r} is a 'dspy' module, which the native adapter cannot run; "
                    "use --backend dspy (or a pool of dspy workers)", capability="dspy_modules", adapter=self.name)
        runners: dict[str, Any] = {}
        for module_name, module in program.modules.items():
            if isinstance(module, PredictModule | ChainOfThoughtModule):
                runners[module_name] = _LMRunner(self, program, module)
            elif isinstance(module, RetrieveModule):
                runners[module_name] = _RetrieveRunner(program, module)
            elif isinstance(module, ToolModule):
                runners[module_name] = _ToolRunner(module)
        plan = _Plan(program)
        for index, step in enumerate(program.steps):
            if isinstance(step, ReturnStep):
                plan.steps.append(_Step(index, "return", args=parse_value(step.return_)))
            elif isinstance(step, CallStep):
                plan.steps.append(_Step(index, "call", step.call, program.modules[step.call].type,
                                        parse_value(step.with_), name=step.as_, runner=runners[step.call]))
            else:
                plan.steps.append(_Step(index, "map", step.map, program.modules[step.map].type,
                                        parse_value(step.with_), over=parse_value(step.over), item=step.item,
                                        name=step.as_, concurrency=step.concurrency or self.map_concurrency,
                                        runner=runners[step.map]))
        self._plans[key] = plan
        return plan

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions | None = None) -> RunResult:
        options = options or RunOptions()
        plan = self._plan(program)
        ctx = _Context(options.lm)
        start = time.perf_counter()
        try:
            if options.timeout is not None:
                async with asyncio.timeout(options.timeout):
                    outputs = await self._execute(plan, inputs, ctx)
            else:
                outputs = await self._execute(plan, inputs, ctx)
        except TimeoutError:
            raise RunTimeoutError(f"run exceeded its timeout of {options.timeout}s", timeout=options.timeout,
                                  trace=ctx.trace) from None
        return fast_construct(RunResult, {
            "outputs": outputs, "trace": ctx.trace, "usage": ctx.usage, "backend": self.name,
            "program_hash": program.content_hash, "execution_id": options.execution_id,
            "duration_ms": (time.perf_counter() - start) * 1000, "attempts": options.attempt, "worker": None})

    async def _execute(self, plan: _Plan, inputs: dict[str, Any], ctx: _Context) -> dict[str, Any]:
        scope: dict[str, Any] = {"inputs": inputs}
        trace = ctx.trace
        for step in plan.steps:
            if step.kind == "return":
                outputs = resolve(step.args, scope)
                trace.append(_record(step=step.index, kind="return", inputs=outputs, outputs=outputs))
                return outputs
            began = time.perf_counter()
            calls: list[LMCall] = []
            children: list[StepTrace] = []
            args: dict[str, Any] = {}
            try:
                if step.kind == "call":
                    args = resolve(step.args, scope)
                    result: Any = await step.runner(args, ctx, calls)
                else:
                    args = {"over": resolve(step.over, scope)}
                    result = await self._map(step, args["over"], scope, ctx, children)
            except BaseException as exc:
                error = _as_typed(exc) if not isinstance(exc, asyncio.CancelledError) else None
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

    async def _map(self, step: _Step, items: list[Any], scope: dict[str, Any], ctx: _Context,
                   children: list[StepTrace]) -> list[Any]:
        limit = asyncio.Semaphore(step.concurrency)
        records: list[StepTrace | None] = [None] * len(items)

        async def one(position: int, element: Any) -> Any:
            async with limit:
                began = time.perf_counter()
                calls: list[LMCall] = []
                args = resolve(step.args, {**scope, step.item: element})
                out: Any = None
                error: dict[str, Any] | None = None
                try:
                    out = await step.runner(args, ctx, calls)
                    return out
                except Exception as exc:
                    error = _as_typed(exc).to_dict()
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

    async def aclose(self) -> None:
        await self.lm.aclose()


def _as_typed(exc: BaseException) -> StepbridgeError:
    if isinstance(exc, StepbridgeError):
        return exc
    return StepbridgeError(f"{type(exc).__name__}: {exc}")


def _record(*, step: int, kind: str, module: str | None = None, module_type: str | None = None,
            inputs: Any = None, outputs: Any = None, lm_calls: list[LMCall] | None = None,
            children: list[StepTrace] | None = None, duration_ms: float = 0.0,
            error: dict[str, Any] | None = None) -> StepTrace:
    # model_construct with every field given: no validation and no default factories on the hot path
    return fast_construct(StepTrace, {
        "step": step, "kind": kind, "module": module, "module_type": module_type,
        "inputs": inputs if inputs is not None else {}, "outputs": outputs,
        "lm_calls": lm_calls if lm_calls is not None else [], "children": children if children is not None else [],
        "duration_ms": duration_ms, "error": error})


def _call(*, model: str, messages: list[dict[str, Any]], response: str | None = None,
          usage: dict[str, Any] | None = None, latency_ms: float = 0.0, cached: bool = False,
          error: dict[str, Any] | None = None) -> LMCall:
    return fast_construct(LMCall, {"model": model, "messages": messages, "response": response, "usage": usage or {},
                                   "latency_ms": latency_ms, "cached": cached, "error": error})
