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

Every hook a mutant breaks is a small method (``lm_config``, ``request_body``, ``send``, ``parse``,
``run_map``...), so each mutant overrides exactly one promise.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import httpx
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
from stepbridge.lm import LMProfile, load_profiles, resolve_profile
from stepbridge.program import (
    CallStep,
    ChainOfThoughtModule,
    LMConfig,
    MapStep,
    PredictModule,
    Program,
    RetrieveModule,
    ReturnStep,
    ToolModule,
)
from stepbridge.registry import tools
from stepbridge.result import LMCall, RunResult, StepTrace, Usage

__all__ = ["IndependentAdapter", "make_adapter"]

_RETRIABLE = frozenset({408, 409, 429, 500, 502, 503, 504})


class _Plan:
    """What ``prepare`` builds once per program content and folder: prompts, retrievers, tools."""

    def __init__(self) -> None:
        self.prompts: dict[tuple[str, str], Prompt] = {}
        self.retrievers: dict[str, Any] = {}
        self.tools: dict[str, Any] = {}


class _Run:
    """Everything one run owns (nothing of it lives on the adapter)."""

    def __init__(self, program: Program, options: RunOptions, plan: _Plan):
        self.program = program
        self.options = options
        self.plan = plan
        self.trace: list[StepTrace] = []
        self.usage = Usage()


class IndependentAdapter:
    """Predict, chain_of_thought, retrieve and tool modules; call, map and return steps; chat and JSON."""

    name = "independent"
    version = "1.0.0"
    capabilities = frozenset({"async", "batch", "map", "retrieve", "tools", "json_adapter", "lm_trace", "timeout",
                              "cancel", "rehydrate"})

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
            prompt = state.plan.prompts[key] = Prompt(signature, module.demos, "json" if mode == "json" else "chat")
        return prompt

    # ==============================================================================================
    # the step loop
    # ==============================================================================================
    def new_scope(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The names a run's references see: its inputs, then each step's ``as`` result."""
        return {"inputs": inputs}

    async def execute(self, state: _Run, inputs: dict[str, Any]) -> dict[str, Any]:
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
        mode = config.adapter or "chat"
        prompt = self.prompt(state, name, mode)
        try:
            return await self.complete(state, prompt, args, config, calls)
        except LMParseError:
            if mode != "chat":
                raise
            # DSPy's ChatAdapter asks once more in the JSON format when a chat reply does not parse
            return await self.complete(state, self.prompt(state, name, "json"), args, config, calls)

    async def complete(self, state: _Run, prompt: Prompt, args: dict[str, Any], config: LMConfig,
                       calls: list[LMCall]) -> dict[str, Any]:
        profile, model = self.endpoint(config)
        messages = prompt.messages(args)
        body = self.request_body(prompt, messages, config, profile, model)
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
        try:
            return self.parse(prompt, text)
        except LMParseError as exc:
            call.error = exc.to_dict()
            raise

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


def make_adapter(**kwargs: Any) -> IndependentAdapter:
    return IndependentAdapter(**kwargs)
