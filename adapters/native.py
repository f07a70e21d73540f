"""The native executor: asyncio + httpx, the lowest-overhead backend.

``prepare`` compiles a program once into a plan (prompt templates with their system messages
pre-rendered, argument maps with references pre-parsed, retrievers and tools looked up), cached
by content hash. ``run`` then only resolves references, renders the user message, calls the LM
and parses; it never touches DSPy.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stepbridge.adapter import RunOptions
from stepbridge.errors import (
    LMError,
    LMParseError,
    UnsupportedCapabilityError,
)
from stepbridge.formats import AdapterName, Prompt, chain_of_thought
from stepbridge.interpreter import DEFAULT_MAP_CONCURRENCY, ModuleCall, PlanStep, RunContext, plan, run_plan
from stepbridge.lm import ChatRequest, ChatResponse, LMPool, LMProfile
from stepbridge.lru import LRU
from stepbridge.program import (
    ChainOfThoughtModule,
    DspyModule,
    LMConfig,
    PredictModule,
    Program,
    RetrieveModule,
    ToolModule,
)
from stepbridge.result import LMCall, RunResult, constructor
from stepbridge.signature import Signature

if TYPE_CHECKING:
    from stepbridge.named_types import TypeSpace

__all__ = ["Invocation", "NativeAdapter", "Predictor", "Runner", "module_lm_config"]

_Plan = tuple[list[Any], "ModuleCall"]  # planned steps, how a step calls its module


@dataclass(slots=True)
class Invocation:
    """One module call inside a run. ``best_of_n`` / ``refine`` derive the calls of their attempts from it:
    a forced temperature and rollout id for every LM call, Refine's hints per predictor name, and a
    trace of ``(predictor name, inputs, outputs)`` (DSPy's ``settings.trace``)."""

    ctx: RunContext
    calls: list[LMCall]
    temperature: float | None = None
    rollout_id: int | None = None
    hints: Mapping[str, str] | None = None
    trace: list[tuple[str, dict[str, Any], dict[str, Any]]] | None = None


class Runner(Protocol):
    """How the native executor runs one program module."""

    async def invoke(self, args: dict[str, Any], inv: Invocation) -> dict[str, Any]: ...


class Predictor:
    """One ``dspy.Predict``: a signature, demos and an LM config, called with the chat/JSON/XML formats.

    ``name`` is its name among the ``named_predictors()`` of the DSPy module it belongs to (Refine's
    advice is keyed by it); ``temperature`` is a temperature the predictor itself sets (DSPy's predictor
    ``config``, as MultiChainComparison's 0.7), which wins over everything but nothing else. ``types``:
    the program's declared types, which the signature's type names resolve against."""

    def __init__(self, adapter: NativeAdapter, lm_config: LMConfig, signature: Signature,
                 demos: list[dict[str, Any]] | None = None, *, name: str = "self",
                 temperature: float | None = None, types: TypeSpace | None = None):
        self.adapter = adapter
        self.lm_config = lm_config
        self.signature = signature
        self.types = types
        self.demos = list(demos or [])
        self.name = name
        self.temperature = temperature
        self._prompts: dict[tuple[str, bool], Prompt] = {}
        # the LM when the run does not override it, per event loop (HTTP clients are bound to one loop)
        self._resolved: tuple[asyncio.AbstractEventLoop, Any, str, LMProfile] | None = None
        # ... and with it the prompt and request of a call no run or attempt adjusts
        self._plain: tuple[asyncio.AbstractEventLoop, Any, Prompt, _Request] | None = None

    def prompt(self, mode: AdapterName, hinted: bool = False) -> Prompt:
        prompt = self._prompts.get((mode, hinted))
        if prompt is None:
            from stepbridge.ensembles import add_hint

            signature = add_hint(self.signature) if hinted else self.signature
            prompt = self._prompts[(mode, hinted)] = Prompt(signature, self.demos, mode, self.types)
        return prompt

    def mode(self, ctx: RunContext) -> str:
        """The format adapter (chat/json/xml) this predictor uses in this run."""
        config = self.lm_config if ctx.options.lm is None else self.lm_config.merged(ctx.options.lm)
        return config.adapter or "chat"

    def step_call(self, args: dict[str, Any], ctx: RunContext,
                  calls: list[LMCall]) -> Coroutine[Any, Any, dict[str, Any]]:
        """A program step's call (the interpreter's): :meth:`__call__` without an :class:`Invocation`, and
        when the run does not override the LM, the completion's coroutine itself (no frame around it)."""
        if ctx.options.lm is None:
            loop = asyncio.get_running_loop()
            plain = self._plain
            if plain is None or plain[0] is not loop:
                plain = self._plain_call(loop)
            return self._complete(plain[2], args, plain[3], plain[1], ctx, calls)
        return self(args, Invocation(ctx, calls))

    async def __call__(self, args: dict[str, Any], inv: Invocation) -> dict[str, Any]:
        ctx = inv.ctx
        if ctx.options.lm is None and inv.temperature is None and inv.rollout_id is None and inv.hints is None:
            # the common call: everything but the arguments is the same on every run (per event loop)
            loop = asyncio.get_running_loop()
            plain = self._plain
            if plain is None or plain[0] is not loop:
                plain = self._plain_call(loop)
            _, client, prompt, request = plain
        else:
            if ctx.options.lm is None:
                config = self.lm_config
                loop = asyncio.get_running_loop()
                if self._resolved is None or self._resolved[0] is not loop:
                    self._resolved = (loop, *self.adapter.lm.resolve(config))
                _, client, model, profile = self._resolved
            else:
                config = self.lm_config.merged(ctx.options.lm)
                client, model, profile = self.adapter.lm.resolve(config)
            if inv.hints is not None:
                from stepbridge.ensembles import HINT_FIELD

                args = {**args, HINT_FIELD: inv.hints.get(self.name, "N/A")}
            prompt, request = self._settings(config, model, profile, inv.temperature, inv.rollout_id,
                                             inv.hints is not None)
        outputs = await self._complete(prompt, args, request, client, ctx, inv.calls)
        if inv.trace is not None:
            inv.trace.append((self.name, dict(args), dict(outputs)))
        return outputs

    def _plain_call(self, loop: asyncio.AbstractEventLoop) -> tuple[asyncio.AbstractEventLoop, Any, Prompt, _Request]:
        """The client, prompt and request of a call nothing adjusts, kept for ``loop``."""
        client, model, profile = self.adapter.lm.resolve(self.lm_config)
        plain = self._plain = (loop, client, *self._settings(self.lm_config, model, profile, None, None, False))
        return plain

    def _settings(self, config: LMConfig, model: str, profile: LMProfile, attempt_temperature: float | None,
                  rollout_id: int | None, hinted: bool) -> tuple[Prompt, _Request]:
        """The prompt and request settings of a call: the format, then the temperature (the predictor's own,
        the attempt's, the config's, the profile's) and the completions."""
        mode: AdapterName = config.adapter or "chat"
        prompt = self.prompt(mode, hinted)
        temperature = self.temperature
        if temperature is None:
            temperature = attempt_temperature
        if temperature is None:
            temperature = config.temperature if config.temperature is not None else profile.temperature
        n = config.n or 1
        if n > 1 and (temperature is None or temperature <= 0.15):
            temperature = 0.7  # dspy.Predict keeps several completions apart this way
        return prompt, _Request(model, temperature, config.max_tokens if config.max_tokens is not None
                                else profile.max_tokens, rollout_id, n)

    async def _complete(self, prompt: Prompt, args: dict[str, Any], req: _Request, client: Any, ctx: RunContext,
                        calls: list[LMCall]) -> dict[str, Any]:
        """The call's outputs; a reply the format cannot parse is asked again with the JSON format, as
        DSPy's ChatAdapter (and XMLAdapter) retries once with the JSON adapter."""
        messages = prompt.messages(args)
        request = ChatRequest(req.model, messages, req.temperature, req.max_tokens, prompt.response_format(),
                              req.rollout_id)
        model = req.model
        try:
            if req.n == 1:  # the usual call: one completion, without the lists and loops below
                try:
                    response = await client.complete(request)
                except LMError as exc:
                    calls.append(_call(model=model, messages=messages, error=exc.to_dict()))
                    raise
                usage = ctx.usage
                usage.add(response.usage)
                usage.__dict__["lm_calls"] += 1
                return self._parsed(prompt, response, model, messages, calls)
            # n completions: DSPy's LM engine asks for them as that many requests, one after the other
            responses = []
            for _ in range(req.n):
                try:
                    response = await client.complete(request)
                except LMError as exc:
                    calls.append(_call(model=model, messages=messages, error=exc.to_dict()))
                    raise
                ctx.usage.add(response.usage, calls=1)
                responses.append(response)
            first: dict[str, Any] | None = None
            for response in responses:  # every completion is parsed, as DSPy's adapter parses them all
                parsed = self._parsed(prompt, response, model, messages, calls)
                if first is None:
                    first = parsed  # the outputs come from the first completion, as in dspy.Prediction
            assert first is not None
            return first
        except LMParseError:
            fallback = prompt.fallback()
            if fallback is None:
                raise
            return await self._complete(fallback, args, req, client, ctx, calls)

    @staticmethod
    def _parsed(prompt: Prompt, response: ChatResponse, model: str, messages: list[dict[str, Any]],
                calls: list[LMCall]) -> dict[str, Any]:
        """One completion's outputs; its LM call goes into ``calls`` either way."""
        try:
            parsed = prompt.parse(response.text)
        except LMParseError as exc:
            calls.append(_call(model=model, messages=messages, response=response.text, usage=response.usage,
                               latency_ms=response.latency_ms, cached=response.cached, error=exc.to_dict()))
            raise
        calls.append(_lm_call({  # _call's fields, without its call (one per LM call)
            "model": model, "messages": messages, "response": response.text, "usage": response.usage or {},
            "latency_ms": response.latency_ms, "cached": response.cached, "error": None}))
        return parsed


@dataclass(frozen=True, slots=True)
class _Request:
    model: str
    temperature: float | None
    max_tokens: int | None
    rollout_id: int | None
    n: int = 1


def module_lm_config(program: Program, module: Any) -> LMConfig:
    """A module's LM config before run overrides: the program's, then the module's own."""
    return (program.lm or LMConfig()).merged(getattr(module, "lm", None))


class _LMRunner:
    """``predict`` (predictor ``self``) and ``chain_of_thought`` (predictor ``predict``)."""

    def __init__(self, adapter: NativeAdapter, program: Program, module: PredictModule | ChainOfThoughtModule):
        signature = module.effective_signature
        cot = isinstance(module, ChainOfThoughtModule)
        if cot:
            signature = chain_of_thought(signature)
        self.predictor = Predictor(adapter, module_lm_config(program, module), signature, module.demos,
                                   name="predict" if cot else "self", types=getattr(program, "type_space", None))

    def predictors(self) -> list[Predictor]:
        return [self.predictor]

    def invoke(self, args: dict[str, Any], inv: Invocation) -> Coroutine[Any, Any, dict[str, Any]]:
        return self.predictor(args, inv)  # its coroutine, not one more frame around it


class _RetrieveRunner:
    def __init__(self, program: Program, module: RetrieveModule):
        from stepbridge.retrieve import make_retriever

        self.retriever = make_retriever(module.retriever, program.base_dir)
        self.k = module.k

    async def invoke(self, args: dict[str, Any], inv: Invocation) -> dict[str, Any]:
        return self.retriever.search(str(args["query"]), self.k).as_outputs()


class _ToolRunner:
    def __init__(self, module: ToolModule):
        from stepbridge.registry import tools

        self.tool = tools.get(module.tool)
        self.outputs = list((module.signature or self.tool.signature).outputs)

    async def invoke(self, args: dict[str, Any], inv: Invocation) -> dict[str, Any]:
        if self.tool.is_async:
            value = await self.tool.func(**args)
        else:
            value = await asyncio.to_thread(self.tool.func, **args)
        return self.tool.shape(value, self.outputs)


class NativeAdapter:
    """Runs programs in this process with asyncio; LM calls go through :mod:`stepbridge.lm`."""

    name = "native"
    capabilities = frozenset(
        {"async", "batch", "map", "retrieve", "tools", "lm_trace", "cancel", "timeout", "rehydrate", "json_adapter",
         "xml_adapter", "typed_objects", "agents", "ensembles", "control_flow", "parallel"}
    )

    def __init__(self, *, lm: LMPool | None = None, cache: bool | None = None,
                 map_concurrency: int = DEFAULT_MAP_CONCURRENCY):
        self.lm = lm or LMPool(cache=cache)
        self.map_concurrency = map_concurrency
        # bounded: programs (and pool requests) choose how many distinct plans a process sees
        self._plans: LRU[tuple[str, Path | None], _Plan] = LRU(MAX_PLANS)
        self._last: tuple[tuple[str, Path | None], _Plan] | None = None  # the plan the last run used, by key

    async def prepare(self, program: Program) -> None:
        self._plan(program)

    def _plan(self, program: Program) -> _Plan:
        key = program.plan_key  # relative corpora resolve against base_dir
        last = self._last
        if last is not None and last[0] is key:  # the same program object as the last run's: no LRU lock
            return last[1]
        compiled = self._plans.get(key)
        if compiled is not None:
            self._last = (key, compiled)
            return compiled
        for module_name, module in program.modules.items():
            if isinstance(module, DspyModule):
                raise UnsupportedCapabilityError(
                    f"module {module_name!r} is a 'dspy' module, which the native adapter cannot run; "
                    "use --backend dspy (or a pool of dspy workers)", capability="dspy_modules", adapter=self.name)
        runners: dict[str, Runner] = {}
        for module_name in program.modules:
            self._runner(program, module_name, runners)
        return self._plans.put(key, (plan(program), _module_call(program, runners)))

    def _runner(self, program: Program, name: str, runners: dict[str, Runner]) -> Runner:
        """The runner of module ``name`` (built once; a wrapper shares the runner of the module it wraps)."""
        found = runners.get(name)
        if found is not None:
            return found
        module = program.modules[name]
        runner: Runner
        if isinstance(module, PredictModule | ChainOfThoughtModule):
            runner = _LMRunner(self, program, module)
        elif isinstance(module, RetrieveModule):
            runner = _RetrieveRunner(program, module)
        elif isinstance(module, ToolModule):
            runner = _ToolRunner(module)
        else:
            from . import native_agents

            runner = native_agents.build(self, program, name, module, lambda other: self._runner(program, other,
                                                                                                  runners))
        runners[name] = runner
        return runner

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions | None = None) -> RunResult:
        steps, call = self._plan(program)
        return await run_plan(program, steps, inputs, options or RunOptions(), call=call, backend=self.name,
                              map_concurrency=self.map_concurrency)

    async def aclose(self) -> None:
        await self.lm.aclose()


