"""The parts every DSPy import is made of: errors that name a place, types, exact predictor modules,
program assembly, and running the original module (under a guarded LM).

See :mod:`stepbridge.adapters.dspy_import` for the whole.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from stepbridge.errors import ConversionError, ProgramValidationError, StepbridgeError
from stepbridge.program import Program
from stepbridge.signature import FieldSpec, Signature, TypeExpr


def _register_hint(cls: type) -> str:
    return (f"register {cls.__name__} in stepbridge.registry.dspy_modules (or the 'stepbridge.dspy_modules' "
            "entry point group) to import it as an opaque 'dspy' step")


def _dspy() -> Any:
    from stepbridge.adapters import dspy as adapter  # sets DSPy up to run offline before importing it

    return adapter


def _where(target: Any) -> tuple[str | None, int | None]:
    """Source file and first line of a class or function (``None`` when Python cannot tell)."""
    try:
        target = inspect.unwrap(target)
        file = inspect.getsourcefile(target)
        _, line = inspect.getsourcelines(target)
    except (TypeError, OSError):
        return None, None
    return file, line


def _error(why: str, *, construct: str, hint: str, target: Any = None, line: int | None = None,
           file: str | None = None, report: dict[str, Any] | None = None) -> ConversionError:
    if target is not None:
        tfile, tline = _where(target)
        file = file or tfile
        line = line or tline
    where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
    return ConversionError(f"{where}{construct}: {why}; to fix: {hint}", construct=construct, file=file, line=line,
                           hint=hint, report=report)


class _Types:
    """The ``types`` section the converted signatures need (declared pydantic models and enums)."""

    def __init__(self) -> None:
        self.section: dict[str, dict[str, Any]] = {}

    def convert(self, annotation: Any, construct: str, target: Any) -> str:
        custom = _custom_dspy_type(annotation)
        if custom is not None:
            raise _error(f"dspy.{custom} is a DSPy type that formats and parses itself (its own prompt text); no "
                         "program type reproduces it", construct=construct, target=target,
                         hint="register the module to import it as an opaque 'dspy' step")
        try:
            t = TypeExpr.from_annotation(annotation)
        except (TypeError, ValueError) as exc:
            raise _error(f"type {getattr(annotation, '__name__', annotation)!r} cannot be converted ({exc})",
                         construct=construct, target=target,
                         hint="use a type format 2 declares (str, int, float, bool, Any, list, dict, tuple, "
                              "Literal, Optional, unions, pydantic models, Enums, dspy.History), or register "
                              "the module to import it as an opaque 'dspy' step") from None
        for sub in t.walk(into_declared=True):
            if sub.kind in ("object", "enum") and sub.decl is not None:
                spec = sub.decl.to_spec()
                if self.section.setdefault(sub.decl.name, spec) != spec:
                    raise _error(f"two different types are named {sub.decl.name!r}", construct=construct,
                                 target=target, hint="rename one of the classes")
        return str(t)


def _custom_dspy_type(annotation: Any) -> str | None:
    """The name of a ``dspy.Type`` (Image, Audio, Code, Tool, ToolCalls...) inside ``annotation``."""
    import typing

    from dspy.adapters.types.base_type import Type as DSPyType

    if isinstance(annotation, type) and issubclass(annotation, DSPyType):
        return annotation.__name__.split("_")[0]
    for arg in typing.get_args(annotation):
        found = _custom_dspy_type(arg)
        if found is not None:
            return found
    return None


def _field_desc(name: str, info: Any) -> str | None:
    extra = getattr(info, "json_schema_extra", None) or {}
    desc = extra.get("desc")
    if desc is None or desc == f"${{{name}}}":
        return None
    return str(desc)


def _field_constraints(name: str, info: Any, sig: Any) -> str | None:
    """The constraint text DSPy prints under a field (``Constraints: ...``), ``None`` without one."""
    constraints = (info.json_schema_extra or {}).get("constraints")
    if not constraints:
        return None
    if not isinstance(constraints, str):
        raise _error(f"field {name!r} has constraints that are not text ({type(constraints).__name__})",
                     construct=f"{sig.__name__}.{name}", target=sig,
                     hint="give the constraints as pydantic arguments (ge=, le=, max_length=...)")
    return constraints


def signature_from_dspy(sig: Any, *, drop_outputs: Sequence[str] = (), types: _Types | None = None) -> Signature:
    """A :class:`Signature` from a ``dspy.Signature`` class (types, descriptions, instructions).
    Instructions equal to DSPy's default for the fields are left unset (they render the same).
    Declared types (pydantic models, enums) are collected into ``types``."""
    from stepbridge.formats import default_instructions

    types = types if types is not None else _Types()

    def fields(group: Mapping[str, Any], skip: Sequence[str] = ()) -> dict[str, FieldSpec]:
        # constraints (ge=0, le=100...): DSPy 3.4.1 prints their text under the field and checks no reply or
        # input against them; a program field keeps that text and does the same
        return {
            name: FieldSpec(type=types.convert(info.annotation, f"{sig.__name__}.{name}", sig),
                            desc=_field_desc(name, info), constraints=_field_constraints(name, info, sig))
            for name, info in group.items() if name not in skip
        }

    plain = Signature(inputs=fields(sig.input_fields), outputs=fields(sig.output_fields, drop_outputs))
    instructions = sig.instructions
    if not instructions or instructions == default_instructions(plain):
        return plain
    return plain.with_instructions(instructions)


_ADAPTERS = {"ChatAdapter": None, "JSONAdapter": "json", "XMLAdapter": "xml"}


def _ambient_adapter() -> str | None:
    """The DSPy adapter the import runs under (``dspy.configure``/``dspy.context``) as ``lm.adapter``."""
    current = _dspy().dspy.settings.adapter
    if current is None:
        return None
    name = type(current).__name__
    if type(current).__module__.startswith("dspy.") and name in _ADAPTERS:
        return _ADAPTERS[name]
    raise _error(f"the DSPy adapter {name} has no program equivalent", construct=f"adapter {name}",
                 target=type(current), hint="import under ChatAdapter, JSONAdapter or XMLAdapter")


def _lm_config(predictor: Any) -> dict[str, Any] | None:
    """The predictor's settings that change a request: its LM's model and kwargs, overridden by the
    predictor's own config (``dspy.Predict(sig, temperature=0.7, n=3)``), as DSPy merges them."""
    lm = getattr(predictor, "lm", None)
    settings: dict[str, Any] = dict(getattr(lm, "kwargs", {}) or {}) if lm is not None else {}
    settings.update(getattr(predictor, "config", {}) or {})
    config: dict[str, Any] = {"model": lm.model} if lm is not None else {}
    if settings.get("temperature") is not None:
        config["temperature"] = settings["temperature"]
    tokens = settings.get("max_tokens") or settings.get("max_completion_tokens")
    if tokens is not None:
        config["max_tokens"] = tokens
    n = settings.get("n") or settings.get("num_generations")
    if n is not None and n != 1:
        config["n"] = n
    adapter = _ambient_adapter()
    if adapter is not None:
        config["adapter"] = adapter
    return config or None


