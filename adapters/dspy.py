"""The DSPy adapter: a program becomes a real ``dspy.Module`` and runs on ``dspy.LM``.

``prepare(program)`` builds a :class:`ProgramModule` — a ``dspy.Module`` whose sub-modules are
real ``dspy.Predict`` / ``dspy.ChainOfThought`` objects named after the program's modules (so
``named_predictors()`` and DSPy's optimizers see them, with their instructions and demos), plus
small DSPy modules for retrieval and tools (calling the same implementations as the native
executor) and registered DSPy modules (``dspy`` type, loaded from their JSON state). Its
``forward`` / ``aforward`` interpret the program's steps, so it runs under plain DSPy too.

Runs
----
* **LM.** The effective LM config (program < module < run) is resolved against the operator's LM
  profiles exactly like the native executor (:func:`stepbridge.lm.resolve_profile`) and becomes a
  ``dspy.LM("openai/<model>", api_base=profile.base_url, api_key=$<api_key_env>, temperature,
  max_tokens, num_retries, timeout, cache=False)``. Every profile endpoint is OpenAI-compatible, so
  the model is always addressed through DSPy's ``openai/`` provider: the request goes to the
  operator's endpoint and never to a provider a program file names.
* **No profile configured.** The native executor calls the reference model in-process; DSPy needs
  an HTTP endpoint, so the adapter starts the reference LM server (:mod:`stepbridge.reference_lm`)
  on a free loopback port in a background thread it owns, on first use, and stops it in
  :meth:`DSPyAdapter.aclose`.
* **Isolation.** Each module call runs inside ``dspy.context(lm=..., adapter=...)`` (context
  variables: per thread and per asyncio task), never ``dspy.configure``; the LM is a
  ``dspy.LM.copy()`` made for that call (copies share connection pools but not history or
  callbacks), so concurrent runs from threads or tasks never see each other's settings or calls.
* **Async.** Predict / ChainOfThought / retrieve / tool steps use DSPy's async path (``acall``);
  a registered DSPy module without its own ``aforward`` runs in a bounded thread pool (the
  context is copied into the thread).
* **Trace.** Each LM call comes from the per-call LM's history (messages, raw response, usage)
  plus a callback for latency and failed calls; the trace has the native executor's shape.
* **Cache.** DSPy's response cache is off by default (a cache hit would make a run silently
  differ); ``DSPyAdapter(cache=True)`` or ``RunOptions(cache=True)`` turn it on.
* **Wire.** DSPy 3.4's default LM engine (``engine="auto"``, i.e. lm15 for OpenAI-compatible
  chat) is used, because that is what the same program written directly in DSPy sends. Its chat
  messages are byte-identical to the native executor's. The rest of the request body differs:
  lm15 sends ``max_completion_tokens`` where the native client and litellm send ``max_tokens``,
  and for JSON-adapter modules against an endpoint DSPy knows nothing about it sends no
  ``response_format`` (litellm sends ``{"type": "json_object"}``; the native client sends a
  strict JSON schema). ``DSPyAdapter(engine="litellm")`` selects litellm instead.

Offline: ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (litellm would fetch a cost map on first use) and a
DSPy cache directory under the user's cache folder are set (unless already set) before DSPy is
imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _offline_environment() -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if "DSPY_CACHEDIR" not in os.environ:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["DSPY_CACHEDIR"] = str(base / "stepbridge" / "dspy")


_offline_environment()

import dspy  # noqa: E402
from dspy.utils.callback import BaseCallback  # noqa: E402
from stepbridge.adapter import RunOptions  # noqa: E402
from stepbridge.errors import (  # noqa: E402
    ContextWindowExceededError,
    LMError,
    LMParseError,
    StepbridgeError,
    UnsupportedCapabilityError,
)
from stepbridge.field_values import FieldType  # noqa: E402
from stepbridge.formats import chain_of_thought, resolve_fields, to_dspy_signature  # noqa: E402
from stepbridge.interpreter import PlanStep, RunContext, execute, plan, run_plan  # noqa: E402
from stepbridge.lm import LMPool, LMProfile, load_profiles, resolve_profile  # noqa: E402
from stepbridge.program import (  # noqa: E402
    ChainOfThoughtModule,
    DspyModule,
    LMConfig,
    PredictModule,
    Program,
    RetrieveModule,
    ToolModule,
)
from stepbridge.react import json_data  # noqa: E402
from stepbridge.result import LMCall, RunResult  # noqa: E402
from stepbridge.secrets import register_url, scrub  # noqa: E402

__all__ = [
    "DSPyAdapter",
    "ProgramModule",
    "apply_state",
    "build_module",
    "from_dspy_error",
    "sanitize_state",
]

from . import dspy_lm_guard as lm_guard  # noqa: E402
from .dspy_agents import JUDGE_LMS  # noqa: E402

lm_guard.install()

DEFAULT_MAP_CONCURRENCY = 16
#: Format-2 module types: their outputs are made JSON data, their completions checked before the call.
_AGENT_TYPES = frozenset({"react", "best_of_n", "refine", "multi_chain_comparison"})
DEFAULT_THREADS = 32


# ================================================================================================
# Sub-modules for the non-LM module types
# ================================================================================================
class RetrieveStep(dspy.Module):
    """A program ``retrieve`` module as a DSPy module (the same BM25/plug-in retriever as native)."""

    def __init__(self, spec: RetrieveModule, base_dir: Path):
        super().__init__()
        self.spec = spec
        self.base_dir = base_dir

    def _search(self, query: Any) -> dict[str, Any]:
        from stepbridge.retrieve import make_retriever

        # make_retriever caches the index per process and corpus version.
        return make_retriever(self.spec.retriever, self.base_dir).search(str(query), self.spec.k).as_outputs()

    def forward(self, query: Any) -> dspy.Prediction:
        return dspy.Prediction(**self._search(query))

    async def aforward(self, query: Any) -> dspy.Prediction:
        return dspy.Prediction(**self._search(query))


class ToolStep(dspy.Module):
    """A registered tool as a DSPy module (the same tool registry as native)."""

    def __init__(self, spec: ToolModule):
        super().__init__()
        from stepbridge.registry import tools

        self.tool_name = spec.tool
        tool = tools.get(spec.tool)
        self.outputs = list((spec.signature or tool.signature).outputs)

    def _tool(self) -> Any:
        from stepbridge.registry import tools

        return tools.get(self.tool_name)

    def _shape(self, value: Any) -> dspy.Prediction:
        return dspy.Prediction(**self._tool().shape(value, self.outputs))

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        tool = self._tool()
        value = asyncio.run(tool.func(**kwargs)) if tool.is_async else tool.func(**kwargs)
        return self._shape(value)

    async def aforward(self, **kwargs: Any) -> dspy.Prediction:
        tool = self._tool()
        if tool.is_async:
            value = await tool.func(**kwargs)
        else:
            value = await asyncio.to_thread(tool.func, **kwargs)
        return self._shape(value)


def sanitize_state(state: Any) -> Any:
    """A DSPy module state reduced to what a program may carry (see :mod:`stepbridge.dspy_state`):
    per predictor its ``signature`` and ``demos``, with ``lm: null`` so DSPy's own ``load_state`` reads
    it. For states this process produced itself (import, export); a program's state is *checked* at
    validation and only its allowed parts are applied (:func:`apply_state`)."""
    if not isinstance(state, dict):
        raise TypeError("a DSPy module state must be a JSON object")

    def predictor(entry: dict[str, Any]) -> dict[str, Any]:
        return {**{k: entry[k] for k in ("signature", "demos") if k in entry}, "lm": None}

    if "signature" in state or "demos" in state:  # a bare predictor's state
        return predictor(state)
    return {name: predictor(entry) if isinstance(entry, dict) else entry
            for name, entry in state.items() if name != "metadata"}


def apply_state(module: dspy.Module, state: dict[str, Any], *, where: str = "") -> None:
    """Set the signature text and demos a checked state gives ``module``'s predictors; nothing else.

    The state is checked again against the module's real shape (a program reaching here unvalidated
    is refused the same way, with pointers)."""
    from stepbridge.dspy_state import module_shape, predictor_parts, state_problems
    from stepbridge.errors import Issue, ProgramValidationError

    shape = module_shape(module)
    problems = state_problems(state, shape)
    if problems:
        raise ProgramValidationError([Issue(f"{where}/state{p}", m) for p, m in problems])
    params = dict(module.named_parameters())
    for name, part in predictor_parts(state, shape).items():
        predictor = params[name]
        if "instructions" in part or "fields" in part:
            saved = predictor.signature.dump_state()
            if "instructions" in part:
                saved["instructions"] = part["instructions"]
            for current, given in zip(saved["fields"], part.get("fields", []), strict=False):
                current.update(given)
            predictor.signature = predictor.signature.load_state(saved)
        if "demos" in part:
            predictor.demos = part["demos"]


def _registered_module(spec: DspyModule, where: str = "") -> Any:
    from stepbridge.registry import dspy_modules

    try:
        instance = dspy_modules.instance(spec.module)
    except KeyError as exc:
        raise UnsupportedCapabilityError(str(exc.args[0]), capability="dspy_modules", adapter="dspy") from None
    except TypeError as exc:
        raise UnsupportedCapabilityError(str(exc), capability="dspy_modules", adapter="dspy") from None
    if not isinstance(instance, dspy.Module):
        raise UnsupportedCapabilityError(
            f"DSPy module {spec.module!r} is registered as {type(instance).__name__}, not a dspy.Module "
            "(or a factory returning one)", capability="dspy_modules", adapter="dspy")
    if spec.state:
        apply_state(instance, spec.state, where=where)
    # Whatever the registered factory said, every predictor uses the LM the adapter puts in
    # ``dspy.context``: a predictor's own ``lm`` would take precedence over it.
    for _, predictor in instance.named_predictors():
        predictor.lm = None
    return instance


def _lm_submodule(module: PredictModule | ChainOfThoughtModule, types: Any = None) -> dspy.Module:
    signature = to_dspy_signature(module.effective_signature, types=types)
    demos = [dspy.Example(**demo) for demo in module.demos]
    if isinstance(module, ChainOfThoughtModule):
        cot = dspy.ChainOfThought(signature)
        cot.predict.demos = demos
        return cot
    predict = dspy.Predict(signature)
    predict.demos = demos
    return predict


# ================================================================================================
# The program as a dspy.Module
# ================================================================================================
def _outputs_of(module: Any, program: Program) -> list[str]:
    """The fields a module's result has (a chain of thought's ``reasoning`` first, as on native)."""
    from stepbridge.interface import module_interface

    interface = module_interface(module, program.modules)
    return list(interface.outputs) if interface is not None else []


def _prediction_outputs(prediction: Any, names: list[str]) -> dict[str, Any]:
    if isinstance(prediction, dict):
        return {k: prediction[k] for k in names}
    return {k: prediction[k] if hasattr(prediction, "__getitem__") else getattr(prediction, k) for k in names}


class ProgramModule(dspy.Module):
    """A stepbridge program as a real ``dspy.Module``.

    Each program module is an attribute of the same name (``dspy.Predict``, ``dspy.ChainOfThought``,
    :class:`RetrieveStep`, :class:`ToolStep` or the registered DSPy module), so DSPy's optimizers see
    and tune its predictors; ``forward`` / ``aforward`` interpret the program's steps with plain
    DSPy calls (under whatever LM and adapter DSPy is configured with).
    """

    def __init__(self, program: Program):
        super().__init__()
        _check_names(program)  # validation refuses these already; a program that skipped it stops here
        # ensembles last: they wrap the sub-module of another program module (one set of predictors)
        order = sorted(program.modules, key=lambda n: program.modules[n].type in ("best_of_n", "refine"))
        for name in order:
            module = program.modules[name]
            sub: dspy.Module
            if isinstance(module, PredictModule | ChainOfThoughtModule):
                sub = _lm_submodule(module, getattr(program, "type_space", None))
            elif isinstance(module, RetrieveModule):
                sub = RetrieveStep(module, program.base_dir)
            elif isinstance(module, ToolModule):
                sub = ToolStep(module)
            elif isinstance(module, DspyModule):
                sub = _registered_module(module, f"/modules/{name}")
            else:
                from .dspy_agents import build_agent_module

                sub = build_agent_module(program, name, module, lambda other: getattr(self, other), lambda: self)
            setattr(self, name, sub)
        self._sb_program = program
        self._sb_plan = plan(program)
        self._sb_outputs = {name: _outputs_of(m, program) for name, m in program.modules.items()}

    @property
    def program(self) -> Program:
        return self._sb_program

    def program_modules(self) -> dict[str, dspy.Module]:
        """Program module name -> its DSPy sub-module."""
        return {name: getattr(self, name) for name in self._sb_program.modules}

    # -- plain DSPy execution (optimizers, users) ------------------------------------------------
    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Run the program's steps with plain (sync) DSPy calls of the sub-modules, through the shared
        interpreter (every step kind; ``map`` and ``parallel`` calls one after another)."""
        outputs = self._sb_outputs

        async def call(step: PlanStep, args: dict[str, Any], ctx: RunContext, calls: list[LMCall]) -> dict[str, Any]:
            assert step.module is not None
            return _prediction_outputs(getattr(self, step.module)(**args), outputs[step.module])

        return dspy.Prediction(**_run_sync(execute(self._sb_plan, inputs, RunContext(RunOptions()), call)))

    async def aforward(self, **inputs: Any) -> dspy.Prediction:
        """Run the program's steps with DSPy's async calls, through the shared interpreter."""
        outputs = self._sb_outputs

        async def call(step: PlanStep, args: dict[str, Any], ctx: RunContext, calls: list[LMCall]) -> dict[str, Any]:
            assert step.module is not None
            return _prediction_outputs(await _acall(getattr(self, step.module), args), outputs[step.module])

        return dspy.Prediction(**await execute(self._sb_plan, inputs, RunContext(RunOptions()), call))


