"""TinyAdapter: runs a program's steps one after another, in this process, with asyncio.

It only uses the adapter-author kit, ``stepbridge.adapters``:

* ``Prompt`` -- DSPy's ChatAdapter prompt format and reply parsing, so the LM sees exactly what the
  native and DSPy adapters send;
* ``LMPool`` -- LM profiles (endpoints and keys come from the operator) and an OpenAI-compatible
  client with retries;
* ``parse_value`` / ``resolve`` -- ``$inputs.x`` / ``$step.field`` resolution;
* ``make_retriever`` -- the built-in bm25 retriever.

It declares what it really does and refuses the rest: no ``map`` steps, no tools, no JSON LM
format, no DSPy modules. Asking it for those raises ``UnsupportedCapabilityError``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from stepbridge.adapters import (
    CallStep,
    ChainOfThoughtModule,
    ChatRequest,
    LMCall,
    LMConfig,
    LMError,
    LMParseError,
    LMPool,
    PredictModule,
    Program,
    Prompt,
    RetrieveModule,
    ReturnStep,
    RunOptions,
    RunResult,
    RunTimeoutError,
    StepbridgeError,
    StepError,
    StepTrace,
    UnsupportedCapabilityError,
    Usage,
    chain_of_thought,
    make_retriever,
    parse_value,
    resolve,
)

__all__ = ["TinyAdapter", "make_adapter"]


class TinyAdapter:
    """Sequential, in-process; predict, chain_of_thought and retrieve modules in the chat format."""

    name = "tiny"
    version = "0.1.0"
    capabilities = frozenset({"async", "batch", "retrieve", "lm_trace", "timeout", "cancel", "rehydrate"})

    def __init__(self) -> None:
        self.lm = LMPool()  # profiles from the operator's config / STEPBRIDGE_LM_* environment
        self._prompts: dict[tuple[str, str], Prompt] = {}
        self._retrievers: dict[tuple[Any, str], Any] = {}

    # -- the adapter protocol ----------------------------------------------------------------------
    async def prepare(self, program: Program) -> None:
        """Check the program is runnable here and build what can be built up front (idempotent)."""
        missing = program.required_capabilities - self.capabilities
        if missing:
            capability = sorted(missing)[0]
            raise UnsupportedCapabilityError(
                f"the tiny adapter cannot run program {program.name!r}: it needs {capability!r}",
                capability=capability, adapter=self.name)
        for name, module in program.modules.items():
            if isinstance(module, RetrieveModule):
                self._retriever(program, name, module)

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        await self.prepare(program)  # adapters may be called without the core Runner: check here too
        trace: list[StepTrace] = []
        usage = Usage()
        start = time.perf_counter()
        try:
            async with asyncio.timeout(options.timeout):  # None: no deadline
                outputs = await self._execute(program, inputs, options, trace, usage)
        except TimeoutError:
            raise RunTimeoutError(f"run exceeded its timeout of {options.timeout}s", timeout=options.timeout,
                                  trace=trace) from None
        return RunResult(outputs=outputs, trace=trace, usage=usage, backend=self.name,
                         program_hash=program.content_hash, execution_id=options.execution_id,
                         duration_ms=(time.perf_counter() - start) * 1000, attempts=options.attempt)

    async def aclose(self) -> None:
        await self.lm.aclose()

    # -- execution ---------------------------------------------------------------------------------
    async def _execute(self, program: Program, inputs: dict[str, Any], options: RunOptions,
                       trace: list[StepTrace], usage: Usage) -> dict[str, Any]:
        scope: dict[str, Any] = {"inputs": inputs}
        for index, step in enumerate(program.steps):
            if isinstance(step, ReturnStep):
                outputs = resolve(parse_value(step.return_), scope)
                trace.append(StepTrace(step=index, kind="return", inputs=outputs, outputs=outputs))
                return outputs
            assert isinstance(step, CallStep)  # prepare() refused map steps
            module = program.modules[step.call]
            record = StepTrace(step=index, kind="call", module=step.call, module_type=module.type)
            began = time.perf_counter()
            try:
                record.inputs = resolve(parse_value(step.with_), scope)
                if isinstance(module, RetrieveModule):
                    hits = self._retriever(program, step.call, module).search(str(record.inputs["query"]), module.k)
                    result = hits.as_outputs()
                else:
                    assert isinstance(module, PredictModule | ChainOfThoughtModule)
                    result = await self._predict(program, step.call, module, record.inputs, options,
                                                 record.lm_calls, usage)
            except asyncio.CancelledError:
                record.error = {"type": "RunCancelledError", "message": "cancelled"}
                trace.append(record)
                raise
            except Exception as exc:
                # Keep the typed error underneath (LMError, LMParseError, ...) as the cause, and the trace so far.
                cause = exc if isinstance(exc, StepbridgeError) else StepbridgeError(f"{type(exc).__name__}: {exc}")
                record.error = cause.to_dict()
                record.duration_ms = (time.perf_counter() - began) * 1000
                trace.append(record)
                raise StepError(f"step {index} ({step.call!r}) failed: {cause.message}", step=index,
                                module=step.call, cause=cause, trace=trace) from exc
            record.outputs = result
            record.duration_ms = (time.perf_counter() - began) * 1000
            trace.append(record)
            if step.as_ is not None:
                scope[step.as_] = result
        raise AssertionError("a validated program ends with a return step")

    def _retriever(self, program: Program, name: str, module: RetrieveModule) -> Any:
        # the same program beside another corpus is another index: key by content *and* folder (plan_key)
        key = (program.plan_key, name)
        if key not in self._retrievers:
            self._retrievers[key] = make_retriever(module.retriever, program.base_dir)
        return self._retrievers[key]

    def _prompt(self, program: Program, name: str, module: PredictModule | ChainOfThoughtModule) -> Prompt:
        key = (program.content_hash, name)
        prompt = self._prompts.get(key)
        if prompt is None:
            signature = module.effective_signature
            if isinstance(module, ChainOfThoughtModule):
                signature = chain_of_thought(signature)  # adds the `reasoning` output, as dspy.ChainOfThought
            prompt = self._prompts[key] = Prompt(signature, module.demos, "chat")
        return prompt

    async def _predict(self, program: Program, name: str, module: PredictModule | ChainOfThoughtModule,
                       args: dict[str, Any], options: RunOptions, calls: list[LMCall], usage: Usage) -> dict[str, Any]:
        # LM settings: program default < module < run-time override
        config = (program.lm or LMConfig()).merged(module.lm).merged(options.lm)
        client, model, profile = self.lm.resolve(config)
        prompt = self._prompt(program, name, module)
        try:
            return await self._complete(prompt, args, config, client, model, profile, calls, usage)
        except LMParseError:
            # DSPy's ChatAdapter retries once in the JSON format when a chat reply does not parse.
            fallback = prompt.fallback()
            if fallback is None:
                raise
            return await self._complete(fallback, args, config, client, model, profile, calls, usage)

    @staticmethod
    async def _complete(prompt: Prompt, args: dict[str, Any], config: LMConfig, client: Any, model: str,
                        profile: Any, calls: list[LMCall], usage: Usage) -> dict[str, Any]:
        messages = prompt.messages(args)
        request = ChatRequest(
            model=model, messages=messages,
            temperature=config.temperature if config.temperature is not None else profile.temperature,
            max_tokens=config.max_tokens if config.max_tokens is not None else profile.max_tokens,
            response_format=prompt.response_format())
        try:
            response = await client.complete(request)
        except LMError as exc:
            calls.append(LMCall(model=model, messages=messages, error=exc.to_dict()))
            raise
        usage.add(response.usage)
        usage.lm_calls += 1
        call = LMCall(model=model, messages=messages, response=response.text, usage=response.usage,
                      latency_ms=response.latency_ms, cached=response.cached)
        calls.append(call)
        try:
            return prompt.parse(response.text)
        except LMParseError as exc:
            call.error = exc.to_dict()
            raise


def make_adapter(**kwargs: Any) -> TinyAdapter:
    """The factory named on the command line: ``stepbridge conformance tiny_adapter:make_adapter``."""
    return TinyAdapter(**kwargs)