def _demo_dicts(demos: Iterable[Any], names: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for demo in demos:
        data = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
        out.append(json.loads(json.dumps({k: data[k] for k in names if k in data}, default=str)))
    return out


def _is_leaf(obj: Any) -> bool:
    """A module converted as one program module (its inner predictors are its own)."""
    dspy = _dspy().dspy
    return type(obj) in (dspy.Predict, dspy.ChainOfThought, dspy.ReAct, dspy.MultiChainComparison, dspy.BestOfN,
                         dspy.Refine)


def _unconvertible_reason(obj: Any) -> str | None:
    """Why a DSPy built-in module has no exact conversion (``None``: it is not one of those)."""
    dspy = _dspy().dspy
    cls = type(obj)
    if cls is dspy.ProgramOfThought:
        return "it runs LM-written code, which needs a sandboxed interpreter no stepbridge adapter runs"
    if cls is dspy.Parallel:
        return "its calls run on threads in no fixed order"
    return None


def _react_module(obj: Any, types: _Types) -> dict[str, Any]:
    """A ``dspy.ReAct`` as a ``react`` module: its tools must be registered under their names (a program
    names tools, never imports them), its predictors must carry no demos."""
    from stepbridge.registry import tools as registry

    names = []
    for name, tool in obj.tools.items():
        if name == "finish":
            continue
        func = inspect.unwrap(getattr(tool, "func", tool))
        known = registry.get(name).func if name in registry.names() else None
        if known is None or inspect.unwrap(known) is not func:
            raise _error(f"tool {name!r} is not registered under that name", construct=f"ReAct tool {name}",
                         target=func, hint=f"register it: stepbridge.tools.register({name!r}, {name}) before "
                                           "importing (a program names tools, never imports them)")
        names.append(name)
    if obj.react.demos or obj.extract.predict.demos:
        raise _error("its predictors carry demos, which a react module does not hold", construct="ReAct",
                     target=type(obj), hint="import it before optimizing, then optimize the program")
    sig = signature_from_dspy(obj.signature, types=types)
    data: dict[str, Any] = {"type": "react", "signature": sig.with_instructions(None).model_dump(mode="json"),
                            "tools": names, "max_iters": obj.max_iters}
    if sig.instructions is not None:
        data["instructions"] = sig.instructions
    lm = _lm_config(obj.react)
    if lm:
        data["lm"] = lm
    return data


def _mcc_module(obj: Any, types: _Types) -> dict[str, Any]:
    """A ``dspy.MultiChainComparison`` as a ``multi_chain_comparison`` module: the signature it was built
    from is its predictor's without the ``reasoning_attempt_i`` inputs and the ``rationale`` output, and
    must rebuild exactly that predictor (else the module was changed after construction)."""
    from stepbridge.ensembles import MCC_DEFAULT_TEMPERATURE
    from stepbridge.program import MAX_ENSEMBLE

    dspy = _dspy().dspy
    predict = obj.predict
    full = predict.signature
    m = obj.M
    if not (isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= MAX_ENSEMBLE):
        raise _error(f"M={m!r} is not an integer from 1 to {MAX_ENSEMBLE}", construct="MultiChainComparison",
                     target=type(obj), hint=f"use 1 <= M <= {MAX_ENSEMBLE}")
    attempts = [f"reasoning_attempt_{i + 1}" for i in range(m)]
    if list(full.input_fields)[-m:] != attempts or list(full.output_fields)[:1] != ["rationale"]:
        raise _error(f"its predictor's signature is not the one MultiChainComparison(M={m!r}) builds",
                     construct="MultiChainComparison", target=type(obj),
                     hint="import the module as constructed (dspy.MultiChainComparison(signature, M=...)), before "
                          "changing its predictor")
    base = full.delete("rationale")
    for name in attempts:
        base = base.delete(name)
    config = {k: v for k, v in (predict.config or {}).items() if k != "temperature"}
    rebuilt = dspy.MultiChainComparison(base, M=m, **config).predict.signature
    if _signature_text(rebuilt) != _signature_text(full) or list(base.output_fields)[-1:] != [obj.last_key]:
        raise _error("its predictor's signature differs from the one MultiChainComparison builds from its own "
                     "fields", construct="MultiChainComparison", target=type(obj),
                     hint="import the module as constructed, before changing its predictor's signature")
    if predict.demos:
        raise _error("its predictor carries demos, which a multi_chain_comparison module does not hold",
                     construct="MultiChainComparison", target=type(obj),
                     hint="import it before optimizing, then optimize the program")
    sig = signature_from_dspy(base, types=types)
    data: dict[str, Any] = {"type": "multi_chain_comparison",
                            "signature": sig.with_instructions(None).model_dump(mode="json"), "m": m}
    if sig.instructions is not None:
        data["instructions"] = sig.instructions
    lm = _lm_config(predict)
    if lm and lm.get("temperature") == MCC_DEFAULT_TEMPERATURE:  # DSPy's default: the module type's too
        del lm["temperature"]
    if lm:
        data["lm"] = lm
    return data


def _signature_text(sig: Any) -> str:
    """Everything of a DSPy signature that reaches a prompt: instructions, and each field's name, kind,
    type, prefix and description, in order."""
    fields = [(name, str(info.annotation), sorted((info.json_schema_extra or {}).items(), key=str))
              for name, info in sig.fields.items()]
    return repr((sig.instructions, fields))


def _reward_fn(obj: Any) -> Any:
    """The function given as ``reward_fn`` (DSPy keeps it inside a lambda, so it is no parameter)."""
    fn = obj.reward_fn
    code = getattr(fn, "__code__", None)
    if (code is not None and code.co_freevars == ("reward_fn",) and getattr(fn, "__module__", "").startswith("dspy.")
            and fn.__closure__):
        return fn.__closure__[0].cell_contents
    return fn


def _reward_metric(fn: Any, construct: str) -> str:
    """The name under which ``fn`` is registered (adapted by ``dspy_reward``) as a metric: a program names
    its reward, it never imports it. The registry is searched by identity, never by a name."""
    from stepbridge.registry import metrics

    from .dspy_reward import reward_function

    adapted, raw = [], []
    for name in metrics.names():
        try:
            metric = metrics.get(name)
        except Exception:  # a broken entry point must not break the import of other modules
            continue
        if reward_function(metric) is fn:
            adapted.append(name)
        elif metric is fn:
            raw.append(name)
    if adapted:
        return sorted(adapted)[0]
    label = getattr(fn, "__name__", type(fn).__name__)
    suggestion = label if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", label) and label != "<lambda>" else "my_reward"
    register = (f"stepbridge.registry.metrics.register({suggestion!r}, "
                f"stepbridge.adapters.dspy_reward.dspy_reward({suggestion}))")
    if raw:
        raise _error(f"{label} is registered as the metric {raw[0]!r} as it is; a metric gets plain dicts, where "
                     "DSPy calls reward_fn(args, dspy.Prediction)", construct=construct, target=fn,
                     hint=f"register it adapted instead: {register}")
    raise _error(f"{label} is a Python function, and a program names its reward as a registered metric",
                 construct=construct, target=fn,
                 hint=f"register it before importing: {register} (or an entry point of group 'stepbridge.metrics' "
                      "naming the adapted function); the program then names it, on every machine that registers it")


def _ensemble_module(obj: Any, types: _Types) -> dict[str, Any]:
    """A ``dspy.BestOfN`` / ``dspy.Refine`` as a ``best_of_n`` / ``refine`` module. The module it wraps is
    returned under the private key ``_wrapped`` (:func:`_program` makes it a module of its own)."""
    from stepbridge.program import MAX_ENSEMBLE, WRAPPABLE_TYPES

    cls = type(obj)
    where = _reward_fn(obj)  # the user's code (the class is DSPy's own)
    kind = "best_of_n" if cls.__name__ == "BestOfN" else "refine"
    construct = f"{cls.__name__}"
    n, threshold, fail_count = obj.N, obj.threshold, obj.fail_count
    if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_ENSEMBLE):
        raise _error(f"N={n!r} is not an integer from 1 to {MAX_ENSEMBLE}", construct=construct, target=where,
                     hint=f"use 1 <= N <= {MAX_ENSEMBLE}")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or threshold != threshold \
            or threshold in (float("inf"), float("-inf")):  # a bool: Refine would show the LM `true`
        raise _error(f"threshold={threshold!r} is not a finite number (a {kind} module stops at the first reward "
                     "at least its threshold)", construct=construct, target=where, hint="give a finite threshold")
    if not (isinstance(fail_count, int) and 1 <= fail_count <= MAX_ENSEMBLE):
        raise _error(f"fail_count is {fail_count!r} (DSPy lowers it on the module object after each failed "
                     "attempt, for good)", construct=construct, target=where,
                     hint="import a freshly built module (fail_count from 1 to N)")
    inner = _predictor_module(obj.module, types)
    if inner is None or inner[1] not in WRAPPABLE_TYPES:
        what = type(obj.module).__name__
        raise _error(f"it wraps {what}; a {kind} module wraps a Predict, ChainOfThought, ReAct or "
                     "MultiChainComparison", construct=construct, target=where,
                     hint=f"wrap one of those, or {_register_hint(cls)}")
    data: dict[str, Any] = {"type": kind, "n": n, "reward": {"metric": _reward_metric(_reward_fn(obj),
                                                                                       f"{construct} reward_fn")},
                            "threshold": threshold, "_wrapped": inner[0]}
    if fail_count != n:
        data["fail_count"] = fail_count
    return data