def _run_sync(coroutine: Any) -> Any:
    """Run a coroutine to completion from sync code: on a private event loop in this thread, or in a
    helper thread (with this context) when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    ctx = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepbridge-forward") as pool:
        return pool.submit(ctx.run, asyncio.run, coroutine).result()


def _check_names(program: Program) -> None:
    from stepbridge.errors import Issue, ProgramValidationError
    from stepbridge.names import field_name_problem, module_name_problem

    issues = [Issue("/signature", problem) for field in program.signature.inputs
              if (problem := field_name_problem(field, program_input=True)) is not None]
    issues += [Issue("/signature", problem) for field in program.signature.outputs
               if (problem := field_name_problem(field)) is not None]
    reserved = {n for n in dir(ProgramModule) if not n.startswith("__")} | {"callbacks", "history"}
    for name, module in program.modules.items():
        problem = module_name_problem(name) or (f"module name {name!r} is a dspy.Module attribute"
                                                if name in reserved else None)
        if problem:
            issues.append(Issue(f"/modules/{name}", problem))
        sig = getattr(module, "effective_signature", None) or getattr(module, "signature", None)
        for field_name in [*(sig.inputs if sig else ()), *(sig.outputs if sig else ())]:
            if (problem := field_name_problem(field_name)) is not None:
                issues.append(Issue(f"/modules/{name}/signature", problem))
    if issues:
        raise ProgramValidationError(issues)


def _has_aforward(module: Any) -> bool:
    return getattr(type(module), "aforward", None) is not None


async def _acall(module: Any, args: dict[str, Any], pool: ThreadPoolExecutor | None = None) -> Any:
    """DSPy's async path when the module has one; otherwise the sync call in a worker thread with
    the current context (DSPy settings overrides live in context variables)."""
    if _has_aforward(module):
        return await module.acall(**args)
    ctx = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(pool, functools.partial(ctx.run, module, **args))


def build_module(program: Program) -> ProgramModule:
    """The program as a ``dspy.Module`` (see :class:`ProgramModule`)."""
    return ProgramModule(program)


# ================================================================================================
# Errors and trace
# ================================================================================================
def from_dspy_error(exc: BaseException) -> StepbridgeError:
    """A DSPy / LM / Python exception as stepbridge's typed error: DSPy's parse, context-window and LM errors
    keep their meaning (``stepbridge.interpreter.to_typed_error`` only wraps what is not ours)."""
    if isinstance(exc, StepbridgeError):
        return exc
    from dspy.utils.exceptions import AdapterParseError, is_retryable_lm_error
    from dspy.utils.exceptions import LMError as DSPyLMError

    if isinstance(exc, AdapterParseError):
        return LMParseError(f"the LM reply did not match the signature ({exc.adapter_name}): "
                            f"{str(exc).splitlines()[0]}", response=str(exc.lm_response))
    from dspy.utils.exceptions import ContextWindowExceededError as DSPyContextWindowError

    if isinstance(exc, DSPyContextWindowError):
        return ContextWindowExceededError(f"{type(exc).__name__}: {exc}", status=exc.status)
    if isinstance(exc, DSPyLMError):
        return LMError(f"{type(exc).__name__}: {exc}", status=exc.status, retriable=is_retryable_lm_error(exc))
    return StepbridgeError(f"{type(exc).__name__}: {exc}")


class _CallRecorder(BaseCallback):
    """The LM calls of one module call, in order: messages, response and usage from the history of the LM
    object that made each call (BestOfN and Refine make theirs on copies), latency and failures from the
    callback itself."""

    def __init__(self) -> None:
        self.model = ""
        self._started: dict[str, tuple[float, Any, Any, int]] = {}
        self.ends: list[tuple[float, Any, BaseException | None, Any]] = []

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        history = getattr(instance, "history", None)
        self._started[call_id] = (time.perf_counter(), inputs.get("messages"), instance,
                                  len(history) if isinstance(history, list) else 0)

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        began, messages, instance, before = self._started.pop(call_id, (time.perf_counter(), None, None, 0))
        entry = None
        history = getattr(instance, "history", None)
        if exception is None and isinstance(history, list) and len(history) > before:
            entry = history[-1]
        self.ends.append(((time.perf_counter() - began) * 1000, messages, exception, entry))

    def calls(self) -> list[LMCall]:
        out: list[LMCall] = []
        for latency, messages, exception, entry in self.ends:
            if exception is not None:
                out.append(LMCall(model=self.model, messages=_plain_messages(messages), latency_ms=latency,
                                  error=from_dspy_error(exception).to_dict()))
                continue
            entry = entry or {}
            for i, text in enumerate(_response_texts(entry)):  # n > 1: one record per completion, as native
                out.append(LMCall(
                    model=self.model,
                    messages=_plain_messages(entry.get("messages") or messages),
                    response=scrub(text) if text is not None else None,
                    usage={k: v for k, v in dict(entry.get("usage") or {}).items() if v is not None} if i == 0
                    else {},
                    latency_ms=latency if i == 0 else 0.0,
                    cached=bool(getattr(entry.get("response"), "cache_hit", False)),
                ))
        return out


def _plain_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        return []
    return [dict(m) if isinstance(m, dict) else {"content": str(m)} for m in messages]


def _response_texts(entry: dict[str, Any]) -> list[str | None]:
    """Every completion of one LM call (several with ``n > 1``); ``[None]`` when there is none."""
    outputs = entry.get("outputs") or []
    if len(outputs) > 1:
        return [o if isinstance(o, str) else str(o.get("text") if isinstance(o, dict) else o) for o in outputs]
    return [_response_text(entry)]


def _response_text(entry: dict[str, Any]) -> str | None:
    response = entry.get("response")
    text = getattr(response, "text", None)
    if isinstance(text, str):
        return text
    outputs = entry.get("outputs") or []
    if outputs:
        first = outputs[0]
        return first if isinstance(first, str) else str(first.get("text") if isinstance(first, dict) else first)
    return None


# ================================================================================================
# The adapter
# ================================================================================================
@dataclass
class _Prepared:
    program: Program
    module: ProgramModule
    lm_configs: dict[str, LMConfig] = field(default_factory=dict)
    #: per LM module: its typed inputs and outputs (JSON <-> the Python values DSPy takes and returns)
    fields: dict[str, tuple[dict[str, FieldType], dict[str, FieldType]]] = field(default_factory=dict)


def _typed_fields(program: Program) -> dict[str, tuple[dict[str, FieldType], dict[str, FieldType]]]:
    types = getattr(program, "type_space", None)
    out: dict[str, tuple[dict[str, FieldType], dict[str, FieldType]]] = {}
    for name, module in program.modules.items():
        if isinstance(module, PredictModule | ChainOfThoughtModule):
            sig = module.effective_signature
            if isinstance(module, ChainOfThoughtModule):
                sig = chain_of_thought(sig)
            ins = {k: f for k, f in resolve_fields(sig.inputs, types).items() if f.converted}
            outs = {k: f for k, f in resolve_fields(sig.outputs, types).items() if f.converted}
            if ins or outs:
                out[name] = (ins, outs)
    return out


def _to_dspy_inputs(args: dict[str, Any], fields: dict[str, FieldType]) -> dict[str, Any]:
    """JSON inputs as the values a DSPy user passes: model instances, Enum members, tuples, dspy.History."""
    from stepbridge.errors import InputValidationError

    out = dict(args)
    for name, ftype in fields.items():
        if name not in out:
            continue
        try:
            if ftype.expr.kind == "history":
                out[name] = dspy.History.model_validate(out[name])
            else:
                out[name] = ftype.to_python(out[name])
        except ValueError as exc:
            detail = str(exc).splitlines()
            raise InputValidationError(f"input {name!r} is not a valid {ftype.expr}: {detail[-1] if detail else exc}",
                                       field=name) from None
    return out


class DSPyAdapter:
    """Runs programs as real ``dspy.Module`` objects on ``dspy.LM`` (see the module docstring)."""

    name = "dspy"
    capabilities = frozenset({
        "async", "batch", "map", "retrieve", "tools", "dspy_modules", "lm_trace", "timeout", "cancel",
        "rehydrate", "json_adapter", "xml_adapter", "typed_objects", "agents", "ensembles", "control_flow",
        "parallel",
    })

    def __init__(self, *, lm: LMPool | None = None, profiles: dict[str, LMProfile] | None = None,
                 cache: bool | None = None, engine: str = "auto", map_concurrency: int = DEFAULT_MAP_CONCURRENCY,
                 threads: int = DEFAULT_THREADS):
        if profiles is None:
            profiles = lm.profiles if lm is not None else load_profiles()
        self.profiles = profiles
        self.cache = bool(cache) if cache is not None else False
        self.engine = engine
        self.map_concurrency = map_concurrency
        self._prepared: dict[tuple[str, Path | None], _Prepared] = {}
        self._lms: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stepbridge-dspy")
        self._formats = {"chat": dspy.ChatAdapter(), "json": dspy.JSONAdapter(), "xml": dspy.XMLAdapter()}
        self._reference: contextlib.ExitStack | None = None
        self._reference_url: str | None = None

    # -- preparation -----------------------------------------------------------------------------
    async def prepare(self, program: Program) -> None:
        self._prepare(program)

    def _prepare(self, program: Program) -> _Prepared:
        key = program.plan_key  # content + folder: relative corpora resolve against it
        prepared = self._prepared.get(key)
        if prepared is None:
            module = ProgramModule(program)
            base = program.lm or LMConfig()
            configs = {name: base.merged(getattr(m, "lm", None)) for name, m in program.modules.items()}
            for name, m in program.modules.items():
                if m.type in ("best_of_n", "refine") and m.module in configs:
                    configs[name] = configs[m.module]  # an ensemble runs under the LM of what it wraps
            prepared = _Prepared(program, module, configs, _typed_fields(program))
            with self._lock:
                prepared = self._prepared.setdefault(key, prepared)
        return prepared

    def module(self, program: Program) -> ProgramModule:
        """The prepared ``dspy.Module`` of a program (shared by this adapter's runs; do not mutate)."""
        return self._prepare(program).module

    # -- optimizing ------------------------------------------------------------------------------
    def dspy_optimize(self, program: Program, trainset: Sequence[dict[str, Any]], metric: Callable[..., Any], *,
                      optimizer: Any, lm: Any, input_keys: Sequence[str] | None = None) -> Program:
        """``program`` compiled by a DSPy ``optimizer`` (:func:`.dspy_interop.optimize`, on this adapter's LMs):
        the core's optimization reaches DSPy through the adapter registered as ``dspy``, never an import."""
        from .dspy_interop import optimize

        optimized, _ = optimize(program, trainset, metric, optimizer=optimizer, lm=lm, input_keys=input_keys,
                                adapter=self)
        return optimized

    # -- LMs -------------------------------------------------------------------------------------
    def reference_url(self) -> str:
        """The base URL of the adapter's own reference LM server (started on first use)."""
        with self._lock:
            if self._reference_url is None:
                from stepbridge.reference_lm import running_server

                stack = contextlib.ExitStack()
                self._reference_url = str(stack.enter_context(running_server()))
                self._reference = stack
            return self._reference_url

    def dspy_lm(self, config: LMConfig) -> tuple[Any, str]:
        """The ``dspy.LM`` for an effective LM config (cached) and the model name for traces."""
        profile, model = resolve_profile(config, self.profiles)
        temperature = config.temperature if config.temperature is not None else profile.temperature
        max_tokens = config.max_tokens if config.max_tokens is not None else profile.max_tokens
        n = config.n if config.n is not None and config.n > 1 else None
        key = (profile.name, profile.base_url, model, temperature, max_tokens, n)
        lm = self._lms.get(key)
        if lm is None:
            if profile.in_process:
                api_base = self.reference_url()
                api_key = "stepbridge-reference"
            else:
                api_base = profile.base_url or ""
                api_key = profile.api_key() or "stepbridge-no-key"
                register_url(api_base, source=f"the base_url of LM profile {profile.name!r}")
            wire_model = model if model.startswith("openai/") else f"openai/{model}"
            extra = {"n": n} if n is not None else {}  # dspy.Predict reads n (and num_generations) from here
            lm = dspy.LM(wire_model, api_base=api_base, api_key=api_key, temperature=temperature,
                         max_tokens=max_tokens, cache=self.cache, num_retries=profile.max_retries,
                         timeout=profile.timeout, engine=self.engine, **extra)
            with self._lock:
                lm = self._lms.setdefault(key, lm)
        return lm, model

    def format_adapter(self, config: LMConfig) -> Any:
        return self._formats[config.adapter or "chat"]

    # -- running ---------------------------------------------------------------------------------
    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions | None = None) -> RunResult:
        prepared = self._prepare(program)

        def call(step: PlanStep, args: dict[str, Any], ctx: RunContext, calls: list[LMCall]) -> Any:
            return self._call(prepared, step, args, ctx, calls)

        return await run_plan(program, prepared.module._sb_plan, inputs, options or RunOptions(), call=call,
                              backend=self.name, map_concurrency=self.map_concurrency)

    async def _call(self, prepared: _Prepared, step: PlanStep, args: dict[str, Any], ctx: RunContext,
                    calls: list[LMCall]) -> dict[str, Any]:
        try:
            return await self._call_module(prepared, step, args, ctx, calls)
        except StepbridgeError:
            raise
        except Exception as exc:  # DSPy's and litellm's exceptions become our typed errors here
            raise from_dspy_error(exc) from exc

    async def _call_module(self, prepared: _Prepared, step: PlanStep, args: dict[str, Any], ctx: RunContext,
                    calls: list[LMCall]) -> dict[str, Any]:
        assert step.module is not None
        sub = getattr(prepared.module, step.module)
        names = prepared.module._sb_outputs[step.module]
        if step.module_type in ("retrieve", "tool"):
            return _prediction_outputs(await _acall(sub, args, self._pool), names)
        if step.module_type in _AGENT_TYPES:
            from .dspy_agents import check_step_inputs

            check_step_inputs(prepared.program, step.module, args)
        typed = prepared.fields.get(step.module)
        if typed is not None:
            args = _to_dspy_inputs(args, typed[0])
        recorder = _CallRecorder()
        lm, config = self._call_lm(prepared, step.module, ctx, recorder)
        judges = self._judge_lms(prepared, step.module, ctx, recorder)
        token = JUDGE_LMS.set(judges) if judges else None
        try:
            with dspy.context(lm=lm, adapter=self.format_adapter(config), allow_tool_async_sync_conversion=True,
                              **{lm_guard.SETTING: (lm, *(j[0] for j in judges.values()))}):  # never the module's LMs
                prediction = await _acall(sub, args, self._pool)
        finally:
            if token is not None:
                JUDGE_LMS.reset(token)
            new_calls = recorder.calls()
            calls.extend(new_calls)
            for call in new_calls:
                if call.response is not None:
                    ctx.usage.add(call.usage)
                    ctx.usage.lm_calls += 1
        if prediction is None and step.module_type in ("best_of_n", "refine"):
            from stepbridge.ensembles import no_prediction

            spec = prepared.program.modules[step.module]
            raise no_prediction(step.module_type, step.module, getattr(spec, "n", 0))
        # an upstream may echo the key back: it never reaches outputs, traces or the next step's prompt
        outputs = scrub(_prediction_outputs(prediction, names))
        if step.module_type in _AGENT_TYPES:
            return {k: json_data(v) for k, v in outputs.items()}
        if typed is not None:  # models, Enum members, tuples as JSON data again
            for name, ftype in typed[1].items():
                if outputs.get(name) is not None:
                    outputs[name] = ftype.to_json(outputs[name])
        return outputs

    def _call_lm(self, prepared: _Prepared, module: str, ctx: RunContext,
                 recorder: _CallRecorder) -> tuple[Any, LMConfig]:
        """A per-call copy of a module's ``dspy.LM`` (own history and callbacks) recording into ``recorder``."""
        config = prepared.lm_configs[module].merged(ctx.options.lm)
        base, model = self.dspy_lm(config)
        lm = base.copy()
        if ctx.options.cache is not None:
            lm.cache = ctx.options.cache
        recorder.model = model
        lm.callbacks.append(recorder)
        return lm, config

    def _judge_lms(self, prepared: _Prepared, module: str, ctx: RunContext,
                   recorder: _CallRecorder) -> dict[str, tuple[Any, Any]]:
        """For an ensemble judged by a module of the program: that module's LM and format, for this call."""
        spec = prepared.program.modules[module]
        reward = getattr(spec, "reward", None)
        if reward is None or reward.module is None:
            return {}
        lm, config = self._call_lm(prepared, reward.module, ctx, recorder)
        return {reward.module: (lm, self.format_adapter(config))}

    async def aclose(self) -> None:
        lms, self._lms = list(self._lms.values()), {}
        for lm in lms:
            with contextlib.suppress(Exception):
                await lm.aclose()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = ThreadPoolExecutor(max_workers=self._pool._max_workers, thread_name_prefix="stepbridge-dspy")
        with self._lock:
            stack, self._reference, self._reference_url = self._reference, None, None
        if stack is not None:
            await asyncio.to_thread(stack.close)

    def close(self) -> None:
        """Synchronous :meth:`aclose` (for use outside an event loop)."""
        asyncio.run(self.aclose())
