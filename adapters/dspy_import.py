"""Importing a live DSPy module as a program, and saying honestly how faithful the result is.

Three ways, tried in order (conversion always starts from the live object; nothing is unpickled,
``dspy.load``-ed or imported from a name found in a file):

* **exact** — a bare ``dspy.Predict`` / ``dspy.ChainOfThought``: signature (types become a format-2
  ``types`` section: pydantic models, enums, ``Any``, ``History``), instructions, demos, and the
  settings that change what is sent (the predictor's model, ``temperature``, ``max_tokens``, ``n``,
  and the ambient DSPy adapter: ``dspy.context(adapter=JSONAdapter())`` becomes ``adapter: json``);
  never an endpoint or key.
* **traced** — a custom module whose ``forward``/``aforward`` calls predictors (attributes, or kept in
  lists, dicts and nested modules) in a fixed data flow: runs on sample inputs are observed through
  DSPy callbacks (arguments copied at call time), value matching wires each argument to a program
  input, an earlier result or a constant (an ambiguous match is settled by a second run on perturbed
  inputs, never by preference), and the conversion is verified by running both on every sample and
  comparing outputs and every LM message.
* **opaque** — one ``dspy`` step naming the module's registered class, its inputs from ``forward``'s
  parameters and its outputs from every sample (or the module's declared ``signature``).

**What "verified" means.** ``forward``'s source is read statically (:mod:`ast`) and its lines are
traced while the samples run: every ``if``/``while``/``for``/``try``/comprehension/conditional
expression is a *construct* of the report, ``verified`` only when all its paths ran on the samples
(and a loop only when its count cannot vary: ``range(<literal>)``); otherwise the import is
*partially verified* and the report names what was not covered. :class:`ImportReport` lists every
construct as ``exact``, ``verified``, ``unverified`` (why) or ``opaque`` (why); ``strict=True`` (CLI
``--strict``) refuses anything less than fully verified.

Every failure is a :class:`~stepbridge.errors.ConversionError` naming the construct, its source file
and line, and what to do. The LM for tracing is resolved as the CLI resolves it (the operator's
default LM profile, through :class:`~stepbridge.adapters.dspy.DSPyAdapter`) unless ``lm=`` is given.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import copy
import inspect
import json
import re
import sys
import textwrap
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stepbridge.errors import ConversionError, StepbridgeError
from stepbridge.program import Program
from stepbridge.signature import FieldSpec, Signature, TypeExpr

__all__ = ["Construct", "ImportReport", "Verification", "import_module", "signature_from_dspy", "verify"]

def _register_hint(cls: type) -> str:
    return (f"register {cls.__name__} in stepbridge.registry.dspy_modules (or the 'stepbridge.dspy_modules' "
            "entry point group) to import it as an opaque 'dspy' step")


# ================================================================================================
# Report
# ================================================================================================
@dataclass
class Verification:
    """Result of running the original module and the converted program on the same inputs."""

    ok: bool
    samples: int
    mismatches: list[str] = field(default_factory=list)


@dataclass
class Construct:
    """One part of the module (a predictor, a statement of ``forward``) and how it was converted:
    ``status`` is ``exact``, ``verified``, ``unverified`` or ``opaque``; ``why`` says why when not."""

    name: str
    status: str
    why: str | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"construct": self.name, "status": self.status, "why": self.why, "line": self.line}

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.name}{where}: {self.status}" + (f" — {self.why}" if self.why else "")


@dataclass
class ImportReport:
    """How a DSPy module was converted: ``mode`` is ``exact``, ``traced`` or ``dspy_step``; ``parts``
    says how each sub-module became part of the program; ``constructs`` how each construct did."""

    mode: str
    parts: dict[str, str] = field(default_factory=dict)
    verification: Verification | None = None
    notes: list[str] = field(default_factory=list)
    constructs: list[Construct] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``exact``, ``verified``, ``partially verified``, ``unverified``, ``opaque`` or ``failed``."""
        if self.mode == "dspy_step":
            return "opaque"
        if self.verification is not None and not self.verification.ok:
            return "failed"
        if self.mode == "exact" and not any(c.status == "unverified" for c in self.constructs):
            return "verified" if self.verification is not None else "exact"
        if self.verification is None:
            return "unverified"
        if any(c.status in ("unverified", "opaque") for c in self.constructs):
            return "partially verified"
        return "verified"

    @property
    def verified(self) -> bool | None:
        """True only when every construct was verified on the samples (never for a partial cover)."""
        if self.verification is None:
            return None
        return self.status == "verified"

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "status": self.status,
            "parts": dict(self.parts),
            "verified": self.verified,
            "samples": self.verification.samples if self.verification else 0,
            "mismatches": list(self.verification.mismatches) if self.verification else [],
            "constructs": [c.to_dict() for c in self.constructs],
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        lines = [f"conversion: {self.mode} ({self.status})"]
        lines += [f"  {name}: {how}" for name, how in self.parts.items()]
        lines += [f"  {c}" for c in self.constructs if c.name not in self.parts]
        if self.verification is not None:
            v = self.verification
            lines.append(f"  verified on {v.samples} sample(s): {'ok' if v.ok else 'FAILED'}")
            lines += [f"    {m}" for m in v.mismatches]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ================================================================================================
# Errors with a place
# ================================================================================================
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


# ================================================================================================
# Types and signatures
# ================================================================================================
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


def signature_from_dspy(sig: Any, *, drop_outputs: Sequence[str] = (), types: _Types | None = None) -> Signature:
    """A :class:`Signature` from a ``dspy.Signature`` class (types, descriptions, instructions).
    Instructions equal to DSPy's default for the fields are left unset (they render the same).
    Declared types (pydantic models, enums) are collected into ``types``."""
    from stepbridge.formats import default_instructions

    types = types if types is not None else _Types()

    def fields(group: Mapping[str, Any], skip: Sequence[str] = ()) -> dict[str, FieldSpec]:
        return {
            name: FieldSpec(type=types.convert(info.annotation, f"{sig.__name__}.{name}", sig),
                            desc=_field_desc(name, info))
            for name, info in group.items() if name not in skip
        }

    plain = Signature(inputs=fields(sig.input_fields), outputs=fields(sig.output_fields, drop_outputs))
    instructions = sig.instructions
    if not instructions or instructions == default_instructions(plain):
        return plain
    return plain.with_instructions(instructions)


# ================================================================================================
# Predictors (exact)
# ================================================================================================
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


def _default_constructs(obj: Any) -> list[Construct]:
    """Output fields with a default (``dspy.OutputField(default=...)``): DSPy fills a reply that leaves
    them out; a program field has no default, so such a reply would not parse the same way."""
    from pydantic_core import PydanticUndefined

    out = []
    for _, predictor in obj.named_predictors():
        sig = predictor.signature
        for name, info in sig.output_fields.items():
            has_default = info.default_factory is not None or info.default not in (PydanticUndefined, None)
            if has_default:
                out.append(Construct(f"{sig.__name__}.{name}", "unverified",
                                     "DSPy fills its default when a reply leaves the field out; the program has no "
                                     "field defaults (the samples' replies all gave it)"))
    return out