def _predictor_module(obj: Any, types: _Types) -> tuple[dict[str, Any], str] | None:
    """The program module (as file data) for an exact Predict / ChainOfThought / ReAct /
    MultiChainComparison / BestOfN / Refine, and its type."""
    dspy = _dspy().dspy
    if type(obj) is dspy.ReAct:
        return _react_module(obj, types), "react"
    if type(obj) is dspy.MultiChainComparison:
        return _mcc_module(obj, types), "multi_chain_comparison"
    if type(obj) in (dspy.BestOfN, dspy.Refine):
        ensemble = _ensemble_module(obj, types)
        return ensemble, ensemble["type"]
    if type(obj) is dspy.ChainOfThought:
        predict = obj.predict
        fields = predict.signature.output_fields
        names = list(fields)
        if not names or names[0] != "reasoning":
            return None
        if fields["reasoning"].annotation is str and _field_desc("reasoning", fields["reasoning"]) is None:
            sig = signature_from_dspy(predict.signature, drop_outputs=("reasoning",), types=types)
            mtype = "chain_of_thought"
        else:  # the signature declares its own reasoning field: DSPy then sends exactly a Predict's prompt
            sig = signature_from_dspy(predict.signature, types=types)
            mtype = "predict"
    elif type(obj) is dspy.Predict:
        predict = obj
        sig = signature_from_dspy(predict.signature, types=types)
        mtype = "predict"
    else:
        return None
    all_fields = [*predict.signature.input_fields, *predict.signature.output_fields]
    data: dict[str, Any] = {"type": mtype, "signature": sig.with_instructions(None).model_dump(mode="json")}
    if sig.instructions is not None:
        data["instructions"] = sig.instructions
    demos = _demo_dicts(predict.demos, all_fields)
    if demos:
        data["demos"] = demos
    lm = _lm_config(predict)
    if lm:
        data["lm"] = lm
    return data, mtype


