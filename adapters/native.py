"""The native executor: asyncio + httpx, the lowest-overhead backend.

``prepare`` compiles a program once into a plan (prompt templates with their system messages
pre-rendered, argument maps with references pre-parsed, retrievers and tools looked up), cached
by content hash. ``run`` then only resolves references, renders the user message, calls the LM
and parses; it never touches DSPy.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

from stepbridge.adapter import RunOptions
from stepbridge.errors import (
    LMError,
    LMParseError,
    UnsupportedCapabilityError,
)
from stepbridge.formats import Prompt, chain_of_thought
from stepbridge.interpreter import DEFAULT_MAP_CONCURRENCY, PlanStep, RunContext, plan, run_plan
from stepbridge.lm import ChatRequest, LMPool, LMProfile
from stepbridge.program import (
    ChainOfThoughtModule,
    DspyModule,
    LMConfig,
    PredictModule,
    Program,
    RetrieveModule,
    ToolModule,
)
from stepbridge.result import LMCall, RunResult, fast_construct

__all__ = ["NativeAdapter"]

_Plan = tuple[list[PlanStep], dict[str, Any]]


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

    def prompt(self, mode: Literal["chat", "json"]) -> Prompt:
        prompt = self._prompts.get(mode)
        if prompt is None:
            prompt = self._prompts[mode] = Prompt(self.signature, self.demos, mode)
        return prompt

    async def __call__(self, args: dict[str, Any], ctx: RunContext, calls: list[LMCall]) -> dict[str, Any]:
        if ctx.options.lm is None:
            config = self.lm_config
            loop = asyncio.get_running_loop()
            if self._resolved is None or self._resolved[0] is not loop:
                self._resolved = (loop, *self.adapter.lm.resolve(config))
            _, client, model, profile = self._resolved
        else:
            config = self.lm_config.merged(ctx.options.lm)
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
                        profile: LMProfile, ctx: RunContext, calls: list[LMCall]) -> dict[str, Any]:
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

    async def __call__(self, args: dict[str, Any], ctx: RunContext, calls: list[LMCall]) -> dict[str, Any]:
        return self.retriever.search(str(args["query"]), self.k).as_outputs()


class _ToolRunner:
    def __init__(self, module: ToolModule):
        from stepbridge.registry import tools

        self.tool = tools.get(module.tool)
        self.outputs = list((module.signature or self.tool.signature).outputs)

    async def __call__(self, args: dict[str, Any], ctx: RunContext, calls: list[LMCall]) -> dict[str, Any]:
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
        self._plans: dict[tuple[str, Path | None], _Plan] = {}

    async def prepare(self, program: Program) -> None:
        self._plan(program)

    def _plan(self, program: Program) -> _Plan:
        key = program.plan_key  # relative corpora resolve against base_dir
        compiled = self._plans.get(key)
        if compiled is not None:
            return compiled
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
        compiled = self._plans[key] = (plan(program), runners)
        return compiled

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions | None = None) -> RunResult:
        steps, runners = self._plan(program)

        def call(step: PlanStep, args: dict[str, Any], ctx: RunContext, calls: list[LMCall]) -> Any:
            assert step.module is not None  # call and map steps name their module
            return runners[step.module](args, ctx, calls)

        return await run_plan(program, steps, inputs, options or RunOptions(), call=call, backend=self.name,
                              map_concurrency=self.map_concurrency)

    async def aclose(self) -> None:
        await self.lm.aclose()


def _call(*, model: str, messages: list[dict[str, Any]], response: str | None = None,
          usage: dict[str, Any] | None = None, latency_ms: float = 0.0, cached: bool = False,
          error: dict[str, Any] | None = None) -> LMCall:
    # every field given and no validation: one per LM call on the hot path
    return fast_construct(LMCall, {"model": model, "messages": messages, "response": response, "usage": usage or {},
                                   "latency_ms": latency_ms, "cached": cached, "error": error})
