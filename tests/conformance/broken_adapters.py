"""Deliberately broken adapters: the conformance suite must fail each one and say what to fix.

Each wraps the native adapter and breaks one promise. The suite loads them by
``broken_adapters:<Factory>`` with this folder on ``PYTHONPATH`` (nothing is installed).
"""

from __future__ import annotations

from typing import Any

from stepbridge.adapter import RunOptions
from stepbridge.adapters.native import NativeAdapter
from stepbridge.errors import StepbridgeError
from stepbridge.program import Program
from stepbridge.result import RunResult


class _Wrapper:
    name = "broken"
    capabilities = NativeAdapter.capabilities

    def __init__(self) -> None:
        self.inner = NativeAdapter()

    async def prepare(self, program: Program) -> None:
        await self.inner.prepare(program)

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        return await self.inner.run(program, inputs, options)

    async def aclose(self) -> None:
        await self.inner.aclose()


class WrongOutputs(_Wrapper):
    """Returns every string output upper-cased."""

    name = "wrong-outputs"

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        result = await self.inner.run(program, inputs, options)
        outputs = {k: v.upper() if isinstance(v, str) else v for k, v in result.outputs.items()}
        return result.model_copy(update={"outputs": outputs})


class LostErrorType(_Wrapper):
    """Turns every typed error into a RuntimeError (as a careless process boundary would)."""

    name = "lost-error-type"

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        try:
            return await self.inner.run(program, inputs, options)
        except StepbridgeError as exc:
            raise RuntimeError(str(exc)) from None


class ClaimsDspyModules(_Wrapper):
    """Declares ``dspy_modules`` but cannot run DSPy modules."""

    name = "claims-dspy"
    capabilities = NativeAdapter.capabilities | {"dspy_modules"}


class IgnoresTimeout(_Wrapper):
    """Declares ``timeout`` but runs without any deadline."""

    name = "ignores-timeout"

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        return await self.inner.run(program, inputs, options.model_copy(update={"timeout": None}))


class HalfRunsUndeclared(_Wrapper):
    """Does not declare ``retrieve`` (so the core refuses such programs) but runs them anyway when called directly."""

    name = "half-runs"
    capabilities = NativeAdapter.capabilities - {"retrieve"}


# ==================================================================================================
# Mutants: single-bug variants of the independent adapter (independent_adapter.py), one realistic bug
# each. ``mutation.py`` runs the suite against every one of them and prints the mutation score; the
# suite must fail every mutant (and pass the independent adapter itself). Each mutant's docstring
# says what it breaks; ``BUG_CLASS`` names the class of bug it stands for.
# ==================================================================================================

import asyncio  # noqa: E402
import unicodedata  # noqa: E402

from independent_adapter import IndependentAdapter, _Run  # noqa: E402
from stepbridge.errors import LMParseError, RunTimeoutError, StepError  # noqa: E402
from stepbridge.formats import Prompt, chain_of_thought  # noqa: E402
from stepbridge.lm import LMProfile  # noqa: E402
from stepbridge.program import (  # noqa: E402
    ChainOfThoughtModule,
    LMConfig,
    MapStep,
    PredictModule,
    ToolModule,
)
from stepbridge.result import LMCall, StepTrace  # noqa: E402
from stepbridge.signature import Signature  # noqa: E402


class Mutant(IndependentAdapter):
    BUG_CLASS = "?"


# -- LM settings and the request body -------------------------------------------------------------
class IgnoresModuleLM(Mutant):
    """A module's own ``lm`` settings (temperature, max_tokens, model) are ignored: program defaults only."""

    BUG_CLASS = "sampling settings"

    def lm_config(self, program: Any, module: Any, options: RunOptions) -> LMConfig:
        config = program.lm or LMConfig()
        return config.merged(options.lm)


class IgnoresModuleTemperature(Mutant):
    """The module's temperature is dropped (its other settings apply)."""

    BUG_CLASS = "sampling settings"

    def lm_config(self, program: Any, module: Any, options: RunOptions) -> LMConfig:
        config = super().lm_config(program, module, options)
        if module.lm is not None and module.lm.temperature is not None and (
                options.lm is None or options.lm.temperature is None):
            config = config.model_copy(update={"temperature": program.lm.temperature if program.lm else None})
        return config


class NeverSendsMaxTokens(Mutant):
    """``max_tokens`` is never sent (only temperature)."""

    BUG_CLASS = "sampling settings"

    def request_body(self, prompt: Prompt, messages: Any, config: LMConfig, profile: LMProfile, model: str) -> Any:
        body = super().request_body(prompt, messages, config, profile, model)
        body.pop("max_tokens", None)
        return body


class DefaultTemperatureZero(Mutant):
    """Sends ``temperature: 0.0`` when nothing sets one (native sends none: the LM's default applies)."""

    BUG_CLASS = "sampling settings"

    def request_body(self, prompt: Prompt, messages: Any, config: LMConfig, profile: LMProfile, model: str) -> Any:
        body = super().request_body(prompt, messages, config, profile, model)
        body.setdefault("temperature", 0.0)
        return body