def _interface(data: dict[str, Any]) -> Signature:
    """A program module's interface (its inputs and its result fields, as a step sees them)."""
    from pydantic import TypeAdapter
    from stepbridge.interface import module_interface
    from stepbridge.program import Module

    if "_wrapped" in data:  # an ensemble: the interface of the module it wraps
        return _interface(data["_wrapped"])
    interface = module_interface(TypeAdapter(Module).validate_python(data))
    if interface is None:
        raise _error("its interface cannot be known", construct=str(data.get("tool") or data.get("type")),
                     hint="register the tool with annotations")
    return interface


def _interface_outputs(data: dict[str, Any], sig: Signature) -> dict[str, FieldSpec]:
    """A module's result fields as DSPy returns them (a chain of thought's ``reasoning`` first; a
    react module's ``trajectory`` and ``reasoning``)."""
    from pydantic import TypeAdapter
    from stepbridge.interface import module_interface
    from stepbridge.program import Module

    if "_wrapped" in data:
        return dict(_interface(data).outputs)
    interface = module_interface(TypeAdapter(Module).validate_python(data))
    return dict(interface.outputs) if interface is not None else dict(sig.outputs)


def _leaf_interface(data: dict[str, Any]) -> Signature:
    """A converted module's inputs and result fields, without instructions (what a step passes and gets)."""
    interface = _interface(data)
    return Signature(inputs=dict(interface.inputs), outputs=dict(interface.outputs))