def _demo_dicts(demos: Iterable[Any], names: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for demo in demos:
        data = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
        out.append(json.loads(json.dumps({k: data[k] for k in names if k in data}, default=str)))
    return out


def _is_leaf(obj: Any) -> bool:
    """A module converted as one program module (its inner predictors are its own)."""
    dspy = _dspy().dspy
    return type(obj) in (dspy.Predict, dspy.ChainOfThought, dspy.ReAct)


def _unconvertible_reason(obj: Any) -> str | None:
    """Why a DSPy built-in module has no exact conversion (``None``: it is not one of those)."""
    dspy = _dspy().dspy
    cls = type(obj)
    if cls in (dspy.BestOfN, dspy.Refine):
        return (f"dspy.{cls.__name__} calls a Python reward_fn with a dspy.Prediction; a {_snake(cls.__name__)} "
                "module takes a registered metric over plain dicts, so the reward cannot be carried over")
    if cls is dspy.MultiChainComparison:
        return ("its input 'completions' is reserved in a program signature (DSPy treats it specially), so the "
                "program could not keep DSPy's input names")
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


def _predictor_module(obj: Any, types: _Types) -> tuple[dict[str, Any], str] | None:
    """The program module (as file data) for an exact Predict / ChainOfThought / ReAct, and its type."""
    dspy = _dspy().dspy
    if type(obj) is dspy.ReAct:
        return _react_module(obj, types), "react"
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

    interface = module_interface(TypeAdapter(Module).validate_python(data))
    return dict(interface.outputs) if interface is not None else dict(sig.outputs)


def _program(name: str, signature: Signature, modules: dict[str, Any], steps: list[dict[str, Any]],
             types: _Types, description: str | None = None) -> Program:
    """The program, in the lowest format version that holds it (a format-1 program keeps its hash)."""
    from stepbridge.validate import validate

    data: dict[str, Any] = {"name": name, "signature": signature.model_dump(mode="json"),
                            "modules": modules, "steps": steps}
    if types.section:
        data["types"] = dict(types.section)
    if description:
        data["description"] = description
    last: Exception | None = None
    for version in (1, 2) if not _needs_v2(steps) else (2,):
        try:
            program = Program.model_validate({"stepbridge": version, **data})
            validate(program)
            return program
        except Exception as exc:  # our own data not valid in this version (ValueError, ValueSyntaxError...)
            last = exc
    raise _error(f"the converted program does not validate: {last}", construct=name,
                 hint="this is a bug of the importer: report it with the module") from None


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


# ================================================================================================
# Running the original
# ================================================================================================
def _entry(obj: Any) -> str:
    """``forward`` or ``aforward``: which one the module implements (DSPy classes define forward)."""
    cls = type(obj)
    own = [klass for klass in cls.__mro__ if klass is not object]
    for klass in own:
        if "forward" in vars(klass):
            return "forward"
        if "aforward" in vars(klass):
            return "aforward"
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
                  what: str = "the module") -> tuple[Any, list[list[dict[str, Any]]]]:
    """Run a module under ``lm`` (a fresh copy) and return its prediction and the messages it sent."""
    from .dspy_lm_guard import SETTING

    dspy = _dspy().dspy
    run_lm = lm.copy()
    try:  # LMs the module picks itself are routed to run_lm: its endpoints are never used
        with dspy.context(lm=run_lm, callbacks=list(callbacks or []), **{SETTING: (run_lm,)}):
            prediction = _call(obj, inputs)
    except StepbridgeError:
        raise
    except Exception as exc:
        cls = type(obj)
        raise _error(f"{what} raised {type(exc).__name__} on inputs {sorted(inputs)}: {exc}",
                     construct=f"{cls.__name__}.{_entry(obj)}", target=getattr(cls, _entry(obj), cls),
                     hint="give sample inputs the module runs on, with an LM it can use") from None
    return prediction, [list(entry.get("messages") or []) for entry in run_lm.history]


# ================================================================================================
# Static reading of forward: the control constructs and their lines
# ================================================================================================
@dataclass
class _Control:
    kind: str  # if | ifexp | for | while | try | comprehension | match
    line: int
    text: str
    paths: dict[str, int]  # path name -> first line of that path (0: cannot be told apart by lines)
    fixed: int | str | None = None  # a for over range(<literal>) (or "self.<attr>"), with no break: its passes


def _controls(cls: type, method: str) -> list[_Control]:
    """The control constructs of ``cls.method``, with absolute line numbers."""
    func = getattr(cls, method, None)
    if func is None:
        return []
    try:
        lines, start = inspect.getsourcelines(func)
    except (OSError, TypeError):
        return [_Control("source", 0, f"{cls.__name__}.{method}", {})]
    source = textwrap.dedent("".join(lines))
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [_Control("source", start, f"{cls.__name__}.{method}", {})]
    offset = start - 1
    found: list[_Control] = []

    def text(node: ast.AST) -> str:
        segment = ast.get_source_segment(source, node) or type(node).__name__
        first = segment.splitlines()[0] if segment else ""
        return first if len(first) <= 80 else first[:77] + "..."

    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0) + offset
        if isinstance(node, ast.If):
            paths = {"then": node.body[0].lineno + offset}
            paths["else"] = node.orelse[0].lineno + offset if node.orelse else -line
            found.append(_Control("if", line, text(node), paths))
        elif isinstance(node, ast.IfExp):
            found.append(_Control("conditional expression", line, text(node), {}))
        elif isinstance(node, ast.For | ast.AsyncFor):
            fixed: int | str | None = None
            it = node.iter
            exits = any(isinstance(n, ast.Break | ast.Return | ast.Raise) for n in ast.walk(node))
            if (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"
                    and len(it.args) == 1 and not exits):
                arg = it.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, int):
                    fixed = arg.value
                elif (isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name) and arg.value.id == "self"
                      and cls is not None):
                    fixed = f"self.{arg.attr}"  # resolved on the instance by the judge
            found.append(_Control("for", line, text(node), {"body": node.body[0].lineno + offset}, fixed))
        elif isinstance(node, ast.While):
            found.append(_Control("while", line, text(node), {"body": node.body[0].lineno + offset}))
        elif isinstance(node, ast.Try):
            paths = {f"except {i + 1}": h.body[0].lineno + offset for i, h in enumerate(node.handlers)}
            found.append(_Control("try", line, "try", paths))
        elif isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            found.append(_Control("comprehension", line, text(node), {}))
        elif isinstance(node, ast.Match):
            paths = {f"case {i + 1}": c.body[0].lineno + offset for i, c in enumerate(node.cases)}
            found.append(_Control("match", line, text(node), paths))
    return sorted(found, key=lambda c: c.line)


