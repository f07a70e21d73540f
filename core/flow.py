"""Static checks of a program's steps: shape, names bound on every path, types, returns, bounds.

Validation (:mod:`stepbridge.validate`) hands the raw steps here. Two passes:

1. **shape** — each step on its own: its kind key, its keys, its values parsed
   (:mod:`stepbridge.values`), nesting at most :data:`MAX_NESTING` deep;
2. **flow** — a walk along every path: a reference needs its name bound on every path to it
   (after an ``if``/``switch``, only names bound by every branch; after a ``loop`` with ``over``,
   none of its body's, as it may make no pass), every path ends with a ``return`` giving every
   output, no step follows a return, worst-case steps and module calls are bounded, unreachable
   branches are warned about.

Types are per name over the whole program (one scope per run): a name's type is the *join* of
every value bound to it (:meth:`TypeExpr.join`: ``[]`` takes the element type of later bindings,
``int`` and ``float`` give ``float``, results of different modules keep their common fields); a
binding with no common type with the others is an error. The walk repeats until the types settle
(a few passes; each is linear in the size of the file), then runs once more reporting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .named_types import TypeSpace, UnknownTypeError
from .operations import OPERATIONS, OperationTypeError, json_equal, truthy
from .pointers import escape as _esc
from .program import MAX_LOOP, STEP_KINDS, CallStep, MapStep, ReturnStep
from .signature import IDENTIFIER, FieldSpec, Signature, TypeExpr
from .values import Op, Ref, ValueSyntaxError, is_constant, parse_value

__all__ = ["MAX_CALLS", "MAX_NESTING", "check_steps"]

#: module types whose inputs are written into a prompt (their own or a wrapped module's)
PROMPTED_TYPES = frozenset({"predict", "chain_of_thought", "react", "best_of_n", "refine", "multi_chain_comparison"})

MAX_NESTING = 64
MAX_CALLS = 1_000_000  # worst-case module calls, and steps run, of one run
MAX_TYPE_PASSES = 8

ANY = TypeExpr("any")
NEVER = TypeExpr("never")
STR = TypeExpr("str")
INT = TypeExpr("int")
BOOL = TypeExpr("bool")

_call_adapter: TypeAdapter[Any] = TypeAdapter(CallStep)
_map_adapter: TypeAdapter[Any] = TypeAdapter(MapStep)
_return_adapter: TypeAdapter[Any] = TypeAdapter(ReturnStep)
_BAD = object()  # a value that did not parse (already reported): typed Any

_KEYS = {
    "set": ("set",),
    "if": ("if", "then", "else"),
    "switch": ("switch", "cases", "default"),
    "loop": ("loop",),
    "parallel": ("parallel",),
}
_LOOP_KEYS = ("max", "steps", "until", "over", "item", "index")



# -- the parsed step tree -------------------------------------------------------------------------
@dataclass(slots=True)
class _Call:
    pointer: str
    key: str  # call | map
    module: str
    args: dict[str, Any]
    as_: str | None
    over: Any = None
    item: str | None = None


@dataclass(slots=True)
class _Return:
    pointer: str
    args: dict[str, Any]


@dataclass(slots=True)
class _Set:
    pointer: str
    values: dict[str, Any]


@dataclass(slots=True)
class _If:
    pointer: str
    cond: Any
    then: list[Any]
    else_: list[Any] | None


@dataclass(slots=True)
class _Switch:
    pointer: str
    value: Any
    cases: list[tuple[str, list[Any], list[Any]]]  # (pointer, literal values, steps)
    default: list[Any] | None


@dataclass(slots=True)
class _Loop:
    pointer: str
    max: int
    steps: list[Any]
    until: Any = None
    has_until: bool = False
    over: Any = None
    has_over: bool = False
    item: str | None = None
    index: str | None = None


@dataclass(slots=True)
class _Parallel:
    pointer: str
    calls: list[_Call]


@dataclass(slots=True)
class _Broken:
    """A step whose shape was wrong (reported); its ``as`` name still counts as bound."""

    pointer: str
    as_: str | None
    is_return: bool


class _Scope:
    """Names bound on every path so far: this level's additions over the enclosing level's."""

    __slots__ = ("names", "parent")

    def __init__(self, parent: _Scope | None = None):
        self.parent = parent
        self.names: set[str] = set()

    def __contains__(self, name: str) -> bool:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.names:
                return True
            scope = scope.parent
        return False

    def all(self) -> set[str]:
        out: set[str] = set()
        scope: _Scope | None = self
        while scope is not None:
            out |= scope.names
            scope = scope.parent
        return out


@dataclass
class StepsReport:
    """What the checks learned that validation reports on (e.g. modules never called)."""

    called: set[str] = field(default_factory=set)


# -- entry point ----------------------------------------------------------------------------------
def check_steps(raw_steps: list[Any], *, version: int, c: Any, signature: Signature | None,
                modules: dict[str, Any], signatures: dict[str, Signature | None], module_names: list[str],
                suggest: Callable[[str, Any], str | None], types: TypeSpace | None = None) -> StepsReport:
    """Check the program's steps, reporting every problem to ``c`` (validation's collector).

    ``types``: the program's declared types; signature fields naming them are resolved against it."""
    checker = _Checker(version, c, signature, modules, signatures, module_names, suggest)
    checker.space = types or TypeSpace()
    tree = checker.shape_list(raw_steps, "/steps", 0)
    checker.flow(tree)
    return StepsReport(called=checker.called)