def _expand(modules: dict[str, Any]) -> dict[str, Any]:
    """The program's modules: an ensemble's wrapped module (``_wrapped``) becomes a module of its own,
    named after the ensemble (``best`` wraps ``best_module``)."""
    out: dict[str, Any] = {}
    for name, data in modules.items():
        if "_wrapped" not in data:
            out[name] = data
            continue
        data = dict(data)
        inner = data.pop("_wrapped")
        inner_name = f"{name}_module"
        while inner_name in modules or inner_name in out:
            inner_name += "_"
        data = {"type": data.pop("type"), "module": inner_name, **data}
        out[name] = data
        out[inner_name] = inner
    return out


def _program(name: str, signature: Signature, modules: dict[str, Any], steps: list[dict[str, Any]],
             types: _Types, description: str | None = None) -> Program:
    """The program, in the lowest format version that holds it (a format-1 program keeps its hash)."""
    from stepbridge.validate import validate

    data: dict[str, Any] = {"name": name, "signature": signature.model_dump(mode="json"),
                            "modules": _expand(modules), "steps": steps}
    if types.section:
        data["types"] = dict(types.section)
    if description:
        data["description"] = description
    last: Exception | None = None
    for version in (1, 2) if not _needs_v2(steps) else (2,):  # v2 module types fail v1 and take v2
        try:
            program = Program.model_validate({"stepbridge": version, **data})
            errors = [issue for issue in validate(program) if issue.severity == "error"]
            if errors:  # written as is, `stepbridge validate` and every load would refuse it
                raise ProgramValidationError(errors)
            if _non_finite(data):  # kept in memory (and verified so) but written as null: refused instead
                raise ValueError("a number JSON cannot hold (no NaN or infinity), e.g. a constant computed by "
                                 "the module")
            return program
        except Exception as exc:  # our own data not valid in this version (ValueError, ValueSyntaxError...)
            last = exc
    raise _error(f"the converted program does not validate: {last}", construct=name,
                 hint="this is a bug of the importer: report it with the module") from None