_lm_call = constructor(LMCall)  # an LM call's record with every field given, unvalidated (one per call)

#: prepared plans an adapter keeps (least recently used out first)
MAX_PLANS = 256

#: Module types whose outputs may hold what tools returned (a react trajectory): made JSON data at the step.
_RAW_OUTPUTS = frozenset({"react", "best_of_n", "refine", "multi_chain_comparison"})


def _module_call(program: Program, runners: dict[str, Runner]) -> ModuleCall:
    """How the plan's steps call their modules: each module's entry point looked up once, per plan."""
    invokers: dict[str, Callable[[dict[str, Any], RunContext, list[LMCall]], Awaitable[dict[str, Any]]]] = {}
    for name, runner in runners.items():
        if isinstance(runner, _LMRunner):
            invokers[name] = runner.predictor.step_call  # its coroutine, without the runner's frame around it
        elif program.modules[name].type in _RAW_OUTPUTS:
            invokers[name] = functools.partial(_with_invocation, functools.partial(_as_data, runner))
        else:
            invokers[name] = functools.partial(_with_invocation, runner.invoke)

    def call(step: PlanStep, args: dict[str, Any], ctx: RunContext, calls: list[LMCall]) -> Any:
        assert step.module is not None  # call and map steps name their module
        return invokers[step.module](args, ctx, calls)

    return call


def _with_invocation(invoke: Callable[[dict[str, Any], Invocation], Awaitable[dict[str, Any]]],
                     args: dict[str, Any], ctx: RunContext, calls: list[LMCall]) -> Awaitable[dict[str, Any]]:
    return invoke(args, Invocation(ctx, calls))


async def _as_data(runner: Runner, args: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    from .native_agents import run_step

    return await run_step(runner, args, inv)


def _call(*, model: str, messages: list[dict[str, Any]], response: str | None = None,
          usage: dict[str, Any] | None = None, latency_ms: float = 0.0, cached: bool = False,
          error: dict[str, Any] | None = None) -> LMCall:
    # every field given and no validation: one per LM call on the hot path
    return _lm_call({"model": model, "messages": messages, "response": response, "usage": usage or {},
                                   "latency_ms": latency_ms, "cached": cached, "error": error})