class _LineRecorder:
    """Which lines of the given functions ran (``sys.settrace`` on their code objects only)."""

    def __init__(self, codes: set[Any], tools: dict[Any, str] | None = None, on_tool: Any = None):
        self.codes = codes
        self.tools = tools or {}  # code object of a registered tool's function -> its registered name
        self.on_tool = on_tool  # (name, frame) -> a callable taking the return value, or None
        self.lines: dict[int, int] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> _LineRecorder:
        self._previous = sys.gettrace()
        sys.settrace(self._global)
        threading.settrace(self._global)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.settrace(self._previous)
        threading.settrace(self._previous)

    def _global(self, frame: Any, event: str, arg: Any) -> Any:
        if event != "call":
            return None
        if frame.f_code in self.codes:
            return self._local
        tool = self.tools.get(frame.f_code)
        if tool is not None and self.on_tool is not None:
            finish = self.on_tool(tool, frame)
            if finish is None:
                return None

            def returned(frame: Any, event: str, arg: Any) -> Any:
                if event == "return":
                    finish(arg)
                return returned

            return returned
        return None

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            with self.lock:
                self.lines[frame.f_lineno] = self.lines.get(frame.f_lineno, 0) + 1
        return self._local


def _custom_classes(obj: Any) -> list[tuple[type, str]]:
    """The module's own class and every nested custom module class, with the method DSPy runs."""
    dspy = _dspy().dspy
    out: list[tuple[type, str]] = []
    for _, sub in obj.named_sub_modules():
        cls = type(sub)
        if not isinstance(sub, dspy.Module) or cls.__module__.split(".")[0] == "dspy":
            continue
        pair = (cls, _entry(sub))
        if pair not in out:
            out.append(pair)
    return out


def _code_objects(func: Any) -> set[Any]:
    code = getattr(inspect.unwrap(func), "__code__", None)
    if code is None:
        return set()
    todo, seen = [code], set()
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        todo.extend(k for k in c.co_consts if hasattr(k, "co_code"))
    return seen


def _judge_controls(obj: Any, per_sample_lines: list[dict[int, int]]) -> list[Construct]:
    """Each control construct of the forward(s) as verified / unverified, from the lines the samples ran."""
    out: list[Construct] = []
    for cls, method in _custom_classes(obj):
        controls = _controls(cls, method)
        for c in controls:
            name = f"{cls.__name__}.{method}: {c.kind} `{c.text}`"
            if c.kind == "source":
                out.append(Construct(name, "unverified", "its source is not available to read", c.line or None))
                continue
            ran = [lines for lines in per_sample_lines if lines.get(c.line)]
            if not ran:
                out.append(Construct(name, "unverified", "no sample reached it", c.line))
                continue
            if c.kind == "if":
                then_line, else_line = c.paths["then"], c.paths["else"]
                took_then = sum(1 for lines in ran if lines.get(then_line))
                if else_line > 0:
                    took_else = sum(1 for lines in ran if lines.get(else_line))
                else:  # no else: the path around the body ran when the test ran more often than the body
                    took_else = sum(1 for lines in ran if lines.get(c.line, 0) > lines.get(then_line, 0))
                missing = [p for p, n in (("then", took_then), ("else", took_else)) if n == 0]
                if missing:
                    out.append(Construct(name, "unverified", f"the {' and '.join(missing)} path never ran on the "
                                         "samples: inputs taking it may behave differently", c.line))
                else:
                    out.append(Construct(name, "verified", None, c.line))
            elif c.kind in ("for", "while"):
                fixed = c.fixed
                if isinstance(fixed, str):  # range(self.attr): the module's own setting, if it is an int
                    value = getattr(obj, fixed.removeprefix("self."), None) if cls is type(obj) else None
                    fixed = value if isinstance(value, int) and not isinstance(value, bool) else None
                    why = f"always {fixed} passes ({c.fixed} = {fixed}, the module's setting at import)"
                else:
                    why = f"always {fixed} passes"
                if fixed is not None:
                    out.append(Construct(name, "verified", why, c.line))
                    continue
                counts = sorted({lines.get(c.paths["body"], 0) for lines in ran})
                if len(counts) == 1:
                    out.append(Construct(name, "unverified", f"it made {counts[0]} pass(es) on every sample: "
                                         "inputs making another number of passes may behave differently", c.line))
                else:
                    out.append(Construct(name, "verified", f"passes seen: {counts}", c.line))
            elif c.kind in ("try", "match"):
                missing = [p for p, first in c.paths.items() if not any(lines.get(first) for lines in ran)]
                if missing:
                    out.append(Construct(name, "unverified", f"{', '.join(missing)} never ran on the samples",
                                         c.line))
                else:
                    out.append(Construct(name, "verified", None, c.line))
            else:  # a conditional expression or comprehension: its paths share a line
                out.append(Construct(name, "unverified", "its paths cannot be told apart by the lines that ran "
                                     "(a different input may take another path or another count)", c.line))
    return out


# ================================================================================================
# Tracing custom modules
# ================================================================================================
@dataclass
class _Call:
    name: str
    kwargs: dict[str, Any]
    outputs: dict[str, Any] | None = None


def _snapshot(value: Any) -> Any:
    """A copy of a traced value as it is now (a list mutated after the call keeps its call-time value)."""
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


class _Tracer:
    """DSPy callback recording the outermost calls of the module's predictors, wherever they are kept."""

    def __init__(self, root: Any, names: dict[int, str]):
        from dspy.utils.callback import BaseCallback

        tracer = self

        class _Callback(BaseCallback):
            def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
                tracer.start(call_id, instance, inputs)

            def on_module_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
                tracer.end(call_id, outputs, exception)

        self.callback = _Callback()
        self.root = root
        self.names = names
        self.calls: list[_Call] = []
        self.problems: list[str] = []
        self._open: dict[str, _Call | None] = {}
        self._depth = threading.local()
        self._thread = threading.get_ident()
        self.tool_names: dict[str, str] = {}  # registered tool -> its module name in the program
        self._lock = threading.Lock()

    def start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            depth = getattr(self._depth, "n", 0)
            if instance is self.root or depth or not _is_leaf(instance):
                if depth:
                    self._depth.n = depth + 1
                self._open[call_id] = None
                if not _is_leaf(instance) and instance is not self.root and type(instance).__module__.startswith(
                        "dspy.") and depth == 0:
                    reason = _unconvertible_reason(instance) or "only Predict, ChainOfThought and ReAct are converted"
                    self.problems.append(f"forward calls dspy.{type(instance).__name__}, which is not converted: "
                                         f"{reason}")
                return
            name = self.names.get(id(instance))
            if threading.get_ident() != self._thread:
                self.problems.append("predictors are called from several threads (dspy.Parallel or a thread "
                                     "pool): the order of calls is not fixed")
            if name is None:
                self.problems.append(f"forward calls a {type(instance).__name__} it creates itself (not kept on "
                                     "the module)")
                self._open[call_id] = None
                self._depth.n = 1
                return
            args = _snapshot(dict(inputs.get("kwargs") or {}))
            if inputs.get("args"):
                self.problems.append(f"{name} is called with positional arguments")
            extra = {k for k in ("config", "demos", "lm", "signature") if k in args}
            if extra:
                self.problems.append(f"{name} is called with per-call {', '.join(sorted(extra))}")
            call = _Call(name, args)
            self.calls.append(call)
            self._open[call_id] = call
            self._depth.n = 1

    def tool(self, tool: str, frame: Any) -> Any:
        """A registered tool's function called by forward itself (not inside a predictor): one call, its
        arguments as bound at call time, its return value shaped as the tool step returns it."""
        with self._lock:
            if getattr(self._depth, "n", 0):
                return None
            code = frame.f_code
            params = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
            name = self.tool_names.setdefault(tool, _tool_module_name(tool, self.names))
            call = _Call(name, _snapshot({p: frame.f_locals[p] for p in params if p in frame.f_locals}))
            self.calls.append(call)

        def finish(value: Any) -> None:
            call.outputs = _tool_outputs(tool, _snapshot(value))

        return finish

    def end(self, call_id: str, outputs: Any, exception: BaseException | None) -> None:
        with self._lock:
            if call_id not in self._open:
                return
            call = self._open.pop(call_id)
            depth = getattr(self._depth, "n", 0)
            if depth:
                self._depth.n = depth - 1
            if call is None:
                return
            if exception is not None or outputs is None:
                self.problems.append(f"{call.name} raised {type(exception).__name__ if exception else 'no result'}")
                return
            call.outputs = _snapshot(dict(outputs.items())) if hasattr(outputs, "items") else None