def _non_finite(value: Any) -> bool:
    """A float ``inf``/``nan`` anywhere in ``value`` (lists and mappings walked without recursion)."""
    todo = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False


def _needs_v2(value: Any) -> bool:
    """Steps other than call/map/return, operations, or references with paths: format 2 only (said here,
    not left to validation, which does not look inside every format-1 value)."""
    if isinstance(value, list):
        return any(_needs_v2(v) for v in value)
    if isinstance(value, dict):
        if any(k in value for k in ("set", "if", "switch", "loop", "parallel")):
            return True
        if len(value) == 1 and str(next(iter(value))).startswith("$") and not str(next(iter(value))).startswith("$$"):
            return True
        return any(_needs_v2(v) for v in value.values())
    return isinstance(value, str) and value.startswith("$") and not value.startswith("$$") and value.count(".") > 1


def _escape(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        return "$" + value
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


def _entry(obj: Any) -> str:
    """``forward``, ``aforward`` or ``__call__``: which one the module implements (DSPy's own classes
    define forward; a user class may override ``__call__`` itself, as DSPy's usage-tracking docs do)."""
    cls = type(obj)
    own = [klass for klass in cls.__mro__ if klass is not object]
    for klass in own:
        if "forward" in vars(klass):
            return "forward"
        if "aforward" in vars(klass):
            return "aforward"
        if "__call__" in vars(klass) and klass.__module__.split(".")[0] != "dspy":
            return "__call__"
    raise _error("the module defines neither forward nor aforward", construct=f"{cls.__name__}", target=cls,
                 hint="define forward(self, ...) or aforward(self, ...)")


def _call(obj: Any, inputs: dict[str, Any]) -> Any:
    if _entry(obj) == "aforward":
        return _run_coroutine(obj.acall(**inputs))
    return obj(**inputs)


def _run_coroutine(coro: Any) -> Any:
    """Run an ``aforward`` to completion from sync code (a running loop gets a thread of its own;
    DSPy's settings are context variables and travel with the copied context)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import contextvars

    ctx = contextvars.copy_context()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = ctx.run(asyncio.run, coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _run_observed(obj: Any, inputs: dict[str, Any], lm: Any, callbacks: list[Any] | None = None,
                  what: str = "the module",
                  sent: _SentMessages | None = None) -> tuple[Any, list[list[dict[str, Any]]]]:
    """Run a module under ``lm`` (a fresh copy) and return its prediction and the messages it sent
    (``sent``: the recorder to use, to read more of what happened)."""
    from .dspy_lm_guard import SETTING

    dspy = _dspy().dspy
    run_lm = lm.copy()
    sent = sent if sent is not None else _SentMessages()
    try:  # LMs the module picks itself are routed to run_lm: its endpoints are never used
        with dspy.context(lm=run_lm, callbacks=[*(callbacks or []), sent.callback()], **{SETTING: (run_lm,)}):
            prediction = _call(obj, inputs)
    except StepbridgeError:
        raise
    except Exception as exc:
        cls = type(obj)
        raise _error(f"{what} raised {type(exc).__name__} on inputs {sorted(inputs)}: {exc}",
                     construct=f"{cls.__name__}.{_entry(obj)}", target=getattr(cls, _entry(obj), cls),
                     hint="give sample inputs the module runs on, with an LM it can use") from None
    return prediction, sent.messages


class _SentMessages:
    """The messages of every LM call that completed, in order: calls on ``run_lm`` and on its copies
    (``dspy.BestOfN``/``Refine`` call ``lm.copy(rollout_id=..., temperature=1.0)``, whose history is
    its own), seen through DSPy's callbacks."""

    def __init__(self) -> None:
        self.messages: list[list[dict[str, Any]]] = []
        self.by_rewards: list[Any] = []  # reward functions (dspy_reward) that called an LM themselves
        self._open: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def callback(self) -> Any:
        from dspy.utils.callback import BaseCallback

        sent = self

        class _Callback(BaseCallback):
            def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
                from .dspy_reward import RUNNING

                messages = inputs.get("messages") or [{"role": "user", "content": inputs.get("prompt")}]
                reward = RUNNING.get()
                with sent._lock:
                    sent._open[call_id] = list(messages)
                    if reward is not None:
                        sent.by_rewards.append(reward)

            def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
                with sent._lock:
                    messages = sent._open.pop(call_id, None)
                    if messages is not None and exception is None:
                        sent.messages.append(messages)

        return _Callback()


def _snapshot(value: Any) -> Any:
    """A copy of a traced value as it is now (a list mutated after the call keeps its call-time value)."""
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _data(value: Any) -> Any:
    """A value as the JSON data a program passes (models dumped, enums as their values, a
    ``dspy.Prediction`` or ``Example`` as the object of its fields)."""
    import enum

    import pydantic
    from dspy.primitives.example import Example

    if isinstance(value, Example):
        return {k: _data(value[k]) for k in value.keys()}  # noqa: SIM118 (an Example is no dict)
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_data(v) for v in value]
    if isinstance(value, dict):
        return {k: _data(v) for k, v in value.items()}
    return value