class DropsResponseFormat(Mutant):
    """JSON-format requests go out without ``response_format``."""

    BUG_CLASS = "response_format"

    def request_body(self, prompt: Prompt, messages: Any, config: LMConfig, profile: LMProfile, model: str) -> Any:
        body = super().request_body(prompt, messages, config, profile, model)
        body.pop("response_format", None)
        return body


class JsonModeInsteadOfSchema(Mutant):
    """JSON-format requests ask for JSON mode (``{"type": "json_object"}``) instead of DSPy's strict schema."""

    BUG_CLASS = "response_format"

    def request_body(self, prompt: Prompt, messages: Any, config: LMConfig, profile: LMProfile, model: str) -> Any:
        body = super().request_body(prompt, messages, config, profile, model)
        if "response_format" in body:
            body["response_format"] = {"type": "json_object"}
        return body


class SendsProviderPrefix(Mutant):
    """Sends the model as ``openai/<model>`` instead of ``<model>`` (DSPy strips the provider)."""

    BUG_CLASS = "request body"

    def wire_model(self, model: str) -> str:
        return model


class ModuleBeatsRun(Mutant):
    """LM precedence inverted: a module's ``lm`` beats the run-time override (run < module)."""

    BUG_CLASS = "LM precedence"

    def lm_config(self, program: Any, module: Any, options: RunOptions) -> LMConfig:
        return (program.lm or LMConfig()).merged(options.lm).merged(module.lm)


class ProgramBeatsModule(Mutant):
    """LM precedence inverted: program defaults beat the module's settings."""

    BUG_CLASS = "LM precedence"

    def lm_config(self, program: Any, module: Any, options: RunOptions) -> LMConfig:
        return (module.lm or LMConfig()).merged(program.lm).merged(options.lm)


class RunOverrideReplacesAll(Mutant):
    """A run-time override replaces the whole LM config (its unset fields erase program and module settings)."""

    BUG_CLASS = "LM precedence"

    def lm_config(self, program: Any, module: Any, options: RunOptions) -> LMConfig:
        if options.lm is not None:
            return options.lm
        return super().lm_config(program, module, options)


class IgnoresRunOverride(Mutant):
    """``RunOptions.lm`` is ignored."""

    BUG_CLASS = "LM precedence"

    def lm_config(self, program: Any, module: Any, options: RunOptions) -> LMConfig:
        return (program.lm or LMConfig()).merged(module.lm)


# -- parsing --------------------------------------------------------------------------------------
def _loosened(signature: Signature, kinds: set[str]) -> Signature:
    outputs = {n: (s.model_copy(update={"type": "str"}) if s.type_expr.kind in kinds else s)
               for n, s in signature.outputs.items()}
    return signature.model_copy(update={"outputs": outputs})


class LenientLiteral(Mutant):
    """Literal outputs are parsed as plain strings: a value outside the set is accepted."""

    BUG_CLASS = "lenient parsing"

    def parse(self, prompt: Prompt, text: str) -> dict[str, Any]:
        loose = Prompt(_loosened(prompt.signature, {"literal"}), prompt.demos, prompt.adapter)
        return loose.parse(text)


class LenientNumbers(Mutant):
    """An int/float output that does not parse becomes ``None`` instead of a parse error."""

    BUG_CLASS = "lenient parsing"

    def parse(self, prompt: Prompt, text: str) -> dict[str, Any]:
        try:
            return prompt.parse(text)
        except LMParseError:
            loose = Prompt(_loosened(prompt.signature, {"int", "float"}), prompt.demos, prompt.adapter)
            values = loose.parse(text)
            for name, spec in prompt.signature.outputs.items():
                if spec.type_expr.kind in ("int", "float"):
                    try:
                        values[name] = int(values[name]) if spec.type_expr.kind == "int" else float(values[name])
                    except (TypeError, ValueError):
                        values[name] = None
            return values


class NoJsonFallback(Mutant):
    """No second try in the JSON format when a chat reply does not parse."""

    BUG_CLASS = "parsing"

    async def predict(self, state: _Run, name: str, module: Any, args: dict[str, Any], calls: list[LMCall]) -> Any:
        config = self.lm_config(state.program, module, state.options)
        return await self.complete(state, self.prompt(state, name, config.adapter or "chat"), args, config, calls)


class RetriesParseErrors(Mutant):
    """A reply that does not parse is asked for again (up to 3 times) before giving up."""

    BUG_CLASS = "parsing"

    async def complete(self, state: _Run, prompt: Prompt, args: dict[str, Any], config: LMConfig,
                       calls: list[LMCall]) -> dict[str, Any]:
        for _ in range(2):
            try:
                return await super().complete(state, prompt, args, config, calls)
            except LMParseError:
                pass
        return await super().complete(state, prompt, args, config, calls)


# -- prompts --------------------------------------------------------------------------------------
class IgnoresDemos(Mutant):
    """Few-shot demos are left out of the prompt."""

    BUG_CLASS = "prompt"

    def prompt(self, state: _Run, name: str, mode: str) -> Prompt:
        prompt = super().prompt(state, name, mode)
        return Prompt(prompt.signature, [], prompt.adapter)