class _Muted:
    def error(self, *args: Any, **kw: Any) -> None:
        pass

    def warning(self, *args: Any, **kw: Any) -> None:
        pass


class _Checker:
    def __init__(self, version: int, c: Any, signature: Signature | None, modules: dict[str, Any],
                 signatures: dict[str, Signature | None], module_names: list[str],
                 suggest: Callable[[str, Any], str | None]):
        self.version = version
        self.c = c
        self.report = c
        self.signature = signature
        self.modules = modules
        self.signatures = signatures
        self.module_names = module_names
        self.suggest = suggest
        self.called: set[str] = set()
        #: every name bound anywhere (as, set), with the pointer of its first binding
        self.bound_at: dict[str, str] = {}
        self.top_index: dict[str, int] = {}  # format 1: name -> the top-level step producing it
        self.types: dict[str, TypeExpr] = {}
        self.space = TypeSpace()  # the program's declared types
        self.changed = False
        self.used: set[str] = set()
        self.locals: list[dict[str, TypeExpr]] = []  # map/loop items and loop indexes, innermost last
        self.returns = 0
        self.loop_too_long = False

    # ============================================================================================
    # 1. shape
    # ============================================================================================
    def parse(self, raw: Any, pointer: str) -> Any:
        try:
            return parse_value(raw, version=self.version, pointer=pointer)
        except ValueSyntaxError as exc:
            self.c.error(exc.pointer or pointer, str(exc), exc.suggestion)
            return _BAD

    def parse_args(self, raw: dict[str, Any], pointer: str) -> dict[str, Any]:
        return {k: self.parse(v, f"{pointer}/{_esc(k)}") for k, v in raw.items()}

    def shape_list(self, raw: Any, pointer: str, depth: int) -> list[Any]:
        if not isinstance(raw, list):
            self.c.error(pointer, f"expected a list of steps, got {type(raw).__name__}")
            return []
        out = []
        for i, item in enumerate(raw):
            node = self.shape_step(item, f"{pointer}/{i}", depth)
            if node is not None:
                out.append(node)
        return out

    def shape_step(self, raw: Any, pointer: str, depth: int) -> Any:
        c = self.c
        kinds_here = STEP_KINDS[self.version]
        all_kinds = STEP_KINDS[2]
        if not isinstance(raw, dict):
            c.error(pointer, f"a step is a mapping with one of the keys {', '.join(repr(k) for k in kinds_here)}; "
                    f"got {type(raw).__name__}")
            return None
        present = [k for k in all_kinds if k in raw]
        if len(present) > 1:
            listed = " or ".join(f"'{k}'" for k in kinds_here) if self.version == 1 else \
                ", ".join(f"'{k}'" for k in present)
            c.error(pointer, f"a step has exactly one of {listed}")
            return self._broken(raw, pointer)
        if not present:
            keys = [str(k) for k in raw]
            hint = next((s for k in keys if (s := self.suggest(k, list(kinds_here)))), None)
            listed = ", ".join(f"'{k}'" for k in kinds_here[:-1]) + f" or '{kinds_here[-1]}'"
            c.error(pointer, f"unknown step type: a step needs one of the keys {listed}", hint)
            return None
        kind = present[0]
        if kind not in kinds_here:
            c.error(f"{pointer}/{kind}", f"'{kind}' steps need 'stepbridge: 2' (this file says stepbridge: 1)")
            return self._broken(raw, pointer)
        if kind in ("call", "map", "return"):
            return self.shape_simple(kind, raw, pointer)
        if depth + 1 > MAX_NESTING:
            c.error(pointer, f"steps nested deeper than {MAX_NESTING} levels")
            return None
        for key in raw:
            if key not in _KEYS[kind]:
                c.error(f"{pointer}/{_esc(key)}", f"unknown key {key!r} in a '{kind}' step (keys: "
                        f"{', '.join(_KEYS[kind])})", self.suggest(str(key), list(_KEYS[kind])))
        if kind == "set":
            return self.shape_set(raw, pointer)
        if kind == "if":
            cond = self.parse(raw["if"], f"{pointer}/if")
            if "then" not in raw:
                c.error(pointer, "an 'if' step needs 'then': the steps to run when the condition is true")
            then = self.shape_body(raw.get("then", []), f"{pointer}/then", depth, required="then" in raw)
            else_ = self.shape_body(raw["else"], f"{pointer}/else", depth) if "else" in raw else None
            return _If(pointer, cond, then, else_)
        if kind == "switch":
            return self.shape_switch(raw, pointer, depth)
        if kind == "loop":
            return self.shape_loop(raw["loop"], f"{pointer}/loop", pointer, depth)
        return self.shape_parallel(raw["parallel"], pointer)

    def _broken(self, raw: dict[str, Any], pointer: str) -> _Broken:
        as_ = raw.get("as")
        return _Broken(pointer, as_ if isinstance(as_, str) and IDENTIFIER.match(as_) else None, "return" in raw)

    def shape_body(self, raw: Any, pointer: str, depth: int, *, required: bool = True) -> list[Any]:
        if raw is None or (isinstance(raw, list) and not raw):
            if required:
                self.c.error(pointer, "an empty list of steps (leave the key out instead)")
            return []
        return self.shape_list(raw, pointer, depth + 1)

    def shape_simple(self, kind: str, raw: dict[str, Any], pointer: str) -> Any:
        adapter = {"call": _call_adapter, "map": _map_adapter, "return": _return_adapter}[kind]
        try:
            step = adapter.validate_python(raw)
        except ValidationError as exc:
            self.c.pydantic(pointer, exc)
            return self._broken(raw, pointer)
        if isinstance(step, ReturnStep):
            return _Return(pointer, self.parse_args(step.return_, f"{pointer}/return"))
        if isinstance(step, CallStep):
            return _Call(pointer, "call", step.call, self.parse_args(step.with_, f"{pointer}/with"), step.as_)
        over = step.over
        if self.version == 1 and not isinstance(over, str):
            self.c.error(f"{pointer}/over", "'over' must be a reference to a list, e.g. $found.passages")
            parsed_over: Any = _BAD
        else:
            parsed_over = self.parse(over, f"{pointer}/over")
            if self.version == 1 and parsed_over is not _BAD and not isinstance(parsed_over, Ref):
                self.c.error(f"{pointer}/over", "'over' must be a reference to a list, e.g. $found.passages")
                parsed_over = _BAD
        return _Call(pointer, "map", step.map, self.parse_args(step.with_, f"{pointer}/with"), step.as_,
                     parsed_over, step.item)

    def shape_set(self, raw: dict[str, Any], pointer: str) -> _Set | None:
        values = raw["set"]
        if not isinstance(values, dict) or not values:
            self.c.error(f"{pointer}/set", "'set' takes a mapping of name -> value, e.g. set: {context: []}")
            return None
        parsed = {}
        for name, value in values.items():
            where = f"{pointer}/set/{_esc(name)}"
            if not isinstance(name, str) or not IDENTIFIER.match(name):
                self.c.error(where, f"invalid variable name {name!r} (letters, digits and _; not starting with a "
                             "digit)")
                continue
            if name == "inputs":
                self.c.error(where, "'inputs' is the program inputs and cannot be rebound")
                continue
            parsed[name] = self.parse(value, where)
        return _Set(pointer, parsed)

    def shape_switch(self, raw: dict[str, Any], pointer: str, depth: int) -> _Switch:
        c = self.c
        value = self.parse(raw["switch"], f"{pointer}/switch")
        cases_raw = raw.get("cases")
        cases: list[tuple[str, list[Any], list[Any]]] = []
        if not isinstance(cases_raw, list) or not cases_raw:
            c.error(f"{pointer}/cases" if "cases" in raw else pointer,
                    "a 'switch' needs 'cases': a list of {when: <literal or list of literals>, steps: [...]}")
            cases_raw = []
        for i, case in enumerate(cases_raw):
            where = f"{pointer}/cases/{i}"
            if not isinstance(case, dict):
                c.error(where, "a case is a mapping {when: <literal or list of literals>, steps: [...]}")
                continue
            for key in case:
                if key not in ("when", "steps"):
                    c.error(f"{where}/{_esc(key)}", f"unknown key {key!r} in a case (keys: when, steps)",
                            self.suggest(str(key), ["when", "steps"]))
            if "when" not in case:
                c.error(where, "a case needs 'when': the literal (or list of literals) it matches")
                whens: list[Any] = []
            else:
                raw_when = case["when"]
                whens = raw_when if isinstance(raw_when, list) else [raw_when]
                parsed = self.parse(raw_when, f"{where}/when")
                if parsed is not _BAD and not is_constant(parsed):
                    c.error(f"{where}/when", "'when' takes literals only (no references or operations): the value "
                            "goes in 'switch'")
                    whens = []
                elif parsed is not _BAD:
                    whens = parsed if isinstance(parsed, list) else [parsed]
                else:
                    whens = []
            if "steps" not in case:
                c.error(where, "a case needs 'steps': the steps to run when it matches")
            steps = self.shape_body(case.get("steps"), f"{where}/steps", depth, required="steps" in case)
            cases.append((where, whens, steps))
        default = self.shape_body(raw["default"], f"{pointer}/default", depth) if "default" in raw else None
        return _Switch(pointer, value, cases, default)

    def shape_loop(self, raw: Any, pointer: str, step_pointer: str, depth: int) -> _Loop | None:
        c = self.c
        if not isinstance(raw, dict):
            c.error(pointer, "'loop' takes a mapping {max, steps, until, over, item, index}")
            return None
        for key in raw:
            if key not in _LOOP_KEYS:
                c.error(f"{pointer}/{_esc(key)}", f"unknown key {key!r} in a loop (keys: {', '.join(_LOOP_KEYS)})",
                        self.suggest(str(key), list(_LOOP_KEYS)))
        bound = raw.get("max")
        if "max" not in raw:
            c.error(pointer, f"a loop needs 'max': the most passes it makes (1 to {MAX_LOOP:,})")
            bound = 1
        elif isinstance(bound, bool) or not isinstance(bound, int):
            c.error(f"{pointer}/max", f"'max' must be a whole number from 1 to {MAX_LOOP:,}, got {bound!r:.40}")
            bound = 1
        elif not 1 <= bound <= MAX_LOOP:
            c.error(f"{pointer}/max", f"'max' is {bound:,}; a loop makes 1 to {MAX_LOOP:,} passes")
            bound = 1
        names = []
        for key in ("item", "index"):
            name = raw.get(key)
            if name is None:
                continue
            if not isinstance(name, str) or not IDENTIFIER.match(name) or name == "inputs":
                c.error(f"{pointer}/{key}", f"invalid {key} name {name!r}")
            else:
                names.append(name)
        if "item" in raw and "over" not in raw:
            c.error(f"{pointer}/item", "'item' names the element of 'over'; this loop has no 'over'")
        if len(names) == 2 and names[0] == names[1]:
            c.error(f"{pointer}/index", "'item' and 'index' need different names")
        if "steps" not in raw:
            c.error(pointer, "a loop needs 'steps': the steps of each pass")
        steps = self.shape_body(raw.get("steps"), f"{pointer}/steps", depth, required="steps" in raw)
        loop = _Loop(step_pointer, bound, steps)
        if "until" in raw:
            loop.until, loop.has_until = self.parse(raw["until"], f"{pointer}/until"), True
        if "over" in raw:
            loop.over, loop.has_over = self.parse(raw["over"], f"{pointer}/over"), True
            loop.item = raw.get("item", "item") if isinstance(raw.get("item", "item"), str) else None
        index = raw.get("index")
        loop.index = index if isinstance(index, str) else None
        return loop

    def shape_parallel(self, raw: Any, pointer: str) -> _Parallel | None:
        c = self.c
        where = f"{pointer}/parallel"
        if not isinstance(raw, list) or not raw:
            c.error(where, "'parallel' takes a non-empty list of call steps")
            return None
        calls = []
        names: dict[str, int] = {}
        for i, item in enumerate(raw):
            at = f"{where}/{i}"
            if not isinstance(item, dict) or "call" not in item:
                other = next((k for k in STEP_KINDS[2] if isinstance(item, dict) and k in item), None)
                c.error(at, "a 'parallel' step holds only 'call' steps" + (f", not '{other}'" if other else ""))
                continue
            node = self.shape_simple("call", item, at)
            if isinstance(node, _Call):
                if node.as_ is not None:
                    if node.as_ in names:
                        c.error(f"{at}/as", f"duplicate result name {node.as_!r} in one parallel step (also call "
                                f"{names[node.as_]})")
                    names[node.as_] = i
                calls.append(node)
        return _Parallel(pointer, calls)

    # ============================================================================================
    # 2. flow
    # ============================================================================================
    def flow(self, tree: list[Any]) -> None:
        self._collect_names(tree)
        if self.version == 1:  # straight line, no rebinding: one walk sees every type before its use
            self._walk_top(tree, final=True)
            return
        # settle the types silently, then walk once more reporting
        self.c = _Muted()
        for _ in range(MAX_TYPE_PASSES):
            before = dict(self.types)
            self.changed = False
            self._walk_top(tree)
            if not self.changed:
                break
        self.c = self.report
        if self.changed:  # a value contains itself: its type (and its nesting) grows with every pass
            for name, t in self.types.items():
                if before.get(name) != t:
                    self.c.error(self.bound_at.get(name, "/steps"), f"the type of {name!r} does not settle (now {t}): "
                                 "a value that contains itself nests deeper on every pass")
        self.used.clear()
        self.called.clear()
        self._walk_top(tree, final=True)

    def _collect_names(self, tree: list[Any]) -> None:
        for node in tree:
            name = getattr(node, "as_", None)
            if name is not None and name not in self.top_index:
                self.top_index[name] = int(node.pointer.rsplit("/", 1)[1])
        todo = list(reversed(tree))  # document order
        while todo:
            node = todo.pop()
            if isinstance(node, _Call | _Broken) and node.as_ is not None:
                self.bound_at.setdefault(node.as_, f"{node.pointer}/as")
            elif isinstance(node, _Set):
                for name in node.values:
                    self.bound_at.setdefault(name, f"{node.pointer}/set/{_esc(name)}")
            todo.extend(reversed(_children(node)))

    def _walk_top(self, tree: list[Any], *, final: bool = False) -> None:
        self.returns = 0
        self.locals = []
        self.loop_too_long = False
        scope = _Scope()
        scope.names.add("inputs")
        self.types["inputs"] = (TypeExpr("record", tuple((k, self.field_type(f))
                                                         for k, f in self.signature.inputs.items()))
                                if self.signature is not None else ANY)
        outcome, calls, steps = self.walk_list(tree, scope, "/steps", top=True)
        if not final:
            return
        c = self.c
        if self.version == 1:
            self._v1_returns(tree)
        elif self.returns == 0:
            c.error("/steps", "missing 'return' step: end the steps with return: {<output>: $<name>.<field>}")
        elif outcome is not None and tree:
            c.error(tree[-1].pointer, "a path through the program ends here without a 'return': every branch "
                    "must end with one (or a 'return' must follow)")
        if max(calls, steps) > MAX_CALLS and not self.loop_too_long:
            c.error("/steps", f"in the worst case this program runs {steps:,} steps and {calls:,} module calls "
                    f"(at most {MAX_CALLS:,}): lower the loops' 'max'")
        for name, pointer in self.bound_at.items():
            if name not in self.used:
                what = "result" if pointer.endswith("/as") else "variable"
                c.warning(pointer, f"{what} {name!r} is never used")

    def _v1_returns(self, tree: list[Any]) -> None:
        returns = [n for n in tree if isinstance(n, _Return) or (isinstance(n, _Broken) and n.is_return)]
        if tree and not returns:
            self.c.error("/steps", "missing 'return' step: end the steps with return: {<output>: $<name>.<field>}")
        for node in returns[1:]:
            self.c.error(node.pointer, "a program has exactly one 'return' step")
        if returns and returns[0] is not tree[-1]:
            self.c.error(returns[0].pointer, "the 'return' step must be the last step")

    def walk_list(self, nodes: list[Any], scope: _Scope, pointer: str, *, top: bool = False
                  ) -> tuple[_Scope | None, int, int]:
        """Walk a list of steps; returns the scope after it (None: every path returned), and the
        worst-case module calls and steps run."""
        calls = steps = 0
        current: _Scope | None = scope
        for node in nodes:
            if current is None:
                if self.version != 1:
                    self.c.error(node.pointer, "this step never runs: every path before it ends with a 'return'")
                break
            current, n_calls, n_steps = self.walk_step(node, current)
            calls += n_calls
            steps += n_steps
        return current, calls, steps

    def walk_step(self, node: Any, scope: _Scope) -> tuple[_Scope | None, int, int]:
        if isinstance(node, _Call):
            self.check_call(node, scope)
            if node.as_ is not None:
                self.bind(node.as_, self.result_type(node), f"{node.pointer}/as", scope)
            return scope, 1, 1
        if isinstance(node, _Return):
            self.returns += 1
            self.check_args(node.args, f"{node.pointer}/return",
                            self.signature.outputs if self.signature else None, scope, kind="return")
            return (scope if self.version == 1 else None), 0, 1
        if isinstance(node, _Set):
            types = {name: self.type_of(value, f"{node.pointer}/set/{_esc(name)}", scope)
                     for name, value in node.values.items()}
            for name, t in types.items():
                self.bind(name, t, f"{node.pointer}/set/{_esc(name)}", scope)
            return scope, 0, 1
        if isinstance(node, _If):
            return self.walk_if(node, scope)
        if isinstance(node, _Switch):
            return self.walk_switch(node, scope)
        if isinstance(node, _Loop):
            return self.walk_loop(node, scope)
        if isinstance(node, _Parallel):
            for call in node.calls:
                self.check_call(call, scope)
            for call in node.calls:
                if call.as_ is not None:
                    self.bind(call.as_, self.result_type(call), f"{call.pointer}/as", scope)
            return scope, len(node.calls), len(node.calls) + 1
        if isinstance(node, _Broken):
            if node.as_ is not None and node.as_ != "inputs":
                scope.names.add(node.as_)
                self.types.setdefault(node.as_, ANY)
            if node.is_return:
                self.returns += 1
                return (scope if self.version == 1 else None), 0, 1
            return scope, 1, 1
        raise AssertionError(node)

    def _branches(self, scope: _Scope, branches: list[tuple[str, list[Any]]], implicit_empty: bool
                  ) -> tuple[_Scope | None, int, int]:
        """Walk alternative branches; names bound after = those bound on every branch that goes on."""
        survivors: list[set[str]] = [set()] if implicit_empty else []
        calls = steps = 0
        for pointer, nodes in branches:
            child = _Scope(scope)
            after, n_calls, n_steps = self.walk_list(nodes, child, pointer)
            calls, steps = max(calls, n_calls), max(steps, n_steps)
            if after is not None:
                survivors.append(child.names)
        if not survivors:
            return None, calls, steps + 1
        common = set.intersection(*survivors)
        scope.names |= common
        return scope, calls, steps + 1

    def walk_if(self, node: _If, scope: _Scope) -> tuple[_Scope | None, int, int]:
        self.type_of(node.cond, f"{node.pointer}/if", scope)
        if node.cond is not _BAD and is_constant(node.cond):
            taken = "then" if truthy(node.cond) else "else"
            if taken == "then" and node.else_ is not None:
                self.c.warning(f"{node.pointer}/else", "unreachable: the condition is a literal that is always true")
            elif taken == "else":
                self.c.warning(f"{node.pointer}/then", "unreachable: the condition is a literal that is always false")
        branches = [(f"{node.pointer}/then", node.then)]
        if node.else_ is not None:
            branches.append((f"{node.pointer}/else", node.else_))
        return self._branches(scope, branches, implicit_empty=node.else_ is None)

    def walk_switch(self, node: _Switch, scope: _Scope) -> tuple[_Scope | None, int, int]:
        c = self.c
        value_type = self.type_of(node.value, f"{node.pointer}/switch", scope)
        seen: list[tuple[Any, int]] = []
        for i, (pointer, whens, _) in enumerate(node.cases):
            for j, literal in enumerate(whens):
                where = f"{pointer}/when" + (f"/{j}" if len(whens) > 1 else "")
                earlier = next((k for v, k in seen if json_equal(v, literal)), None)
                if earlier is not None:
                    c.warning(where, f"unreachable: {literal!r} is already matched by case {earlier}")
                elif not _may_equal(value_type, literal):
                    c.warning(where, f"unreachable: the value is {value_type}, never {literal!r}")
                seen.append((literal, i))
        values = _finite_values(value_type)
        exhaustive = values is not None and all(any(json_equal(v, lit) for lit, _ in seen) for v in values)
        if node.default is not None and exhaustive:
            c.warning(f"{node.pointer}/default", f"unreachable: the cases cover every value of {value_type}")
        branches = [(f"{pointer}/steps", steps) for pointer, _, steps in node.cases]
        if node.default is not None:
            branches.append((f"{node.pointer}/default", node.default))
        # cases covering every value of a Literal (or bool) leave no path around the switch
        return self._branches(scope, branches, implicit_empty=node.default is None and not exhaustive)

    def walk_loop(self, node: _Loop, scope: _Scope) -> tuple[_Scope | None, int, int]:
        c = self.c
        body_scope = _Scope(scope)
        local: dict[str, TypeExpr] = {}
        if node.has_over:
            over_type = self.type_of(node.over, f"{node.pointer}/loop/over", scope)
            element = over_type.element()
            if element is None:
                c.error(f"{node.pointer}/loop/over", f"'over' must be a list, got {over_type}")
                element = ANY
            if node.item is not None:
                local[node.item] = element
        if node.index is not None:
            local[node.index] = INT
        for name in local:
            if name in scope or any(name in frame for frame in self.locals):
                c.error(f"{node.pointer}/loop/{'index' if name == node.index else 'item'}",
                        f"{name!r} is already bound here; a loop's item and index need names of their own")
            elif name in self.bound_at:
                c.error(f"{node.pointer}/loop/{'index' if name == node.index else 'item'}",
                        f"{name!r} is also bound at {self.bound_at[name]}; a loop's item and index need names of "
                        "their own")
        self.locals.append(local)
        body_scope.names |= set(local)
        after, calls, steps = self.walk_list(node.steps, body_scope, f"{node.pointer}/loop/steps")
        if node.has_until:
            if after is None:
                c.warning(f"{node.pointer}/loop/until", "unreachable: every pass ends with a 'return'")
            else:
                self.type_of(node.until, f"{node.pointer}/loop/until", after)
                if node.until is not _BAD and is_constant(node.until) and truthy(node.until) and node.max > 1:
                    c.warning(f"{node.pointer}/loop/until", "the condition is a literal that is always true: the "
                              "loop makes one pass")
        self.locals.pop()
        calls, steps = calls * node.max, steps * node.max + 1
        if max(calls, steps) > MAX_CALLS and max(calls, steps) // node.max <= MAX_CALLS:
            self.loop_too_long = True
            c.error(f"{node.pointer}/loop/max", f"this loop runs {steps:,} steps and {calls:,} module calls in the "
                    f"worst case (at most {MAX_CALLS:,}): lower 'max' (here or in enclosing loops)")
        if after is None:
            # every pass returns: without 'over' the first pass ends the run; with it, there may be no pass
            return (scope if node.has_over else None), calls, steps
        if not node.has_over:
            scope.names |= body_scope.names - set(local)
        return scope, calls, steps

    # -- calls, arguments, references -----------------------------------------------------------
    def check_call(self, node: _Call, scope: _Scope) -> None:
        c = self.c
        self.called.add(node.module)
        sig = self.signatures.get(node.module)
        if node.module not in self.module_names:
            c.error(f"{node.pointer}/{node.key}", f"unknown module {node.module!r}",
                    self.suggest(node.module, self.module_names))
        local: dict[str, TypeExpr] = {}
        if node.key == "map":
            item = node.item or "item"
            if not IDENTIFIER.match(item) or item == "inputs":
                c.error(f"{node.pointer}/item", f"invalid item name {item!r}")
            over_type = ANY
            if node.over is not _BAD:
                over_type = self.type_of(node.over, f"{node.pointer}/over", scope)
                if over_type.element() is None:
                    c.error(f"{node.pointer}/over", f"{_show(node.over)} is {over_type}, not a list")
            if item in scope and item != "inputs":
                c.error(f"{node.pointer}/item", f"item name {item!r} shadows an earlier result")
            local[item] = over_type.element() or STR
        self.locals.append(local)
        try:
            module = self.modules.get(node.module)
            self.check_args(node.args, f"{node.pointer}/with", sig.inputs if sig else None, scope, kind="with",
                            prompted=getattr(module, "type", None) in PROMPTED_TYPES)
        finally:
            self.locals.pop()

    def result_type(self, node: _Call) -> TypeExpr:
        sig = self.signatures.get(node.module)
        if sig is None:
            return ANY
        fields = [(k, self.field_type(f)) for k, f in sig.outputs.items()]  # the module's interface
        record = TypeExpr("record", tuple(fields))
        return TypeExpr("list", (record,)) if node.key == "map" else record

    def field_type(self, spec: FieldSpec) -> TypeExpr:
        """A signature field's type with declared names resolved (unknown ones, reported by validation: Any)."""
        try:
            return self.space.resolve(spec.type_expr)
        except (UnknownTypeError, TypeError):
            return ANY

    def bind(self, name: str, t: TypeExpr, pointer: str, scope: _Scope) -> None:
        c = self.c
        if name == "inputs":
            c.error(pointer, "'inputs' is reserved for the program inputs")
            return
        if not IDENTIFIER.match(name):
            c.error(pointer, f"invalid result name {name!r}")
            return
        if any(name in frame for frame in self.locals):
            c.error(pointer, f"{name!r} is a loop's item or index here and cannot be rebound")
            return
        if self.version == 1:
            if name in scope:
                c.error(pointer, f"duplicate result name {name!r} (first produced by step {self.top_index.get(name)})")
                return
            self.types[name] = t
        else:
            old = self.types.get(name)
            if old is None:
                self.types[name] = t
                self.changed = True
            else:
                joined = old.join(t)
                if joined is None:
                    c.error(pointer, f"{name!r} is {old} (bound at {self.bound_at.get(name, '?')}); a name keeps one "
                            f"type, and this gives it {t}")
                elif joined != old:
                    self.types[name] = joined
                    self.changed = True
        scope.names.add(name)

    def check_args(self, args: dict[str, Any], pointer: str, targets: dict[str, FieldSpec] | None, scope: _Scope,
                   *, kind: str, prompted: bool = False) -> None:
        """``prompted``: the module writes its inputs into a prompt, where a ``str`` field takes any value
        and shows it as DSPy does (a list of passages numbered, an object as JSON), what DSPy programs
        routinely pass (``context: str`` given the retrieved passages): a mismatch there is a warning."""
        c = self.c
        for key, parsed in args.items():
            arg_pointer = f"{pointer}/{_esc(key)}"
            target = targets.get(key) if targets is not None else None
            if targets is not None and target is None:
                what = "a program output" if kind == "return" else "an input of this module"
                c.error(arg_pointer, f"{key!r} is not {what} (expected: {', '.join(targets) or 'none'})",
                        self.suggest(key, list(targets)))
            if parsed is _BAD:
                continue
            vtype = self.type_of(parsed, arg_pointer, scope)
            if target is None:
                continue
            want = self.field_type(target)
            # into a prompt's str field any value goes, shown as DSPy shows it: reported, not refused
            lenient = prompted and want.kind == "str"
            report = c.warning if lenient else c.error
            shown = (" (the prompt shows it as DSPy does: a list numbered, an object as JSON; declare the field's "
                     "type to say so)") if lenient else ""
            if isinstance(parsed, Ref):
                if not vtype.assignable_to(want):
                    report(arg_pointer, f"type mismatch: {parsed} is {vtype} but {key!r} expects {want}{shown}")
            elif is_constant(parsed):
                if not want.accepts(parsed):
                    report(arg_pointer, f"type mismatch: literal {_show(parsed)} is not a {want}{shown}")
            elif self.version == 2 and not vtype.assignable_to(want):
                report(arg_pointer, f"type mismatch: the value is {vtype} but {key!r} expects {want}{shown}")
        if targets is not None:
            for name, spec in targets.items():
                if name not in args and spec.type_expr.kind != "optional":
                    what = "program output" if kind == "return" else "required input"
                    c.error(pointer, f"missing {what} {name!r}")

    def type_of(self, parsed: Any, pointer: str, scope: _Scope) -> TypeExpr:
        """The static type of a parsed value (Any where unknown); reports bad references/operations."""
        if parsed is _BAD:
            return ANY
        if isinstance(parsed, Ref):
            return self.ref_type(parsed, pointer, scope)
        if isinstance(parsed, Op):
            return self.op_type(parsed, scope)
        if isinstance(parsed, list):
            element = NEVER
            for i, v in enumerate(parsed):
                joined = element.join(self.type_of(v, f"{pointer}/{i}", scope))
                element = joined if joined is not None else ANY
            return TypeExpr("list", (element,))
        if isinstance(parsed, dict):
            return TypeExpr("record", tuple((k, self.type_of(v, f"{pointer}/{_esc(k)}", scope))
                                            for k, v in parsed.items()))
        return _literal_type(parsed)

    def op_type(self, op: Op, scope: _Scope) -> TypeExpr:
        spec = OPERATIONS[op.name]
        base = f"{op.pointer}/{_esc('$' + op.name)}"
        if spec.arity is None:
            types = [self.type_of(op.args, base, scope)]
            args = [op.args]
        else:
            types = [self.type_of(v, f"{base}/{i}", scope) for i, v in enumerate(op.args)]
            args = list(op.args)
        try:
            return spec.result(types, args)
        except OperationTypeError as exc:
            self.c.error(op.pointer, f"${op.name}: {exc}")
            return ANY

    def ref_type(self, ref: Ref, pointer: str, scope: _Scope) -> TypeExpr:
        c = self.c
        name = ref.source
        local = next((frame[name] for frame in reversed(self.locals) if name in frame), None)
        if local is None and name not in scope:
            if name in self.bound_at:
                if self.version == 1:
                    c.error(pointer, f"{ref} is used before step {self.top_index.get(name)} produces it")
                else:
                    c.error(pointer, f"{ref} is not bound on every path to here (bound at {self.bound_at[name]})")
            else:
                known = sorted(scope.all() | {n for frame in self.locals for n in frame})
                hint = self.suggest(name, known)
                c.error(pointer, f"unknown reference {ref}", f"${hint}" if hint else None)
            return ANY
        self.used.add(name)
        t = local if local is not None else (self.types.get(name) or ANY)
        if self.version == 1 and local is None and not ref.path and t.kind == "record":
            fields = ", ".join(n for n, _ in t.args)
            c.error(pointer, f"{ref} needs a field: ${name}.<field> (one of: {fields or 'none'})")
            return ANY
        for i, segment in enumerate(ref.path):
            inner = t.field(segment)
            if inner is None:
                self._no_field(ref, i, t, pointer, local is not None and i == 0)
                return ANY
            t = inner
        return t

    def _no_field(self, ref: Ref, i: int, t: TypeExpr, pointer: str, is_item: bool) -> None:
        segment = ref.path[i]
        head = "$" + ".".join((ref.source, *ref.path[:i]))
        record = t.args[0] if t.kind == "list" and t.args and t.args[0].kind == "record" else t
        if record.kind == "record":
            fields = [n for n, _ in record.args]
            hint = self.suggest(segment, fields)
            if i == 0:
                what = "program inputs have" if ref.source == "inputs" else f"{ref.source!r} has"
            else:
                what = f"{head} has"
            self.c.error(pointer, f"unknown field {segment!r}: {what} {', '.join(fields) or 'no fields'}",
                         f"{head}.{hint}" if hint else None)
        elif is_item and self.version == 1:
            self.c.error(pointer, f"{ref}: the item is {t}, it has no field {segment!r}")
        else:
            self.c.error(pointer, f"{ref}: {head} is {t}, it has no field {segment!r}")