def _equal_data(a: Any, b: Any) -> bool:
    """Equal as data, with types kept apart (``1``, ``1.0`` and ``True`` differ)."""
    try:
        return json.dumps(_data(a), sort_keys=True, default=repr) == json.dumps(_data(b), sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return _same(a, b)


def _infer_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list):
        return f"list[{_infer_type(value[0])}]" if value else "list[str]"
    if isinstance(value, dict):
        inner = {_infer_type(v) for v in value.values()}
        return f"dict[str, {inner.pop()}]" if len(inner) == 1 else "dict[str, str]"
    return "str"


#: the key a bare value returned by forward (a str, not a dspy.Prediction) is traced under until it is named
BARE = ""


def _returned(prediction: Any) -> dict[str, Any]:
    """What forward returned, as fields: a prediction's, or a bare value (``return pred.answer``) under
    :data:`BARE` (the program's single output; :func:`_bare_name` names it)."""
    if hasattr(prediction, "keys") and hasattr(prediction, "__getitem__"):
        return {k: prediction[k] for k in prediction.keys()}  # noqa: SIM118 (a Prediction is no dict)
    return {BARE: prediction}


def _bare_name(ref: Any, inputs: Sequence[str]) -> str:
    """The output name of a bare returned value: the field it is (``return self.gen(...).answer`` gives
    ``answer``), else ``output``; never an input's name."""
    if isinstance(ref, str) and ref.startswith("$") and not ref.startswith("$$") and ref.count(".") == 1:
        name = ref.split(".", 1)[1]
        if name not in inputs:
            return name
    return "output"