class IgnoresInstructions(Mutant):
    """A module's ``instructions`` are ignored (the signature's own instructions are used)."""

    BUG_CLASS = "prompt"

    def prompt(self, state: _Run, name: str, mode: str) -> Prompt:
        module = state.program.modules[name]
        assert isinstance(module, PredictModule | ChainOfThoughtModule)
        signature = module.signature
        if isinstance(module, ChainOfThoughtModule):
            signature = chain_of_thought(signature)
        return Prompt(signature, module.demos, "json" if mode == "json" else "chat")


class CotAsPredict(Mutant):
    """chain_of_thought runs like predict (no ``reasoning`` output in the prompt)."""

    BUG_CLASS = "prompt"

    def prompt(self, state: _Run, name: str, mode: str) -> Prompt:
        module = state.program.modules[name]
        assert isinstance(module, PredictModule | ChainOfThoughtModule)
        signature = module.signature if module.instructions is None else module.signature.with_instructions(
            module.instructions)
        return Prompt(signature, module.demos, "json" if mode == "json" else "chat")


class InputFieldsSorted(Mutant):
    """Input fields are formatted in alphabetical order instead of the signature's order."""

    BUG_CLASS = "prompt"

    def prompt(self, state: _Run, name: str, mode: str) -> Prompt:
        prompt = super().prompt(state, name, mode)
        signature = prompt.signature.model_copy(update={"inputs": dict(sorted(prompt.signature.inputs.items()))})
        return Prompt(signature, prompt.demos, prompt.adapter)


