"""Program validation: every problem at once, each with a JSON pointer, a line and a suggestion.

Validation runs before anything executes. It checks shape (pydantic, per module and per step so
one broken step does not hide the others) and meaning: modules and references exist, fields
exist on their producers, required inputs are given, producer and consumer types agree, names are
bound on every path, every path returns (:mod:`stepbridge.flow` checks the steps). Unused results
are warnings.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .dspy_state import state_problems
from .errors import InputValidationError, Issue, ProgramValidationError
from .flow import check_steps
from .interface import module_interface
from .named_types import TypeSpace, UnknownTypeError
from .names import field_name_problem, module_name_problem
from .pointers import escape as _esc
from .program import (
    FORMAT_VERSIONS,
    MODULE_TYPES,
    MODULE_TYPES_V2,
    WRAPPABLE_TYPES,
    BestOfNModule,
    DspyModule,
    LMConfig,
    Module,
    MultiChainComparisonModule,
    Program,
    ReactModule,
    RefineModule,
    RetrieveModule,
    ToolModule,
)
from .signature import IDENTIFIER, Signature, SignatureSyntaxError

__all__ = ["check_inputs", "validate", "validate_data"]

_module_adapter: TypeAdapter[Any] = TypeAdapter(Module)
_TOP_KEYS = ("stepbridge", "name", "description", "signature", "types", "lm", "modules", "steps")
_TAGS = set(MODULE_TYPES) | {"call", "map", "return", "set", "if", "switch", "loop", "parallel"}
_LM_HINT = "endpoints and secrets come from LM profiles (--lm / STEPBRIDGE_LM_*), never from a program file"



#: "Did you mean" is a courtesy with bounded cost: names longer than this get none, at most this many
#: candidates (the nearest in length) are compared, and one validation spends at most this many
#: comparisons in all (a hostile file with thousands of unknown names among thousands of modules would
#: otherwise cost minutes: every unknown name against every candidate).
SUGGEST_MAX_LENGTH = 64
SUGGEST_MAX_CANDIDATES = 32
SUGGEST_SCAN = 5_000  # candidates looked at (by length) per suggestion
SUGGEST_BUDGET = 1_000
_suggest_budget: ContextVar[list[int] | None] = ContextVar("suggest_budget", default=None)


def suggest(name: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to a misspelt ``name`` (difflib, cutoff 0.6), within the bounds above."""
    budget = _suggest_budget.get()
    if len(name) > SUGGEST_MAX_LENGTH or (budget is not None and budget[0] <= 0):
        return None
    window = max(2, len(name) // 2)
    pool = [c for c in itertools.islice(candidates, SUGGEST_SCAN)
            if isinstance(c, str) and abs(len(c) - len(name)) <= window]
    if len(pool) > SUGGEST_MAX_CANDIDATES:
        pool = sorted(pool, key=lambda c: (abs(len(c) - len(name)), c[:1] != name[:1]))[:SUGGEST_MAX_CANDIDATES]
    if budget is not None:
        budget[0] -= len(pool)
    match = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
    return match[0] if match else None


class _Collector:
    def __init__(self, lines: dict[str, int]):
        self.issues: list[Issue] = []
        self.lines = lines

    def line(self, pointer: str) -> int | None:
        while True:
            if pointer in self.lines:
                return self.lines[pointer]
            if not pointer:
                return None
            pointer = pointer.rsplit("/", 1)[0]

    def error(self, pointer: str, message: str, suggestion: str | None = None) -> None:
        self.issues.append(Issue(pointer, message, "error", self.line(pointer), suggestion))

    def warning(self, pointer: str, message: str) -> None:
        self.issues.append(Issue(pointer, message, "warning", self.line(pointer)))

    def pydantic(self, base: str, exc: ValidationError) -> None:
        for err in exc.errors(include_url=False):
            # drop the union tag names pydantic puts into the location (first in a step or module, or
            # right after /steps/<i> and /modules/<name>), never a field that has the same name
            raw_loc = [str(p) for p in err["loc"]]
            loc = [p for i, p in enumerate(raw_loc) if not (
                p in _TAGS and i < len(raw_loc) - 1
                and (i == 0 or (i >= 2 and raw_loc[i - 2] in ("steps", "modules"))))]
            pointer = base + "".join(f"/{_esc(p)}" for p in loc)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                key = loc[-1] if loc else "?"
                msg = f"unknown key {key!r}"
                if "/lm" in pointer and key in (
                    "base_url", "api_base", "api_key", "api_key_env", "url", "endpoint", "headers"
                ):
                    msg += f": {_LM_HINT}"
            elif err["type"] == "union_tag_invalid" and err.get("ctx", {}).get("tag") == "program_of_thought":
                self.error(pointer + "/type", "module type 'program_of_thought' runs LM-written Python code, which "
                           "needs a sandboxed interpreter; no stepbridge adapter runs one, so it is refused "
                           "(use 'react' with registered tools, or a 'dspy' module on the dspy backend)")
                continue
            elif err["type"] == "union_tag_invalid":
                tag = err.get("ctx", {}).get("tag")
                msg = f"unknown module type {tag!r} (use one of: {', '.join(MODULE_TYPES)})"
                self.error(pointer + "/type", msg, suggest(str(tag), MODULE_TYPES))
                continue
            elif err["type"] == "union_tag_not_found":
                msg = f"a module needs a 'type' (one of: {', '.join(MODULE_TYPES)})"
            elif err["type"] == "value_error":
                msg = msg.removeprefix("Value error, ")
            elif err["type"] == "string_too_long":
                msg = f"string too long ({err.get('ctx', {}).get('max_length')} characters at most)"
            self.error(pointer, msg)


def _format1_types(sig: Signature | None, pointer: str, c: _Collector) -> None:
    """Format 1 has the closed type set of DESIGN section 2: the types of format 2 need ``stepbridge: 2``."""
    if sig is None:
        return
    for group in ("inputs", "outputs"):
        for name, spec in getattr(sig, group).items():
            t = spec.type_expr
            if t.needs_typed_objects:
                names = t.names()
                what = f"unknown type {names[0]!r} (format 1 has no 'types' section)" if names else (
                    f"type {t} needs format 2")
                c.error(f"{pointer}/{group}/{_esc(name)}", f"{what}: write 'stepbridge: 2' to use Any, unions, "
                        "tuples, dict keys other than str, History and declared types")


def _types_section(data: dict[str, Any], version: Any, c: _Collector) -> TypeSpace:
    """The declared types (format 2), every problem of the section reported with its pointer."""
    if "types" not in data:
        return TypeSpace()
    if version == 1:
        c.error("/types", "a 'types' section needs 'stepbridge: 2'")
        return TypeSpace()
    space, problems = TypeSpace.build(data["types"])
    for problem in problems:
        c.error(f"/types{problem.pointer}", problem.message, problem.suggestion)
    return space


def _check_types(sig: Signature | None, pointer: str, version: Any, space: TypeSpace, c: _Collector) -> None:
    """Format 1: the closed type set; format 2: every declared name a signature uses exists."""
    if version == 1:
        _format1_types(sig, pointer, c)
        return
    if sig is None:
        return
    for group in ("inputs", "outputs"):
        for name, spec in getattr(sig, group).items():
            try:
                space.resolve(spec.type_expr)
            except UnknownTypeError as exc:
                if exc.name not in space.declared:  # a declared but broken type is reported where it is declared
                    c.error(f"{pointer}/{group}/{_esc(name)}",
                            f"unknown type {exc.name!r}: declare it in the 'types' section",
                            exc.suggestion)
            except TypeError as exc:
                c.error(f"{pointer}/{group}/{_esc(name)}", str(exc))


def _parse_signature(raw: Any, pointer: str, c: _Collector) -> Signature | None:
    try:
        return Signature.model_validate(raw)
    except SignatureSyntaxError as exc:
        c.error(pointer, f"invalid signature: {exc}")
    except ValidationError as exc:
        c.pydantic(pointer, exc)
    return None


def _module_signature(module: Any, c: _Collector, pointer: str) -> Signature | None:
    from .registry import dspy_modules, tools

    if module.type in MODULE_TYPES_V2:
        return None  # checked with the other modules (see _check_module_links)
    if isinstance(module, ToolModule):
        if module.tool not in tools:
            c.error(f"{pointer}/tool", f"unknown tool {module.tool!r}: tools are named callables from the "
                    "tool registry (stepbridge.tools.register or the 'stepbridge.tools' entry points), never "
                    "import paths", suggest(module.tool, tools.names()))
            return module.signature
        if module.signature is not None:
            return module.signature
        return tools.get(module.tool).signature
    if isinstance(module, DspyModule) and module.module not in dspy_modules:
        c.error(f"{pointer}/module", f"unknown DSPy module {module.module!r}: register it by exact name "
                "(entry point group 'stepbridge.dspy_modules' or stepbridge.registry.dspy_modules.register)",
                suggest(module.module, dspy_modules.names()))
    try:
        return module_interface(module)
    except (SignatureSyntaxError, ValueError) as exc:  # e.g. a chain_of_thought with its own 'reasoning' input
        c.error(f"{pointer}/signature", f"invalid module: {exc}")
        return None


def validate_data(
    data: Any, *, lines: dict[str, int] | None = None, base_dir: str | Path | None = None
) -> Program:
    """Validate plain data (a parsed file) into a :class:`Program`; raise with every issue found."""
    c = _Collector(lines or {})
    program = _validate(data, c, base_dir)
    errors = [i for i in c.issues if i.severity == "error"]
    if errors or program is None:
        raise ProgramValidationError(c.issues)
    program.with_base_dir(base_dir)
    return program.with_source(lines=lines, warnings=[i for i in c.issues if i.severity == "warning"])


def validate(program: Program | dict[str, Any]) -> list[Issue]:
    """Every issue (errors and warnings) of a program or raw data; never raises."""
    data = program.to_dict() if isinstance(program, Program) else program
    lines = dict(program.source_lines) if isinstance(program, Program) else {}
    c = _Collector(lines)
    _validate(data, c, program.source_dir if isinstance(program, Program) else None)
    return c.issues


def _validate(data: Any, c: _Collector, base_dir: str | Path | None) -> Program | None:
    token = _suggest_budget.set([SUGGEST_BUDGET])
    try:
        return _validate_bounded(data, c, base_dir)
    finally:
        _suggest_budget.reset(token)


def _validate_bounded(data: Any, c: _Collector, base_dir: str | Path | None) -> Program | None:
    if not isinstance(data, dict):
        c.error("", f"a program is a mapping with the keys {', '.join(_TOP_KEYS)}; got {type(data).__name__}")
        return None
    if not _check_bounds(data, c):  # data from a dict or a stored row gets the limits a file gets
        return None
    for key in data:
        if key not in _TOP_KEYS:
            c.error(f"/{_esc(key)}", f"unknown key {key!r}", suggest(str(key), _TOP_KEYS))
    version = data.get("stepbridge")
    if version not in FORMAT_VERSIONS or isinstance(version, bool):
        if version is None:
            c.error("/stepbridge", "missing format version: add 'stepbridge: 1' (or 2) at the top")
        else:
            c.error("/stepbridge", f"unsupported format version {version!r}: this stepbridge reads versions 1 and 2")
    name = data.get("name")
    if name is None or name == "":
        c.error("/name", "missing program name")
    elif not isinstance(name, str):
        c.error("/name", f"the program name must be a string, got {type(name).__name__}")
    if "lm" in data and data["lm"] is not None:
        try:
            LMConfig.model_validate(data["lm"])
        except ValidationError as exc:
            c.pydantic("/lm", exc)

    space = _types_section(data, version, c)
    signature = _parse_signature(data.get("signature"), "/signature", c) if "signature" in data else None
    _check_types(signature, "/signature", version, space, c)
    if "signature" not in data:
        c.error("/signature", "missing program signature, e.g. 'question -> answer'")
    elif signature is not None:
        _check_field_names(signature, data["signature"], "/signature", c, program=True)

    # -- modules ---------------------------------------------------------------------------------
    modules: dict[str, Any] = {}
    signatures: dict[str, Signature | None] = {}
    raw_modules = data.get("modules") or {}
    if not isinstance(raw_modules, dict):
        c.error("/modules", "modules is a mapping of name -> module")
        raw_modules = {}
    for mname, raw in raw_modules.items():
        pointer = f"/modules/{_esc(mname)}"
        if not IDENTIFIER.match(str(mname)):
            c.error(pointer, f"invalid module name {mname!r} (letters, digits and _; not starting with a digit)")
        elif (problem := module_name_problem(str(mname))) is not None:
            c.error(pointer, problem)
        if (isinstance(raw, dict) and raw.get("type") == "dspy" and raw.get("state") is not None
                and not _check_dspy_state(raw, pointer, c)):
            continue
        if (isinstance(raw, dict) and isinstance(raw.get("signature"), str)
                and _parse_signature(raw["signature"], f"{pointer}/signature", c) is None):
            continue
        try:
            module = _module_adapter.validate_python(raw)
        except SignatureSyntaxError as exc:
            c.error(f"{pointer}/signature", f"invalid signature: {exc}")
            continue
        except ValidationError as exc:
            c.pydantic(pointer, exc)
            continue
        modules[mname] = module
        sig = _module_signature(module, c, pointer)
        _check_types(sig, f"{pointer}/signature", version, space, c)
        signatures[mname] = sig
        if sig is not None:
            declared = raw.get("signature") if isinstance(raw, dict) else None
            where = (f"{pointer}/signature" if declared is not None
                     else f"{pointer}/tool" if isinstance(module, ToolModule) else pointer)
            _check_field_names(sig, declared, where, c)
        if sig is not None and getattr(module, "demos", None):
            known = set(sig.inputs) | set(sig.outputs) | {"reasoning"}
            for i, demo in enumerate(module.demos):
                for key in demo:
                    if key not in known:
                        c.error(f"{pointer}/demos/{i}/{_esc(key)}", f"demo field {key!r} is not in the signature",
                                suggest(key, known))
        if isinstance(module, RetrieveModule):
            from .registry import retrievers

            kind = module.retriever.kind
            if kind != "bm25" and kind not in retrievers:
                c.error(f"{pointer}/retriever/kind", f"unknown retriever {kind!r}",
                        suggest(kind, ["bm25", *retrievers.names()]))
            if module.retriever.corpus and base_dir is not None:
                path = Path(base_dir) / module.retriever.corpus
                if not path.is_file():
                    c.error(f"{pointer}/retriever/corpus",
                            f"corpus file not found: {module.retriever.corpus} (relative to {base_dir})")

    for mname, module in modules.items():
        if module.type in MODULE_TYPES_V2:
            signatures[mname] = _check_module_links(mname, module, modules, raw_modules, version, c)

    # -- steps -----------------------------------------------------------------------------------
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        c.error("/steps", "a program needs a non-empty list of steps ending with a 'return' step")
        raw_steps = raw_steps if isinstance(raw_steps, list) else []
    report = check_steps(raw_steps, version=version if version in (1, 2) else 2, c=c, signature=signature,
                         modules=modules, signatures=signatures, module_names=list(raw_modules), suggest=suggest,
                         types=space)
    for mname in raw_modules:
        if mname in modules and mname not in report.called:
            c.warning(f"/modules/{_esc(mname)}", f"module {mname!r} is never called")

    if any(i.severity == "error" for i in c.issues):
        return None
    try:
        return Program.model_validate(data)
    except ValidationError as exc:  # shape problems the per-part checks did not catch
        c.pydantic("", exc)
        return None


def _check_field_names(sig: Signature, raw: Any, pointer: str, c: _Collector, program: bool = False) -> None:
    """Field names that would reach DSPy internals (see :mod:`stepbridge.names`), at the field when the
    signature is in long form (``program``: the program's own signature)."""
    for side, group in (("inputs", sig.inputs), ("outputs", sig.outputs)):
        for name in group:
            problem = field_name_problem(name, program_input=program and side == "inputs")
            if problem is not None:
                c.error(f"{pointer}/{side}/{_esc(name)}" if isinstance(raw, dict) else pointer, problem)


def _check_dspy_state(raw: dict[str, Any], pointer: str, c: _Collector) -> bool:
    """Check a ``dspy`` module's saved state against the allowlist (and the registered module's shape
    when it is registered here); False if it may not be loaded."""
    from .dspy_state import module_shape
    from .registry import dspy_modules

    shape = None
    name = raw.get("module")
    if isinstance(name, str) and name in dspy_modules:
        try:
            shape = module_shape(dspy_modules.instance(name))
        except Exception as exc:  # the operator's factory failed: say so, and check the allowlist alone
            c.error(f"{pointer}/module", f"cannot build the registered DSPy module {name!r}: {type(exc).__name__}: "
                    f"{str(exc)[:200]}")
    problems = state_problems(raw["state"], shape)
    for where, message in problems:
        c.error(f"{pointer}/state{where}", message)
    return not problems


def _check_module_links(name: str, module: Any, modules: dict[str, Any], raw_modules: dict[str, Any],
                        version: Any, c: _Collector) -> Signature | None:
    """Format-2 modules: tools, wrapped modules and rewards exist and fit; reserved names. Returns the
    module's interface (None when it cannot be known)."""
    pointer = f"/modules/{_esc(name)}"
    if version == 1:
        c.error(f"{pointer}/type", f"module type {module.type!r} needs 'stepbridge: 2' (docs/format-2.md)")
    if isinstance(module, ReactModule):
        _check_react(module, pointer, c)
    elif isinstance(module, MultiChainComparisonModule):
        sig = module.effective_signature
        for field_name in sig.inputs:
            if field_name == "completions" or re.fullmatch(r"reasoning_attempt_\d+", field_name):
                c.error(f"{pointer}/signature", f"input {field_name!r} is the module's own (completions and "
                        "reasoning_attempt_<i>): rename it")
        if "rationale" in sig.outputs:
            c.error(f"{pointer}/signature", "output 'rationale' is the module's own: rename it")
        if not sig.outputs:
            c.error(f"{pointer}/signature", "a multi_chain_comparison needs at least one output")
    elif isinstance(module, BestOfNModule | RefineModule):
        return _check_ensemble(name, module, modules, raw_modules, pointer, c)
    try:
        return module_interface(module, modules)
    except (SignatureSyntaxError, ValueError) as exc:
        c.error(pointer, f"invalid module: {exc}")
        return None


def _check_react(module: ReactModule, pointer: str, c: _Collector) -> None:
    from .react import FINISH, REACT_OUTPUTS, RESERVED_INPUTS, tool_spec
    from .registry import tools

    sig = module.effective_signature
    for field_name in sig.inputs:
        if field_name in RESERVED_INPUTS or field_name in REACT_OUTPUTS:
            c.error(f"{pointer}/signature", f"input {field_name!r} is reserved by react (reserved: "
                    f"{', '.join((*RESERVED_INPUTS, *REACT_OUTPUTS))}): rename it")
    for field_name in sig.outputs:
        if field_name in ("trajectory", "reasoning") or field_name in REACT_OUTPUTS:
            c.error(f"{pointer}/signature", f"output {field_name!r} is react's own (it returns trajectory and "
                    "reasoning): rename it")
    seen: set[str] = set()
    for i, tool_name in enumerate(module.tools):
        where = f"{pointer}/tools/{i}"
        if tool_name == FINISH:
            c.error(where, "'finish' is react's own tool (it ends the episode); register yours under another name")
            continue
        if tool_name in seen:
            c.error(where, f"tool {tool_name!r} is listed twice")
            continue
        seen.add(tool_name)
        if tool_name not in tools:
            c.error(where, f"unknown tool {tool_name!r}: tools are named callables from the tool registry "
                    "(stepbridge.tools.register or the 'stepbridge.tools' entry points), never import paths",
                    suggest(tool_name, tools.names()))
            continue
        try:
            tool_spec(tool_name, tools.get(tool_name).func)
        except Exception as exc:
            c.error(where, f"tool {tool_name!r} cannot be described to the agent: {exc}")


def _check_ensemble(name: str, module: BestOfNModule | RefineModule, modules: dict[str, Any],
                    raw_modules: dict[str, Any], pointer: str, c: _Collector) -> Signature | None:
    target = module.module
    wrapped = modules.get(target)
    if target == name:
        c.error(f"{pointer}/module", f"a {module.type} module cannot wrap itself")
        return None
    if target not in raw_modules:
        c.error(f"{pointer}/module", f"unknown module {target!r}",
                suggest(target, [m for m in raw_modules if m != name]))
        return None
    if wrapped is None:
        return None  # broken itself (already reported)
    if wrapped.type not in WRAPPABLE_TYPES:
        what = ("another ensemble (ensembles do not nest: wrap the inner module directly)"
                if wrapped.type in ("best_of_n", "refine") else f"a {wrapped.type!r} module")
        c.error(f"{pointer}/module", f"{target!r} is {what}; a {module.type} wraps one of: "
                f"{', '.join(WRAPPABLE_TYPES)}")
        return None
    interface = module_interface(wrapped, modules)
    reward = module.reward
    if reward.metric is not None:
        from .registry import metrics

        if reward.metric not in metrics:
            c.error(f"{pointer}/reward/metric", f"unknown metric {reward.metric!r}: metrics are registered by exact "
                    "name (entry point group 'stepbridge.metrics' or stepbridge.registry.metrics.register)",
                    suggest(reward.metric, metrics.names()))
    else:
        _check_judge(name, module, modules, raw_modules, interface, pointer, c)
    return interface


def _check_judge(name: str, module: BestOfNModule | RefineModule, modules: dict[str, Any],
                 raw_modules: dict[str, Any], interface: Signature | None, pointer: str, c: _Collector) -> None:
    judge_name = module.reward.module
    assert judge_name is not None and module.reward.field is not None
    where = f"{pointer}/reward/module"
    if judge_name == name:
        c.error(where, f"a {module.type} module cannot be its own reward")
        return
    if judge_name not in raw_modules:
        c.error(where, f"unknown module {judge_name!r}", suggest(judge_name, [m for m in raw_modules if m != name]))
        return
    judge = modules.get(judge_name)
    if judge is None:
        return
    if judge.type not in ("predict", "chain_of_thought"):
        c.error(where, f"the judge {judge_name!r} is a {judge.type!r} module; a reward module is a predict or "
                "chain_of_thought that scores the prediction")
        return
    judge_sig = module_interface(judge, modules)
    if judge_sig is None:
        return
    field_name = module.reward.field
    out = judge_sig.outputs.get(field_name)
    if out is None:
        c.error(f"{pointer}/reward/field", f"the judge {judge_name!r} has no output {field_name!r} (outputs: "
                f"{', '.join(judge_sig.outputs)})", suggest(field_name, list(judge_sig.outputs)))
    elif out.type_expr.kind not in ("int", "float", "bool"):
        c.error(f"{pointer}/reward/field", f"the judge's output {field_name!r} is {out.type_expr}; a reward is a "
                "number (int, float or bool)")
    if interface is not None:
        available = {**interface.inputs, **interface.outputs}
        for input_name, spec in judge_sig.inputs.items():
            if input_name not in available and spec.type_expr.kind != "optional":
                c.error(where, f"the judge's input {input_name!r} is neither an input nor an output of "
                        f"{module.module!r} (it is called with those, by name)")


def _check_bounds(value: Any, c: _Collector) -> bool:
    """The limits of a program file, for data from anywhere (a dict, a stored row): nesting depth, value
    count, integers Python can still print (no JSON, no hash otherwise), no NaN or infinity (no canonical
    JSON form). Iterative, and pointers are built only for what is reported (a parent chain, not a string
    per value): deep or wide data stays linear. False if the data is refused."""
    from .loader import MAX_DEPTH, MAX_INT_BITS, MAX_NODES

    def pointer(where: Any) -> str:
        parts = []
        while where is not None:
            where, key = where
            parts.append(key)
        return "".join(f"/{_esc(k)}" for k in reversed(parts))

    todo: list[tuple[Any, Any, int]] = [(value, None, 0)]
    nodes, ok = 0, True
    while todo:
        item, where, depth = todo.pop()
        nodes += 1
        if nodes > MAX_NODES:
            c.error("", f"more than {MAX_NODES} values in one program")
            return False
        if isinstance(item, float) and not math.isfinite(item):
            c.error(pointer(where), f"{item} is not allowed in a program (no NaN or infinity)")
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > MAX_INT_BITS:
            c.error(pointer(where), f"integer of {item.bit_length()} bits: a program's integers have at most 4,300 "
                    "digits")
            ok = False
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                c.error(pointer(where), f"nesting deeper than {MAX_DEPTH} levels")
                return False
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            todo.extend((v, (where, k), depth + 1) for k, v in pairs)
    return ok


def check_inputs(program: Program, inputs: Any) -> dict[str, Any]:
    """Check run inputs against the program signature; raise :class:`InputValidationError`."""
    if not isinstance(inputs, dict):
        shown = repr(inputs) if len(repr(inputs)) <= 60 else repr(inputs)[:57] + "..."
        raise InputValidationError(f"inputs must be a JSON object of field -> value, got {type(inputs).__name__} "
                                   f"{shown}")
    fields = program.signature.inputs
    for key in inputs:
        if key not in fields:
            hint = suggest(str(key), list(fields))
            raise InputValidationError(
                f"unknown input {key!r} for program {program.name!r} (inputs: {', '.join(fields)})"
                + (f"; did you mean {hint!r}?" if hint else ""), field=str(key))
    for name, texpr in program.input_types:
        if name not in inputs:
            if texpr.kind == "optional":
                continue
            raise InputValidationError(f"missing input {name!r} ({texpr}) for program {program.name!r}", field=name)
        if not texpr.accepts(inputs[name]):
            value = repr(inputs[name])
            value = value if len(value) <= 60 else value[:57] + "..."
            raise InputValidationError(f"input {name!r} must be {texpr}, got {value}", field=name)
    return inputs