def _children(node: Any) -> list[Any]:
    if isinstance(node, _If):
        return [*node.then, *(node.else_ or [])]
    if isinstance(node, _Switch):
        return [n for _, _, steps in node.cases for n in steps] + list(node.default or [])
    if isinstance(node, _Loop):
        return list(node.steps)
    if isinstance(node, _Parallel):
        return list(node.calls)
    return []


def _literal_type(value: Any) -> TypeExpr:
    if value is None:
        return TypeExpr("literal", (None,))
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return TypeExpr("float")
    if isinstance(value, str):
        return STR
    return ANY


def _finite_values(t: TypeExpr) -> list[Any] | None:
    """Every value a type allows, when there are finitely many (Literal, bool, Optional of those)."""
    if t.kind == "literal":
        return list(t.args)
    if t.kind == "bool":
        return [True, False]
    if t.kind == "optional":
        inner = _finite_values(t.args[0])
        return None if inner is None else [*inner, None]
    return None


def _may_equal(t: TypeExpr, literal: Any) -> bool:
    """Whether a value of type ``t`` can equal ``literal`` (JSON equality)."""
    k = t.kind
    if k == "literal":
        return any(json_equal(v, literal) for v in t.args)
    if k == "optional":
        return literal is None or _may_equal(t.args[0], literal)
    if k in ("str", "int", "float", "bool", "list", "dict", "record"):
        if k == "float" and isinstance(literal, int) and not isinstance(literal, bool):
            return True
        if k == "int" and isinstance(literal, float) and literal.is_integer():
            return True
        return t.accepts(literal)
    return True


def _show(value: Any) -> str:
    text = str(value) if isinstance(value, Ref) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