class StripsInputs(Mutant):
    """Text inputs lose leading and trailing whitespace."""

    BUG_CLASS = "inputs"

    def input_value(self, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value


class NormalisesUnicode(Mutant):
    """Text inputs are NFC-normalised (``e`` + combining accent becomes ``é``)."""

    BUG_CLASS = "inputs"

    def input_value(self, value: Any) -> Any:
        return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


class TruncatesLongInputs(Mutant):
    """Text inputs are cut at 100,000 characters."""

    BUG_CLASS = "inputs"

    def input_value(self, value: Any) -> Any:
        return value[:100_000] if isinstance(value, str) else value


# -- outputs --------------------------------------------------------------------------------------
class OutputsByPosition(Mutant):
    """Program outputs are taken from the return step by position, not by name."""

    BUG_CLASS = "outputs"

    def outputs_of(self, program: Any, returned: dict[str, Any]) -> dict[str, Any]:
        return dict(zip(program.signature.outputs, returned.values(), strict=False))


class IntsBecomeFloats(Mutant):
    """Outputs pass through an encoder that writes every number as a float (``3`` becomes ``3.0``)."""

    BUG_CLASS = "outputs"

    def outputs_of(self, program: Any, returned: dict[str, Any]) -> dict[str, Any]:
        def floats(v: Any) -> Any:
            if isinstance(v, bool):
                return v
            if isinstance(v, int):
                return float(v)
            if isinstance(v, list):
                return [floats(x) for x in v]
            if isinstance(v, dict):
                return {k: floats(x) for k, x in v.items()}
            return v

        return {k: floats(v) for k, v in super().outputs_of(program, returned).items()}


class ToolOutputsByPosition(Mutant):
    """A tool's dict result is mapped to its output fields by position, not by key."""

    BUG_CLASS = "outputs"

    async def call_tool(self, state: _Run, name: str, module: ToolModule, args: dict[str, Any]) -> dict[str, Any]:
        tool = state.plan.tools[name]
        value = await tool.func(**args) if tool.is_async else await asyncio.to_thread(tool.func, **args)
        outputs = list((module.signature or tool.signature).outputs)
        if isinstance(value, dict):
            return dict(zip(outputs, value.values(), strict=False))
        return {outputs[0]: value}


# -- map ------------------------------------------------------------------------------------------
class MapCompletionOrder(Mutant):
    """``map`` results are collected in completion order instead of input order."""

    BUG_CLASS = "map order"

    async def run_map(self, state: _Run, index: int, step: MapStep, items: list[Any], scope: dict[str, Any],
                      children: list[StepTrace]) -> list[Any]:
        limit = asyncio.Semaphore(step.concurrency or self.map_concurrency)

        async def element(item: Any) -> Any:
            async with limit:
                args = self.resolve(step.with_, {**scope, step.item: item})
                record = StepTrace(step=index, kind="call", module=step.map, inputs=args)
                record.outputs = await self.call_module(state, step.map, args, record.lm_calls)
                children.append(record)
                return record.outputs

        return [await done for done in asyncio.as_completed([element(i) for i in items])]


class MapLeavesSiblingsRunning(Mutant):
    """When a ``map`` element fails, the other elements keep running (and calling the LM / tools) to the end."""

    BUG_CLASS = "map failure"

    async def run_map(self, state: _Run, index: int, step: MapStep, items: list[Any], scope: dict[str, Any],
                      children: list[StepTrace]) -> list[Any]:
        limit = asyncio.Semaphore(step.concurrency or self.map_concurrency)
        failed: list[BaseException] = []

        async def element(item: Any) -> Any:
            async with limit:
                args = self.resolve(step.with_, {**scope, step.item: item})
                record = StepTrace(step=index, kind="call", module=step.map, inputs=args)
                children.append(record)
                try:
                    record.outputs = await self.call_module(state, step.map, args, record.lm_calls)
                except Exception as exc:
                    record.error = self.typed(exc).to_dict()
                    failed.append(exc)
                    raise
                return record.outputs

        tasks = [asyncio.ensure_future(element(i)) for i in items]
        if not tasks:
            return []
        done = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        del done
        if failed:
            raise failed[0]  # the other elements go on running in the background
        return [t.result() for t in tasks]


class MapIgnoresConcurrency(Mutant):
    """A ``map`` step's ``concurrency`` limit is ignored: every element starts at once."""

    BUG_CLASS = "map"

    map_concurrency = 10_000

    async def run_map(self, state: _Run, index: int, step: MapStep, items: list[Any], scope: dict[str, Any],
                      children: list[StepTrace]) -> list[Any]:
        unlimited = step.model_copy(update={"concurrency": None})
        return await super().run_map(state, index, unlimited, items, scope, children)


class MapChildrenCompletionOrder(Mutant):
    """A ``map`` step's child trace records are in completion order (results are right)."""

    BUG_CLASS = "trace"

    async def run_map(self, state: _Run, index: int, step: MapStep, items: list[Any], scope: dict[str, Any],
                      children: list[StepTrace]) -> list[Any]:
        mine: list[StepTrace] = []
        try:
            return await super().run_map(state, index, step, items, scope, mine)
        finally:
            children.extend(sorted(mine, key=lambda r: r.duration_ms))


# -- traces, usage ---------------------------------------------------------------------------------
class FailedStepLosesLMCalls(Mutant):
    """A failed step's trace record has no LM calls (the chat try and the JSON fallback are lost)."""

    BUG_CLASS = "failed-step trace"

    def step_error(self, index: int, module: str | None, cause: Any, trace: list[StepTrace]) -> StepError:
        if trace and trace[-1].step == index:
            trace[-1].lm_calls = []
        return super().step_error(index, module, cause, trace)


class KeepsOnlyLastLMCall(Mutant):
    """Only a step's last LM call is traced (a chat try followed by the JSON fallback shows one call)."""

    BUG_CLASS = "failed-step trace"

    async def predict(self, state: _Run, name: str, module: Any, args: dict[str, Any], calls: list[LMCall]) -> Any:
        try:
            return await super().predict(state, name, module, args, calls)
        finally:
            del calls[:-1]


class ZeroTokenUsage(Mutant):
    """Token counts are never added up (usage.lm_calls is right, tokens stay 0)."""

    BUG_CLASS = "usage"

    def count_usage(self, state: _Run, usage: dict[str, Any]) -> None:
        state.usage.lm_calls += 1


class MapUsageNotCounted(Mutant):
    """LM usage inside ``map`` elements is not added to the run's usage."""

    BUG_CLASS = "usage"

    async def run_map(self, state: _Run, index: int, step: MapStep, items: list[Any], scope: dict[str, Any],
                      children: list[StepTrace]) -> list[Any]:
        before = state.usage.model_copy()
        try:
            return await super().run_map(state, index, step, items, scope, children)
        finally:
            state.usage = before


class CompletionTokensAsTotal(Mutant):
    """Reads ``total_tokens`` as the completion count (usage fields mixed up)."""

    BUG_CLASS = "usage"

    def count_usage(self, state: _Run, usage: dict[str, Any]) -> None:
        super().count_usage(state, {**usage, "completion_tokens": usage.get("total_tokens", 0)})


class NoReturnRecord(Mutant):
    """The trace has no record for the return step."""

    BUG_CLASS = "trace"

    async def execute(self, state: _Run, inputs: dict[str, Any]) -> dict[str, Any]:
        outputs = await super().execute(state, inputs)
        if state.trace and state.trace[-1].kind == "return":
            state.trace.pop()
        return outputs


class TracesMessagesWithoutSystem(Mutant):
    """Traced LM calls hold only the user messages (the system message is dropped from the trace)."""

    BUG_CLASS = "trace"

    async def complete(self, state: _Run, prompt: Prompt, args: dict[str, Any], config: LMConfig,
                       calls: list[LMCall]) -> dict[str, Any]:
        try:
            return await super().complete(state, prompt, args, config, calls)
        finally:
            for call in calls:
                call.messages = [m for m in call.messages if m.get("role") != "system"]


# -- concurrency, caches --------------------------------------------------------------------------
class SharedScope(Mutant):
    """Run state lives on the adapter (one scope dict reused by every run): concurrent runs see each other's
    inputs and step results."""

    BUG_CLASS = "shared state"

    def new_scope(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if not hasattr(self, "_scope"):
            self._scope: dict[str, Any] = {}
        self._scope["inputs"] = inputs
        return self._scope


class PlanCacheByName(Mutant):
    """Prepared plans (prompts, tools, retrievers) are cached by program name, not content."""

    BUG_CLASS = "plan cache"

    def plan_key(self, program: Any) -> tuple[str, str]:
        return program.name, ""


class PlanCacheIgnoresFolder(Mutant):
    """Prepared plans are keyed by content hash only: the same program beside another corpus reuses the old index."""

    BUG_CLASS = "plan cache"

    def plan_key(self, program: Any) -> tuple[str, str]:
        return program.content_hash, ""


# -- side effects, retries -------------------------------------------------------------------------
class RetriesFailedTools(Mutant):
    """A tool call that raises is retried (up to 3 times), side effects or not."""

    BUG_CLASS = "side effects"

    async def call_tool(self, state: _Run, name: str, module: ToolModule, args: dict[str, Any]) -> dict[str, Any]:
        for _ in range(2):
            try:
                return await super().call_tool(state, name, module, args)
            except Exception:
                continue
        return await super().call_tool(state, name, module, args)


class RetriesFailedRuns(Mutant):
    """A run that fails with a StepError is run once more from the start."""

    BUG_CLASS = "side effects"

    async def execute(self, state: _Run, inputs: dict[str, Any]) -> dict[str, Any]:
        try:
            return await super().execute(state, inputs)
        except StepError:
            state.trace.clear()
            return await super().execute(state, inputs)


class NoRetryOnTransientErrors(Mutant):
    """429 and 5xx answers are not retried."""

    BUG_CLASS = "LM errors"

    async def send(self, profile: LMProfile, body: dict[str, Any]) -> dict[str, Any]:
        return await self.post(profile, body)


class RetriesIgnoreProfile(Mutant):
    """Transient LM errors are retried a hard-coded 5 times instead of the profile's ``max_retries``."""

    BUG_CLASS = "LM errors"

    async def send(self, profile: LMProfile, body: dict[str, Any]) -> dict[str, Any]:
        return await super().send(profile.model_copy(update={"max_retries": 5}), body)


# -- errors -----------------------------------------------------------------------------------------
class CauseUntyped(Mutant):
    """A failed step's cause becomes a plain StepbridgeError (its type and details are lost)."""

    BUG_CLASS = "errors"

    @staticmethod
    def typed(exc: BaseException) -> Any:
        from stepbridge.errors import StepbridgeError

        return StepbridgeError(f"{type(exc).__name__}: {exc}")


class NoPartialTrace(Mutant):
    """StepError is raised without the trace of the steps run so far."""

    BUG_CLASS = "errors"

    def step_error(self, index: int, module: str | None, cause: Any, trace: list[StepTrace]) -> StepError:
        return StepError(f"step {index} failed: {cause}", step=index, module=module, cause=cause)


class StepIndexFromOne(Mutant):
    """StepError.step counts steps from 1."""

    BUG_CLASS = "errors"

    def step_error(self, index: int, module: str | None, cause: Any, trace: list[StepTrace]) -> StepError:
        return super().step_error(index + 1, module, cause, trace)


class LMErrorLosesStatus(Mutant):
    """LMError.status is dropped when the error is raised."""

    BUG_CLASS = "errors"

    async def post(self, profile: LMProfile, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await super().post(profile, body)
        except LMParseError:
            raise
        except Exception as exc:
            from stepbridge.errors import LMError

            if isinstance(exc, LMError):
                raise LMError(exc.message, retriable=exc.retriable) from None
            raise


# -- timeouts, cancellation, lifecycle --------------------------------------------------------------
class TimeoutPerLMCall(Mutant):
    """RunOptions.timeout bounds each LM call, not the whole run."""

    BUG_CLASS = "timeout"

    async def run(self, program: Any, inputs: dict[str, Any], options: RunOptions) -> Any:
        self._per_call = options.timeout
        return await super().run(program, inputs, options.model_copy(update={"timeout": None}))

    async def post(self, profile: LMProfile, body: dict[str, Any]) -> dict[str, Any]:
        limit = getattr(self, "_per_call", None)
        try:
            async with asyncio.timeout(limit):
                return await super().post(profile, body)
        except TimeoutError:
            raise RunTimeoutError(f"LM call exceeded {limit}s", timeout=limit) from None


class TimeoutReportsRemaining(Mutant):
    """RunTimeoutError.timeout is not the run's timeout (it reports the budget left, 0)."""

    BUG_CLASS = "timeout"

    async def run(self, program: Any, inputs: dict[str, Any], options: RunOptions) -> Any:
        try:
            return await super().run(program, inputs, options)
        except RunTimeoutError as exc:
            raise RunTimeoutError(exc.message, timeout=0.0, trace=exc.trace) from None


class TimeoutWithoutTrace(Mutant):
    """RunTimeoutError carries no partial trace."""

    BUG_CLASS = "timeout"

    async def run(self, program: Any, inputs: dict[str, Any], options: RunOptions) -> Any:
        try:
            return await super().run(program, inputs, options)
        except RunTimeoutError as exc:
            raise RunTimeoutError(exc.message, timeout=exc.timeout) from None


class CancelLeavesTask(Mutant):
    """The run is a background task the caller only waits for: cancelling the caller leaves it calling the LM."""

    BUG_CLASS = "cancel"

    async def run(self, program: Any, inputs: dict[str, Any], options: RunOptions) -> Any:
        task = asyncio.ensure_future(super().run(program, inputs, options))
        self._background = getattr(self, "_background", set())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return await asyncio.shield(task)


class CancelReturnsPartial(Mutant):
    """Cancelling a run makes it return what it has instead of raising CancelledError."""

    BUG_CLASS = "cancel"

    async def run(self, program: Any, inputs: dict[str, Any], options: RunOptions) -> Any:
        try:
            return await super().run(program, inputs, options)
        except asyncio.CancelledError:
            return RunResult(outputs={}, backend=self.name, program_hash=program.content_hash,
                             execution_id=options.execution_id)


class AcloseKeepsConnections(Mutant):
    """``aclose`` forgets its HTTP clients without closing them (connections stay open)."""

    BUG_CLASS = "aclose"

    async def aclose(self) -> None:
        self._leaked = list(self._clients.values())
        self._clients = {}


class ClosesClientOnError(Mutant):
    """An LM error closes the HTTP client, so the next run on this adapter fails."""

    BUG_CLASS = "recovery"

    async def send(self, profile: LMProfile, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await super().send(profile, body)
        except Exception:
            for client in self._clients.values():
                await client.aclose()
            raise


# -- the protocol -------------------------------------------------------------------------------------
class OwnExecutionId(Mutant):
    """RunResult.execution_id is the adapter's own, not RunOptions.execution_id."""

    BUG_CLASS = "result"

    async def run(self, program: Any, inputs: dict[str, Any], options: RunOptions) -> Any:
        result = await super().run(program, inputs, options)
        return result.model_copy(update={"execution_id": "x" + options.execution_id[1:]})


class HalfRunsUndeclaredCapability(Mutant):
    """Does not declare ``tools`` but runs tool programs when called directly (no capability check)."""

    BUG_CLASS = "capabilities"

    capabilities = IndependentAdapter.capabilities - {"tools"}

    def plan_for(self, program: Any) -> Any:
        saved = type(self).capabilities
        type(self).capabilities = IndependentAdapter.capabilities
        try:
            return super().plan_for(program)
        finally:
            type(self).capabilities = saved


class ClaimsDspyModulesIndependent(Mutant):
    """Declares ``dspy_modules`` and cannot run them."""

    BUG_CLASS = "capabilities"

    capabilities = IndependentAdapter.capabilities | {"dspy_modules"}


class ChecksCapabilitiesAfterFirstStep(Mutant):
    """Checks capabilities only when it reaches a step that needs one (runs the steps before it)."""

    BUG_CLASS = "capabilities"

    capabilities = IndependentAdapter.capabilities - {"retrieve"}

    def plan_for(self, program: Any) -> Any:
        saved = type(self).capabilities
        type(self).capabilities = IndependentAdapter.capabilities
        try:
            return super().plan_for(program)
        finally:
            type(self).capabilities = saved

    async def call_module(self, state: _Run, name: str, args: dict[str, Any], calls: list[LMCall]) -> Any:
        from stepbridge.errors import UnsupportedCapabilityError

        if state.program.modules[name].type == "retrieve":
            raise UnsupportedCapabilityError("retrieve is not supported", capability="retrieve", adapter=self.name)
        return await super().call_module(state, name, args, calls)


# -- more realistic bugs -------------------------------------------------------------------------------------------
class FallbackWithoutResponseFormat(Mutant):
    """The JSON-format retry after a chat parse error is sent without ``response_format`` (JSON-adapter
    modules still send it)."""

    BUG_CLASS = "response_format"

    async def predict(self, state: _Run, name: str, module: Any, args: dict[str, Any], calls: list[LMCall]) -> Any:
        config = self.lm_config(state.program, module, state.options)
        mode = config.adapter or "chat"
        try:
            return await self.complete(state, self.prompt(state, name, mode), args, config, calls)
        except LMParseError:
            if mode != "chat":
                raise
            self._bare = True
            try:
                return await self.complete(state, self.prompt(state, name, "json"), args, config, calls)
            finally:
                self._bare = False

    def request_body(self, prompt: Prompt, messages: Any, config: LMConfig, profile: LMProfile, model: str) -> Any:
        body = super().request_body(prompt, messages, config, profile, model)
        if getattr(self, "_bare", False):
            body.pop("response_format", None)
        return body


class TraceInputsUnresolved(Mutant):
    """A call step's trace record holds its ``with`` map as written (``$inputs.question``), not the values."""

    BUG_CLASS = "trace"

    async def execute(self, state: _Run, inputs: dict[str, Any]) -> dict[str, Any]:
        try:
            return await super().execute(state, inputs)
        finally:
            for record, step in zip(state.trace, state.program.steps, strict=False):
                if record.kind == "call":
                    record.inputs = dict(getattr(step, "with_", {}))


class UsageSkipsUnparsedReplies(Mutant):
    """Token usage is counted only for replies that parsed (a chat reply that failed, then the JSON retry,
    counts once)."""

    BUG_CLASS = "usage"

    def parse(self, prompt: Prompt, text: str) -> dict[str, Any]:
        return prompt.parse(text)

    async def complete(self, state: _Run, prompt: Prompt, args: dict[str, Any], config: LMConfig,
                       calls: list[LMCall]) -> dict[str, Any]:
        before = state.usage.model_copy()
        try:
            return await super().complete(state, prompt, args, config, calls)
        except LMParseError:
            state.usage = before
            raise


class CachesFirstRunOverride(Mutant):
    """A module's effective LM settings are computed on its first call and cached: a later run's override is
    ignored (and the first run's sticks)."""

    BUG_CLASS = "LM precedence"

    def lm_config(self, program: Any, module: Any, options: RunOptions) -> LMConfig:
        cache = self.__dict__.setdefault("_configs", {})
        key = (program.content_hash, id(module))
        if key not in cache:
            cache[key] = super().lm_config(program, module, options)
        return cache[key]


class CotStepDropsReasoning(Mutant):
    """A chain_of_thought step's outputs leave out ``reasoning`` (the program outputs are right)."""

    BUG_CLASS = "trace"

    async def predict(self, state: _Run, name: str, module: Any, args: dict[str, Any], calls: list[LMCall]) -> Any:
        outputs = await super().predict(state, name, module, args, calls)
        if isinstance(module, ChainOfThoughtModule):
            outputs = {k: v for k, v in outputs.items() if k != "reasoning"}
        return outputs


class DemosReversed(Mutant):
    """Few-shot demos are sent newest first."""

    BUG_CLASS = "prompt"

    def prompt(self, state: _Run, name: str, mode: str) -> Prompt:
        prompt = super().prompt(state, name, mode)
        return Prompt(prompt.signature, list(reversed(prompt.demos)), prompt.adapter)


class RetrieveIgnoresK(Mutant):
    """A retrieve module returns 3 passages whatever its ``k``."""

    BUG_CLASS = "outputs"

    async def call_module(self, state: _Run, name: str, args: dict[str, Any], calls: list[LMCall]) -> Any:
        module = state.program.modules[name]
        if module.type == "retrieve":
            hits = state.plan.retrievers[name].search(str(args["query"]), 3)
            return {"passages": list(hits.passages), "ids": list(hits.ids), "scores": list(hits.scores)}
        return await super().call_module(state, name, args, calls)


class DollarEscapeKept(Mutant):
    """A ``$$`` in a step argument reaches the module as ``$$`` (the escape is not undone)."""

    BUG_CLASS = "inputs"

    def resolve(self, value: Any, scope: dict[str, Any]) -> Any:
        if isinstance(value, str) and value.startswith("$$"):
            return value
        return super().resolve(value, scope)


class SequentialMap(Mutant):
    """A ``map`` step runs its elements one after another."""

    BUG_CLASS = "map"

    async def run_map(self, state: _Run, index: int, step: MapStep, items: list[Any], scope: dict[str, Any],
                      children: list[StepTrace]) -> list[Any]:
        return await super().run_map(state, index, step.model_copy(update={"concurrency": 1}), items, scope, children)


class SyncToolsOnTheLoop(Mutant):
    """Synchronous tools are called directly on the event loop (blocking it) instead of in a thread."""

    BUG_CLASS = "concurrency"

    async def call_tool(self, state: _Run, name: str, module: ToolModule, args: dict[str, Any]) -> dict[str, Any]:
        tool = state.plan.tools[name]
        if tool.is_async:
            return await super().call_tool(state, name, module, args)
        value = tool.func(**args)
        outputs = list((module.signature or tool.signature).outputs)
        if isinstance(value, dict) and set(outputs) <= set(value):
            return {k: value[k] for k in outputs}
        return {outputs[0]: value}


class SerializedRuns(Mutant):
    """One lock around ``run``: runs awaited at once run one after another."""

    BUG_CLASS = "concurrency"

    async def run(self, program: Any, inputs: dict[str, Any], options: RunOptions) -> Any:
        lock = self.__dict__.setdefault("_lock", asyncio.Lock())
        async with lock:
            return await super().run(program, inputs, options)


class TimeoutLeavesTask(Mutant):
    """On timeout the caller gets RunTimeoutError, but the run's work goes on in the background."""

    BUG_CLASS = "timeout"

    async def run(self, program: Any, inputs: dict[str, Any], options: RunOptions) -> Any:
        if options.timeout is None:
            return await super().run(program, inputs, options)
        plan = self.plan_for(program)
        state = _Run(program, options, plan)
        task = asyncio.ensure_future(self.execute(state, inputs))
        self.__dict__.setdefault("_background", set()).add(task)
        try:
            outputs = await asyncio.wait_for(asyncio.shield(task), options.timeout)
        except TimeoutError:
            raise RunTimeoutError(f"timed out after {options.timeout}s", timeout=options.timeout,
                                  trace=list(state.trace)) from None
        return RunResult(outputs=outputs, trace=state.trace, usage=state.usage, backend=self.name,
                         program_hash=program.content_hash, execution_id=options.execution_id)


# -- format 2 -------------------------------------------------------------------------------------------------------
class IfConditionAsText(Mutant):
    """An ``if`` reads its condition as text: a false computed by ``$or``/``$eq`` is the non-empty "False", so the
    ``then`` arm runs."""

    BUG_CLASS = "control flow"

    @staticmethod
    def holds(condition: Any) -> bool:
        return bool(str(condition)) if condition is not None else False


class SwitchFirstLiteralOnly(Mutant):
    """A ``switch`` case with several literals (``when: [technical, sales]``) matches only its first one."""

    BUG_CLASS = "control flow"

    @staticmethod
    def case_literals(when: Any) -> list[Any]:
        return [when[0]] if isinstance(when, list) and when else [when]


class LoopIgnoresUntil(Mutant):
    """A loop never checks ``until``: it always makes ``max`` passes."""

    BUG_CLASS = "control flow"

    @staticmethod
    def until_of(spec: Any) -> Any:
        return None


class LoopOneShort(Mutant):
    """Off by one: a loop makes one pass fewer than it should (``range(n - 1)``), so a loop ``over`` a list skips
    its last element."""

    BUG_CLASS = "control flow"

    def loop_passes(self, spec: Any, items: list[Any] | None) -> range:
        return range(max(0, len(super().loop_passes(spec, items)) - 1))


class SetAssignsOneByOne(Mutant):
    """A ``set`` binds each value as soon as it is computed, so ``{x: $y, y: $x}`` does not swap."""

    BUG_CLASS = "control flow"

    def assign(self, state: _Run, step: Any, scope: dict[str, Any], index: int, pointer: str,
               passes: tuple[int, ...]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, raw in step.set.items():
            values[key] = scope[key] = self.value(state, raw, f"{pointer}/set/{key}")(scope)
        return values


class LoopOverPastMax(Mutant):
    """A loop ``over`` a list longer than its ``max`` runs over all of it instead of failing the step."""

    BUG_CLASS = "control flow"

    @staticmethod
    def over_problem(spec: Any, items: Any) -> str | None:
        return None if isinstance(items, list) else f"'over' is {type(items).__name__}, not a list"


class ReactIgnoresMaxIters(Mutant):
    """A react agent takes DSPy's default of 20 tool calls, not the module's ``max_iters``."""

    BUG_CLASS = "agents"

    @staticmethod
    def agent_steps(module: Any) -> int:
        return 20


class ParallelOneAfterAnother(Mutant):
    """A ``parallel`` step awaits its calls one after another."""

    BUG_CLASS = "parallel"

    async def gather_calls(self, calls: list[Any]) -> list[Any]:
        results = []
        for i, call in enumerate(calls):
            try:
                results.append(await call)
            except BaseException:
                for rest in calls[i + 1:]:
                    rest.close()
                raise
        return results


class ParallelLeavesSiblingsRunning(Mutant):
    """A ``parallel`` step fails on the first failure but leaves the other calls running (their side effects
    happen after the run failed)."""

    BUG_CLASS = "parallel"

    async def gather_calls(self, calls: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*calls))


class ParallelCompletionOrder(Mutant):
    """A ``parallel`` step binds its results in the order the calls finished, not the order they are written."""

    BUG_CLASS = "parallel"

    def bind_parallel(self, step: Any, results: list[Any], finished: list[int], scope: dict[str, Any]) -> None:
        super().bind_parallel(step, [results[i] for i in finished], finished, scope)


class ReactToolErrorRaises(Mutant):
    """A react agent's failing tool fails the step, instead of becoming the observation the agent sees next."""

    BUG_CLASS = "agents"

    async def observation(self, specs: dict[str, Any], tool_name: str, tool_args: Any) -> Any:
        return await specs[tool_name].acall(tool_args)


class BestOfNIgnoresThreshold(Mutant):
    """best_of_n always makes its ``n`` attempts: an attempt reaching the threshold does not end it."""

    BUG_CLASS = "ensembles"

    def attempt_wins(self, reward: Any, threshold: float) -> bool:
        return False


class ComparisonAtProgramTemperature(Mutant):
    """multi_chain_comparison sends the program's temperature instead of its own 0.7 (``dspy.MultiChainComparison``'s
    ``temperature=0.7``)."""

    BUG_CLASS = "ensembles"

    async def ask(self, state: _Run, config: Any, prompt_of: Any, args: dict[str, Any], calls: list[LMCall],
                  predictor: str, own_temperature: float | None = None) -> dict[str, Any]:
        return await super().ask(state, config, prompt_of, args, calls, predictor)


class ObjectFieldsDropped(Mutant):
    """Parsed objects lose their fields whose value is null (``model_dump(exclude_none=True)``)."""

    BUG_CLASS = "typed objects"

    def parse(self, prompt: Prompt, text: str) -> dict[str, Any]:
        def drop(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: drop(v) for k, v in value.items() if v is not None}
            if isinstance(value, list):
                return [drop(v) for v in value]
            return value

        return {k: drop(v) if isinstance(v, dict | list) else v for k, v in super().parse(prompt, text).items()}


MUTANTS: list[type[Mutant]] = [obj for obj in list(globals().values())
                               if isinstance(obj, type) and issubclass(obj, Mutant) and obj is not Mutant]