def _tool_codes() -> dict[Any, str]:
    """The code objects of registered tools' Python functions (a call of one in forward is a tool step)."""
    from stepbridge.registry import tools

    out: dict[Any, str] = {}
    for name in tools.names():
        try:
            func = inspect.unwrap(tools.get(name).func)
        except Exception:  # a broken entry point must not break the import of other modules
            continue
        code = getattr(func, "__code__", None)
        if code is not None:
            out.setdefault(code, name)
    return out


def _tool_module_name(tool: str, taken: Mapping[int, str]) -> str:
    name = _identifier(tool)
    return name if name not in taken.values() else f"{name}_tool"


def _tool_outputs(tool: str, value: Any) -> dict[str, Any]:
    """The outputs of a tool step returning ``value`` (a TypedDict's fields, else ``result``)."""
    from stepbridge.registry import tools

    outputs = list(tools.get(tool).signature.outputs)
    if outputs != ["result"] and isinstance(value, Mapping):
        return {k: value.get(k) for k in outputs}
    return {"result": value}


def _identifier(path: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", path.removeprefix("self.")).strip("_")
    return name if name and not name[0].isdigit() else f"m_{name}"


def _leaves(obj: Any) -> dict[str, Any]:
    """Every Predict / ChainOfThought reachable from the module (attributes, lists, dicts, nested
    modules), named after its path (``layers[0]`` -> ``layers_0``), outermost first."""
    leaves: dict[str, Any] = {}
    inside: set[int] = set()
    for path, sub in obj.named_sub_modules():
        if sub is obj or id(sub) in inside:
            continue
        if _is_leaf(sub):
            for _, inner in sub.named_sub_modules():
                if inner is not sub:
                    inside.add(id(inner))
            name = _identifier(path)
            while name in leaves:
                name += "_"
            leaves[name] = sub
    return leaves


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _data(value: Any) -> Any:
    """A value as the JSON data a program passes (models dumped, enums as their values)."""
    import enum

    import pydantic

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


def _candidates(value: Any, inputs: dict[str, Any], results: list[tuple[str, dict[str, Any]]]) -> list[str]:
    refs: list[str] = []
    for as_name, outputs in results:
        refs += [f"${as_name}.{k}" for k, v in outputs.items() if _same(v, value)]
    refs += [f"$inputs.{k}" for k, v in inputs.items() if _same(v, value)]
    return refs


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


def _output_names(prediction: Any, obj: Any) -> list[str]:
    if hasattr(prediction, "keys"):
        return list(prediction.keys())
    cls = type(obj)
    raise _error(f"forward returned {type(prediction).__name__}, not a dspy.Prediction",
                 construct=f"{cls.__name__}.{_entry(obj)}", target=getattr(cls, _entry(obj), cls),
                 hint="return a dspy.Prediction (or a predictor's result)")


def _marked(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each sample with a marker appended to its text values: inputs of another length and content,
    which may take paths the samples did not (and make equal-by-coincidence values differ)."""
    return [{k: _perturb(v, f"<input {k}>") for k, v in s.items()} for s in samples]


def _runnable(obj: Any, inputs: list[dict[str, Any]], lm: Any, names: dict[int, str]) -> list[_Traced]:
    """Traced runs of the inputs the original module accepts (a marked input it rejects is dropped)."""
    runs = []
    for sample in inputs:
        try:
            runs += _trace_runs(obj, [sample], lm, names, [])
        except ConversionError:
            continue
    return runs


def _template_parts(value: str, sources: dict[str, str]) -> list[Any]:
    """``value`` as literal text and references (greedy, longest source first at each position)."""
    by_length = sorted(sources.items(), key=lambda kv: -len(kv[1]))
    parts: list[Any] = []
    i = 0
    while i < len(value):
        for ref, text in by_length:
            if value.startswith(text, i):
                parts.append((ref,))
                i += len(text)
                break
        else:
            if parts and isinstance(parts[-1], str):
                parts[-1] += value[i]
            else:
                parts.append(value[i])
            i += 1
    return parts


def _render(parts: list[Any], sources: dict[str, str]) -> str | None:
    out = []
    for part in parts:
        if isinstance(part, tuple):
            if part[0] not in sources:
                return None
            out.append(sources[part[0]])
        else:
            out.append(part)
    return "".join(out)


def _infer_template(entries: list[Any]) -> dict[str, Any] | None:
    """A ``$template`` value rebuilding every observed string from the inputs and earlier results
    (an f-string in forward), or ``None``. Templates from the marked run are tried first: there,
    values equal by coincidence differ."""
    if not all(isinstance(v, str) for v, _, _ in entries):
        return None
    for value, _, sources in reversed(entries):
        parts = _template_parts(value, sources)
        if not any(isinstance(p, tuple) for p in parts):
            continue
        if all(_render(parts, src) == v for v, _, src in entries):
            names: dict[str, str] = {}
            text = []
            for part in parts:
                if isinstance(part, tuple):
                    base = _identifier(part[0].rsplit(".", 1)[-1])
                    name = next(n for n in (base, *(f"{base}_{k}" for k in range(2, 99)))
                                if names.get(n, part[0]) == part[0])
                    names[name] = part[0]
                    text.append("{" + name + "}")
                else:
                    text.append(part.replace("{", "{{").replace("}", "}}"))
            return {"$template": ["".join(text), names]}
    return None


def _perturb(value: Any, salt: str) -> Any:
    if isinstance(value, str):
        return f"{value} {salt}"
    if isinstance(value, list):
        return [_perturb(v, salt) for v in value]
    if isinstance(value, dict):
        return {k: _perturb(v, salt) for k, v in value.items()}
    return value


@contextlib.contextmanager
def _salted(leaves: dict[str, Any]) -> Iterator[None]:
    """Each predictor's string outputs marked with who produced them (``answer`` becomes
    ``answer <from gen#2>``), so a value equal to an input by coincidence no longer is."""
    counts: dict[str, int] = {}

    def wrap(name: str, forward: Any) -> Any:
        def salted_forward(*args: Any, **kwargs: Any) -> Any:
            prediction = forward(*args, **kwargs)
            counts[name] = counts.get(name, 0) + 1
            for key in list(prediction.keys()):
                prediction[key] = _perturb(prediction[key], f"<from {name}#{counts[name]}>")
            return prediction

        return salted_forward

    patched = []
    for name, leaf in leaves.items():
        had = "forward" in vars(leaf)
        patched.append((leaf, had, vars(leaf).get("forward")))
        object.__setattr__(leaf, "forward", wrap(name, type(leaf).forward.__get__(leaf)))  # no direct-call warning
    try:
        yield
    finally:
        for leaf, had, before in patched:
            if had:
                object.__setattr__(leaf, "forward", before)
            else:
                del leaf.__dict__["forward"]


@dataclass
class _Traced:
    sample: dict[str, Any]
    calls: list[_Call]
    prediction: Any
    lines: dict[int, int]
    tools: dict[str, str] = field(default_factory=dict)  # registered tool -> module name


def _trace_runs(obj: Any, samples: list[dict[str, Any]], lm: Any, names: dict[int, str],
                problems: list[str]) -> list[_Traced]:
    codes: set[Any] = set()
    for cls, method in _custom_classes(obj):
        codes |= _code_objects(getattr(cls, method))
    runs = []
    tool_codes = _tool_codes()
    for sample in samples:
        tracer = _Tracer(obj, names)
        with _LineRecorder(codes, tool_codes, tracer.tool) as recorder:  # forward gets a copy of each sample
            prediction, _ = _run_observed(obj, _snapshot(sample), lm, [tracer.callback])
        runs.append(_Traced(sample, tracer.calls, prediction, recorder.lines, dict(tracer.tool_names)))
        problems += tracer.problems
    return runs


def _trace_program(obj: Any, samples: list[dict[str, Any]], lm: Any, name: str
                   ) -> tuple[Program, ImportReport, list[dict[str, Any]]]:
    """The traced program, its report, and the inputs it must be verified on (whose paths count)."""
    types = _Types()
    leaves = _leaves(obj)
    names = {id(m): n for n, m in leaves.items()}
    converted = {n: _predictor_module(m, types) for n, m in leaves.items()}
    problems: list[str] = []
    runs = _trace_runs(obj, samples, lm, names, problems)
    for r in runs:  # registered tools forward called: tool steps
        for tool, module_name in r.tools.items():
            converted[module_name] = ({"type": "tool", "tool": tool}, "tool")
    sequences = {tuple(c.name for c in r.calls) for r in runs}
    if len(sequences) != 1:
        problems.append("the sequence of predictor calls differs between samples: "
                        + " | ".join(" -> ".join(s) or "(none)" for s in sorted(sequences)))
    cls = type(obj)
    entry = getattr(cls, _entry(obj))
    if problems:
        raise _error("forward is not a fixed data flow: " + "; ".join(dict.fromkeys(problems)),
                     construct=f"{cls.__name__}.{_entry(obj)}", target=entry, hint=_register_hint(cls))
    sequence = next(iter(sequences))
    if not sequence:
        raise _error("forward calls no predictor", construct=f"{cls.__name__}.{_entry(obj)}", target=entry,
                     hint=_register_hint(cls))
    counts: dict[str, int] = {}
    as_names: list[str] = []
    for n in sequence:
        counts[n] = counts.get(n, 0) + 1
        as_names.append(f"{n}_out" if counts[n] == 1 else f"{n}_out{counts[n]}")
    output_sets = {tuple(_output_names(r.prediction, obj)) for r in runs}
    if len(output_sets) != 1:
        raise _error(f"forward returns different fields on different samples: {sorted(output_sets)}",
                     construct=f"{cls.__name__}.{_entry(obj)}", target=entry, hint=_register_hint(cls))
    output_names = list(next(iter(output_sets)))

    def observations(trace_runs: list[_Traced]) -> dict[tuple[int, str], list[Any]]:
        """Per (call position or -1 for the return, argument): the value, the references equal to it,
        and every string value it could be built from."""
        obs: dict[tuple[int, str], list[Any]] = {}
        for r in trace_runs:
            for position in range(len(r.calls) + 1):
                results = [(as_names[i], r.calls[i].outputs or {}) for i in range(position)]
                sources = {f"$inputs.{k}": v for k, v in r.sample.items() if isinstance(v, str) and v.strip()}
                sources.update({f"${n}.{k}": v for n, outs in results for k, v in outs.items()
                                if isinstance(v, str) and v.strip()})
                if position < len(r.calls):
                    items = [((position, arg), value) for arg, value in r.calls[position].kwargs.items()]
                else:
                    items = [((-1, out), r.prediction[out]) for out in output_names]
                for key, value in items:
                    obs.setdefault(key, []).append((value, _candidates(value, r.sample, results), sources))
        return obs

    def common(entries: list[Any]) -> list[str]:
        refs: list[str] | None = None
        for _, cands, _ in entries:
            refs = list(cands) if refs is None else [c for c in refs if c in cands]
        return refs or []

    def constant(entries: list[Any]) -> bool:
        return all(_same(v, entries[0][0]) for v, _, _ in entries)

    obs = observations(runs)
    ambiguous = {key for key, entries in obs.items()
                 if len(common(entries)) > 1 or (not common(entries) and not constant(entries))}
    perturbed_note = None
    has_control = any(_controls(c, m) for c, m in _custom_classes(obj))
    runs_for_lines = runs
    if ambiguous or has_control:
        # A second run on marked inputs, with every predictor output marked by its producer: values equal by
        # coincidence then differ, and a path that depends on the data may change (then it is no fixed flow).
        perturbed = _marked(samples)
        more_problems: list[str] = []
        try:
            with _salted(leaves):
                extra = _trace_runs(obj, perturbed, lm, names, more_problems)
        except ConversionError as exc:  # the module rejects marked inputs: nothing settled, nothing counted
            extra = []
            more_problems.append(exc.message)
        paths = {tuple(c.name for c in r.calls) for r in extra}
        if not more_problems and extra and paths != {sequence}:
            raise _error("forward is not a fixed data flow: on marked inputs it calls "
                         + " | ".join(" -> ".join(p) or "(none)" for p in sorted(paths - {sequence}))
                         + " instead of " + " -> ".join(sequence), construct=f"{cls.__name__}.{_entry(obj)}",
                         target=entry, hint=_register_hint(cls))
        if not more_problems:
            for key, entries in observations(extra).items():
                obs[key] = obs.get(key, []) + entries
            perturbed_note = (f"checked on a second run of {len(extra)} sample(s) with marked inputs and predictor "
                              "outputs (wiring, and the path taken)")

    constructs: list[Construct] = []
    notes: list[str] = [perturbed_note] if perturbed_note else []

    def wire(key: tuple[int, str], what: str) -> Any:
        entries = obs[key]
        refs = common(entries)
        if len(refs) > 1:
            settled = ", marked inputs included" if perturbed_note else " (no marked run could tell them apart)"
            constructs.append(Construct(what, "unverified", f"its value equals each of {', '.join(refs)} on every "
                                        f"run{settled}: wired to {refs[0]}"))
        if refs:
            return refs[0]
        values = [v for v, _, _ in entries]
        if all(_same(v, values[0]) for v in values) and _json_safe(values[0]):
            notes.append(f"{what} is the constant {values[0]!r}")
            return _escape(values[0])
        template = _infer_template(entries)
        if template is not None:
            notes.append(f"{what} is built from a text template")
            return template
        raise _error(f"{what}: the value is neither a program input, an earlier result, a constant nor a text "
                     "built from them (a computed value)", construct=f"{cls.__name__}.{_entry(obj)}", target=entry,
                     hint="pass the value a predictor returned or an input unchanged, or " + _register_hint(cls))

    steps: list[dict[str, Any]] = []
    for position, module_name in enumerate(sequence):
        arg_names = list(runs[0].calls[position].kwargs)
        if any(list(r.calls[position].kwargs) != arg_names for r in runs):
            raise _error(f"{module_name} gets different arguments on different samples",
                         construct=f"{cls.__name__}.{_entry(obj)}", target=entry, hint=_register_hint(cls))
        with_ = {arg: wire((position, arg), f"argument {arg!r} of call {position + 1} ({module_name})")
                 for arg in arg_names}
        steps.append({"call": module_name, "with": with_, "as": as_names[position]})
    returns = {out: wire((-1, out), f"output {out!r}") for out in output_names}
    steps.append({"return": returns})

    unconvertible = sorted({n for n in sequence if converted[n] is None})
    if unconvertible:
        raise _error("calls predictors that cannot be converted exactly: " + ", ".join(unconvertible),
                     construct=f"{cls.__name__}.{_entry(obj)}", target=entry, hint=_register_hint(cls))
    modules = {n: converted[n][0] for n in dict.fromkeys(sequence)}  # type: ignore[index]
    sigs = {n: _interface(m) for n, m in modules.items()}
    in_types: dict[str, str] = {k: _infer_type(v) for k, v in samples[0].items()}
    for step in steps[:-1]:
        for arg, ref in step["with"].items():
            if isinstance(ref, str) and ref.startswith("$inputs."):
                spec = sigs[step["call"]].inputs.get(arg)
                if spec is not None:
                    in_types[ref.split(".", 1)[1]] = spec.type
    out_types: dict[str, str] = {}
    for out, ref in returns.items():
        src, _, fld = str(ref).lstrip("$").partition(".")
        if src == "inputs":
            out_types[out] = in_types.get(fld, "str")
        elif src in as_names:
            spec = sigs[sequence[as_names.index(src)]].outputs.get(fld)
            out_types[out] = spec.type if spec is not None else "str"
        else:
            out_types[out] = _infer_type(runs[0].prediction[out])
    clash = sorted(set(in_types) & set(out_types))
    if clash:
        raise _error(f"output field(s) {', '.join(clash)} have the name of an input; a program signature keeps "
                     "inputs and outputs apart", construct=f"{cls.__name__}.{_entry(obj)}", target=entry,
                     hint="return the outputs under other names, or " + _register_hint(cls))
    signature = Signature(inputs={k: FieldSpec(type=t) for k, t in in_types.items()},
                          outputs={k: FieldSpec(type=t) for k, t in out_types.items()})
    program = _program(name, signature, modules, steps, types, description=_doc(obj))
    parts = {n: f"{converted[n][1]} (exact, traced call{'s' if sequence.count(n) > 1 else ''})"  # type: ignore[index]
             for n in modules}
    constructs = [Construct(n, "exact") for n in modules] + constructs + _default_constructs(obj)
    if has_control:  # paths count as exercised only on inputs that are also verified: the marked ones, unmarked outputs
        marked_runs = _runnable(obj, _marked(samples), lm, names)
        other = sorted({tuple(c.name for c in r.calls) for r in marked_runs} - {sequence})
        if other:
            raise _error("forward is not a fixed data flow: on marked inputs it calls "
                         + " | ".join(" -> ".join(p) or "(none)" for p in other) + " instead of "
                         + " -> ".join(sequence), construct=f"{cls.__name__}.{_entry(obj)}", target=entry,
                         hint=_register_hint(cls))
        runs_for_lines = runs + marked_runs
    constructs += _judge_controls(obj, [r.lines for r in runs_for_lines])
    unused = sorted(set(leaves) - set(modules))
    if unused:
        constructs += [Construct(n, "unverified", "never called on the samples (left out of the program)")
                       for n in unused]
    if len(samples) == 1:
        notes.append("traced on one sample only: a computed value that happens to be constant would pass as a "
                     "constant; give several samples")
    report = ImportReport("traced", parts, notes=notes, constructs=constructs)
    return program, report, [r.sample for r in runs_for_lines]


def _static_program(obj: Any, samples: list[dict[str, Any]], lm: Any, name: str
                    ) -> tuple[Program, ImportReport] | None:
    """The program read statically from a forward that branches (:mod:`.dspy_static`), verified on the
    samples; ``None`` when forward does not branch, is outside the subset, or fails verification (the
    caller traces instead, and a trace of a branching forward is at best partially verified)."""
    from .dspy_static import Unsupported, compile_forward

    entry = _entry(obj)
    controls = _controls(type(obj), entry)
    dspy = _dspy().dspy
    has_parallel = any(isinstance(v, dspy.Parallel) for v in vars(obj).values())
    if (not has_parallel and not any(c.kind in ("if", "for", "comprehension") for c in controls)) \
            or len(_custom_classes(obj)) != 1:
        return None
    types = _Types()
    leaves = _leaves(obj)
    converted = {n: _predictor_module(m, types) for n, m in leaves.items()}
    interfaces = {n: Signature(inputs=Signature.model_validate(c[0]["signature"]).inputs,
                               outputs=_interface_outputs(c[0], Signature.model_validate(c[0]["signature"])))
                  for n, c in converted.items() if c is not None}
    try:
        compiled = compile_forward(obj, entry, {id(m): n for n, m in leaves.items() if n in interfaces},
                                   {n: list(sig.outputs) for n, sig in interfaces.items()})
    except Unsupported:
        return None
    modules = {n: converted[n][0] for n in dict.fromkeys(compiled.calls)}  # type: ignore[index]
    # inputs: typed by the predictor field each feeds; outputs: every name any return gives (null elsewhere)
    in_types = {k: _infer_type(v) for k, v in samples[0].items()}

    def walk(steps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for step in steps:
            yield step
            for key in ("then", "else"):
                yield from walk(step.get(key) or [])

    for step in walk(compiled.steps):
        module = str(step.get("call") or step.get("map") or "")
        for arg, ref in (step.get("with") or {}).items() if module else ():
            if isinstance(ref, str) and ref.startswith("$inputs."):
                spec = interfaces[module].inputs.get(arg)
                if spec is not None:
                    in_types[ref.split(".", 1)[1]] = spec.type
        over = step.get("over")
        if module and isinstance(over, list):  # a list written in the file: each item's references
            for element in over:
                for arg, ref in (element.items() if isinstance(element, dict) else ()):
                    spec = interfaces[module].inputs.get(arg)
                    if spec is not None and isinstance(ref, str) and ref.startswith("$inputs."):
                        in_types[ref.split(".", 1)[1]] = spec.type
        if module and isinstance(over, str) and over.startswith("$inputs."):  # a list of what each element feeds
            item = f"${step['item']}"
            fed = [interfaces[module].inputs[a].type for a, r in step["with"].items()
                   if r == item and a in interfaces[module].inputs]
            in_types[over.split(".", 1)[1]] = f"list[{fed[0] if fed else 'str'}]"
    as_modules = {str(step["as"]): str(step.get("call") or step.get("map")) for step in walk(compiled.steps)
                  if "call" in step or "map" in step}
    mapped_as = {step["as"] for step in walk(compiled.steps) if "map" in step}
    out_names = list(dict.fromkeys(k for mapping in compiled.returns for k in mapping))
    out_types: dict[str, set[str]] = {k: set() for k in out_names}
    for mapping in compiled.returns:
        for k in out_names:
            if k not in mapping:
                mapping[k] = None
                out_types[k].add("None")
                continue
            ref = mapping[k]
            src, _, fld = str(ref).lstrip("$").partition(".") if isinstance(ref, str) else ("", "", "")
            if src == "inputs":
                out_types[k].add(in_types.get(fld, "str"))
            elif src in as_modules:
                ftype = interfaces[as_modules[src]].outputs[fld].type
                out_types[k].add(f"list[{ftype}]" if src in mapped_as else ftype)
            elif isinstance(ref, dict) and "$template" in ref:
                out_types[k].add("str")
            elif isinstance(ref, dict) and "$index" in ref:  # one element of a map step's results
                src, _, fld = str(ref["$index"][0]).lstrip("$").partition(".")
                out_types[k].add(interfaces[as_modules[src]].outputs[fld].type if src in as_modules else "Any")
            else:
                out_types[k].add("Any" if isinstance(ref, str) and ref.startswith("$") else _infer_type(ref))
    outputs = {}
    for k, kinds in out_types.items():
        real = kinds - {"None"}
        base = real.pop() if len(real) == 1 else "Any"
        outputs[k] = FieldSpec(type=f"Optional[{base}]" if "None" in kinds and base != "Any" else base)
    signature = Signature(inputs={k: FieldSpec(type=t) for k, t in in_types.items()}, outputs=outputs)
    try:
        program = _program(name, signature, modules, compiled.steps, types, description=_doc(obj))
    except ConversionError:
        return None
    cls = type(obj)
    report = ImportReport("static", {n: f"{converted[n][1]} (exact)" for n in modules},  # type: ignore[index]
                          notes=[f"{cls.__name__}.{entry} read statically: {compiled.branches} if step(s), "
                                 f"{len(compiled.mapped)} map step(s)"],
                          constructs=[*(Construct(n, "exact") for n in modules), *_default_constructs(obj)])
    names = {id(m): n for n, m in leaves.items()}
    runs = _trace_runs(obj, samples, lm, names, []) + _runnable(obj, _marked(samples), lm, names)
    report.verification = verify(obj, program, [r.sample for r in runs], lm=lm)
    if not report.verification.ok:
        return None
    for judged in _judge_controls(obj, [r.lines for r in runs]):
        if judged.line in compiled.mapped:  # a map step: one call per element, for any length
            judged = Construct(judged.name, "verified", "converted to a map step (any number of elements)",
                               judged.line)
        report.constructs.append(judged)
    return program, report


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


# ================================================================================================
# Verification
# ================================================================================================
def verify(obj: Any, program: Program, samples: Sequence[dict[str, Any]], *, lm: Any = None) -> Verification:
    """Run the original module and ``program`` (as a DSPy module) on each sample and compare the
    program's outputs and every LM message."""
    from .dspy import ProgramModule

    concurrent = any(isinstance(step, dict) and ("map" in step or "parallel" in step)
                     for step in _all_steps(program.to_dict()["steps"]))
    with _lm_scope(lm) as run_lm:
        module = ProgramModule(program)
        mismatches: list[str] = []
        for i, sample in enumerate(samples):
            original, original_messages = _run_observed(obj, _snapshot(sample), run_lm)
            try:
                converted, converted_messages = _run_observed(module, _snapshot(sample), run_lm,
                                                              what="the converted program")
            except ConversionError as exc:
                mismatches.append(f"sample {i}: {exc.message}")
                continue
            for out in program.signature.outputs:
                want = original.get(out)
                if not _equal_data(want, converted[out]):
                    mismatches.append(f"sample {i}: output {out!r} differs: {want!r} != {converted[out]!r}")
            if len(original_messages) != len(converted_messages):
                mismatches.append(f"sample {i}: {len(original_messages)} LM calls originally, "
                                  f"{len(converted_messages)} converted")
            if concurrent:  # map / parallel calls run concurrently: the same messages, in any order
                original_messages = sorted(original_messages, key=_message_key)
                converted_messages = sorted(converted_messages, key=_message_key)
            for n, (a, b) in enumerate(zip(original_messages, converted_messages, strict=False)):
                if a != b:
                    mismatches.append(f"sample {i}: LM call {n + 1} sent different messages")
    return Verification(ok=not mismatches, samples=len(samples), mismatches=mismatches)


def _message_key(messages: Any) -> str:
    return json.dumps(messages, sort_keys=True, default=str)


def _all_steps(steps: list[Any]) -> Iterator[Any]:
    for step in steps:
        yield step
        if isinstance(step, dict):
            for key in ("then", "else", "default", "parallel"):
                yield from _all_steps(step.get(key) or [])
            for case in step.get("cases") or []:
                yield from _all_steps(case.get("steps") or [])
            if isinstance(step.get("loop"), dict):
                yield from _all_steps(step["loop"].get("steps") or [])


@contextlib.contextmanager
def _lm_scope(lm: Any) -> Iterator[Any]:
    """``lm``, or the LM the CLI would use: the operator's default profile through a DSPyAdapter."""
    if lm is not None:
        yield lm
        return
    from stepbridge.program import LMConfig

    adapter = _dspy().DSPyAdapter()
    try:
        yield adapter.dspy_lm(LMConfig())[0]
    finally:
        adapter.close()


# ================================================================================================
# Opaque fallback
# ================================================================================================
def _registered_name(obj: Any) -> str | None:
    from stepbridge.registry import dspy_modules

    for name in dspy_modules.names():
        try:
            target = dspy_modules.get(name)
        except Exception:  # a broken entry point must not break imports of other modules
            continue
        if target is type(obj) or target is obj:
            return name
    return None


def _module_state(obj: Any) -> dict[str, Any]:
    """Per predictor its state (``dspy.Retrieve`` and other non-predictor parameters are left out:
    DSPy 3.4.1's own ``Module.dump_state`` fails on ``Retrieve``)."""
    adapter = _dspy()
    state = {name: p.dump_state() for name, p in obj.named_predictors()}
    return adapter.sanitize_state(json.loads(json.dumps(state, default=str)))


def _dspy_step_program(obj: Any, samples: list[dict[str, Any]], lm: Any, name: str, registered: str,
                       why: str) -> tuple[Program, ImportReport]:
    cls = type(obj)
    entry = _entry(obj)
    params = [p for p in inspect.signature(getattr(obj, entry)).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not samples:
        raise _error("an opaque 'dspy' step needs the module's outputs, and no sample inputs were given",
                     construct=f"{cls.__name__}.{entry}", target=getattr(cls, entry),
                     hint=f"give sample inputs (--sample-inputs FILE.jsonl; inputs would be "
                          f"{', '.join(p.name for p in params) or 'none'})")
    types = _Types()
    declared = getattr(obj, "signature", None)
    outputs: dict[str, FieldSpec] = {}
    if declared is not None and hasattr(declared, "output_fields"):
        outputs = signature_from_dspy(declared, types=types).outputs
    with _lm_scope(lm) as run_lm:
        predictions = [_run_observed(obj, _snapshot(s), run_lm)[0] for s in samples]
    seen: dict[str, set[str]] = {}
    for p in predictions:
        for k in _output_names(p, obj):
            seen.setdefault(k, set()).add(_infer_type(p[k]))
    always = [k for k in seen if all(k in _output_names(p, obj) for p in predictions)]
    dropped = [k for k in seen if k not in always and k not in outputs]
    for k in always:
        if k not in outputs:
            kinds = seen[k]
            outputs[k] = FieldSpec(type=kinds.pop() if len(kinds) == 1 else "Any")
    input_names = [p.name for p in params] or list(samples[0])
    clash = sorted(set(input_names) & set(outputs))
    if clash:
        raise _error(f"output field(s) {', '.join(clash)} have the name of an input; a program signature keeps "
                     "inputs and outputs apart", construct=f"{cls.__name__}.{entry}", target=getattr(cls, entry),
                     hint="return the outputs under other names")
    inputs = {k: FieldSpec(type=_infer_type(samples[0][k]) if k in samples[0] else "str") for k in input_names}
    signature = Signature(inputs=inputs, outputs=outputs)
    module = {"type": "dspy", "module": registered, "signature": signature.model_dump(mode="json"),
              "state": _module_state(obj)}
    steps: list[dict[str, Any]] = [
        {"call": "module", "with": {k: f"$inputs.{k}" for k in inputs}, "as": "result"},
        {"return": {k: f"$result.{k}" for k in outputs}}]
    program = _program(name, signature, {"module": module}, steps, types, description=_doc(obj))
    notes = [why]
    if dropped:
        notes.append(f"output field(s) {', '.join(dropped)} returned on some samples only: left out of the outputs")
    return program, ImportReport("dspy_step", {"module": f"dspy step {registered!r} with its state"},
                                 notes=notes, constructs=[Construct(cls.__name__, "opaque", why)])


# ================================================================================================
# import_module
# ================================================================================================
def import_module(obj: Any, state: dict[str, Any] | None = None, sample_inputs: Iterable[dict[str, Any]] | None = None,
                  *, lm: Any = None, name: str | None = None, fallback: bool = True,
                  strict: bool = False) -> tuple[Program, ImportReport]:
    """Convert a live DSPy module into a program (see the module docstring for the three ways).

    ``state`` (a DSPy JSON state dict) is loaded into ``obj`` first, with every predictor's ``lm``
    dropped. ``sample_inputs`` drive tracing and verification (under ``lm``, else the operator's
    default LM profile, as the CLI does). ``fallback=False`` raises instead of producing an opaque
    ``dspy`` step; ``strict=True`` raises unless the whole conversion is verified on the samples.
    Every failure is a :class:`~stepbridge.errors.ConversionError`.
    """
    try:
        program, report = _import(obj, state, [dict(s) for s in (sample_inputs or [])], lm, name, fallback)
    except ConversionError:
        raise
    except Exception as exc:  # never a traceback: say which module and what to do
        cls = type(obj)
        raise _error(f"the conversion failed with {type(exc).__name__}: {exc}", construct=cls.__name__,
                     target=cls, hint=_register_hint(cls)) from exc
    if strict and report.status != "verified":
        raise _error(f"the conversion is {report.status}, not verified:\n{report}", construct=type(obj).__name__,
                     target=type(obj), hint="give sample inputs that take every path, or drop --strict",
                     report=report.to_dict())
    return program, report


def _import(obj: Any, state: dict[str, Any] | None, samples: list[dict[str, Any]], lm: Any, name: str | None,
            fallback: bool) -> tuple[Program, ImportReport]:
    adapter = _dspy()
    dspy = adapter.dspy
    if not isinstance(obj, dspy.Module):
        raise _error(f"expected a dspy.Module instance, got {type(obj).__name__}", construct=type(obj).__name__,
                     hint="pass a module instance (or a class/factory making one on the CLI)")
    if state is not None:
        obj.load_state(adapter.sanitize_state(state))
    program_name = name or _snake(type(obj).__name__)
    cls = type(obj)

    types = _Types()
    exact = _predictor_module(obj, types)
    if exact is not None:
        data, mtype = exact
        sig = Signature.model_validate(data["signature"])
        program_sig = Signature(inputs=sig.inputs, outputs=_interface_outputs(data, sig))
        steps: list[dict[str, Any]] = [
            {"call": "main", "with": {k: f"$inputs.{k}" for k in sig.inputs}, "as": "result"},
            {"return": {k: f"$result.{k}" for k in program_sig.outputs}},
        ]
        program = _program(program_name, program_sig, {"main": data}, steps, types)
        report = ImportReport("exact", {"main": f"{mtype} (exact)"},
                              constructs=[Construct("main", "exact"), *_default_constructs(obj)])
        if samples:
            report.verification = verify(obj, program, samples, lm=lm)
            if not report.verification.ok:
                raise _error("verification of an exact conversion failed:\n" + str(report), construct=mtype,
                             target=cls, hint="report this module: an exact conversion must not differ",
                             report=report.to_dict())
        return program, report

    why: str
    builtin = _unconvertible_reason(obj)
    if builtin is not None:
        why = f"dspy.{cls.__name__} has no exact conversion: {builtin}"
    elif samples:
        try:
            with _lm_scope(lm) as run_lm:
                static = _static_program(obj, samples, run_lm, program_name)
                if static is not None:
                    return static
                program, report, checked = _trace_program(obj, samples, run_lm, program_name)
                # The original runs again (not the traced runs): hidden state or randomness shows up here.
                report.verification = verify(obj, program, checked, lm=run_lm)
            if report.verification.ok:
                return program, report
            why = "the traced conversion failed verification:\n" + "\n".join(report.verification.mismatches)
        except ConversionError as exc:
            why = exc.message.split("; to fix: ")[0]
    else:
        why = ("a custom forward is converted by tracing runs on sample inputs, and none were given "
               "(--sample-inputs FILE.jsonl on the command line, sample_inputs= from Python)")
    registered = _registered_name(obj)
    if not fallback or registered is None:
        hint = _register_hint(cls) if registered is None else "allow the opaque fallback (drop --no-fallback)"
        if registered is None and cls.__module__.startswith("dspy."):
            hint = ("register the instance (stepbridge.registry.dspy_modules.register('name', module)) to import it "
                    "as an opaque 'dspy' step")
        file, line = _where(cls)
        raise ConversionError(f"cannot convert {cls.__name__}: {why}; to fix: {hint}", construct=cls.__name__,
                              file=file, line=line, hint=hint, report={"reason": why})
    return _dspy_step_program(obj, samples, lm, program_name, registered, why)


def _snake(text: str) -> str:
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", text).lower()
    return re.sub(r"[^a-z0-9_]", "_", snake) or "imported"