def _output_names(prediction: Any, obj: Any) -> list[str]:
    if hasattr(prediction, "keys"):
        return list(prediction.keys())
    cls = type(obj)
    raise _error(f"forward returned {type(prediction).__name__}, not a dspy.Prediction",
                 construct=f"{cls.__name__}.{_entry(obj)}", target=getattr(cls, _entry(obj), cls),
                 hint="return a dspy.Prediction (or a predictor's result)")


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _doc(obj: Any) -> str | None:
    doc = type(obj).__doc__
    if not doc or type(obj).__module__.startswith("dspy."):
        return None
    return " ".join(doc.split())[:2000]


def _snake(text: str) -> str:
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", text).lower()
    return re.sub(r"[^a-z0-9_]", "_", snake) or "imported"


def _identifier(path: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", path.removeprefix("self.")).strip("_")
    return name if name and not name[0].isdigit() else f"m_{name}"


def _perturb(value: Any, salt: str) -> Any:
    if isinstance(value, str):
        return f"{value} {salt}"
    if isinstance(value, list):
        return [_perturb(v, salt) for v in value]
    if isinstance(value, dict):
        return {k: _perturb(v, salt) for k, v in value.items()}
    return value



def dspy_retriever(rm: Any) -> Any:
    """A retriever factory over a DSPy RM (the callable ``dspy.configure(rm=...)`` takes), for
    ``stepbridge.retrievers.register(name, dspy_retriever(rm))``: a ``retrieve`` module of that kind then
    returns what ``dspy.Retrieve`` returns (each passage's ``long_text``, ``k`` of them). An import finds the
    registration whose RM is ``dspy.settings.rm`` and turns ``dspy.Retrieve`` calls into ``retrieve`` steps."""
    from stepbridge.retrieve import Hits

    class _RM:
        def search(self, query: str, k: int) -> Hits:
            found = rm(query, k=k)
            if not isinstance(found, Iterable):
                found = [found]
            passages = [str(p.long_text) for p in found]
            return Hits(passages=passages, ids=[str(i) for i in range(len(passages))], scores=[0.0] * len(passages))

    def factory(spec: Any, base_dir: Any) -> _RM:
        return _RM()

    factory.__stepbridge_dspy_rm__ = rm  # type: ignore[attr-defined]
    return factory


def _retrieve_module(obj: Any) -> dict[str, Any] | None:
    """A ``dspy.Retrieve`` as a ``retrieve`` module: its ``k``, and the registered retriever wrapping the
    ambient RM (``None`` when none is registered)."""
    from stepbridge.registry import retrievers

    rm = _dspy().dspy.settings.rm
    if rm is None:
        return None
    for name in retrievers.names():
        try:
            factory = retrievers.get(name)
        except Exception:  # a broken entry point must not break the import
            continue
        if getattr(factory, "__stepbridge_dspy_rm__", None) is rm:
            return {"type": "retrieve", "retriever": {"kind": name}, "k": int(obj.k)}
    return None
