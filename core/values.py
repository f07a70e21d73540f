"""Values in a program: literals, references and operations, parsed once and evaluated per run.

Wherever a program takes a value (``with``, ``return``, ``over``, ``set``, conditions):

* a string starting with ``$`` is a **reference**: ``$name`` or ``$name.field.sub`` (format 2 allows
  up to :data:`MAX_PATH` segments; format 1 one). On a list (a ``map`` result) a field gives that
  field of every element, in order; on ``null`` it gives ``null``;
* ``$$text`` is the literal string ``$text``;
* (format 2) a mapping with exactly one key ``$<name>`` is an **operation** (:mod:`stepbridge.operations`);
  a key ``$$k`` is the literal key ``$k``;
* anything else is a literal.

:func:`parse_value` turns raw data into a tree of literals, :class:`Ref` and :class:`Op`;
:func:`compile_value` turns a tree into a function of the run's scope. Nothing is ever evaluated
as code: there is no expression language, only this closed set of forms.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from .errors import OperationError
from .operations import (
    DOMAIN_ERRORS,
    MAX_VALUE_DEPTH,
    OPERATIONS,
    concat_two,
    measure,
    operation_error,
    run_lazy,
    run_operation,
    template_parts,
)
from .pointers import escape as _esc

__all__ = [
    "MAX_OP_DEPTH",
    "MAX_PATH",
    "Getter",
    "Op",
    "Ref",
    "ValueSyntaxError",
    "compile_args",
    "compile_value",
    "find_refs",
    "has_refs",
    "is_constant",
    "parse_value",
    "walk_values",
]

MAX_PATH = 8
MAX_OP_DEPTH = 32

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_REF_V1 = re.compile(rf"^\$({_NAME})(?:\.({_NAME}))?\Z")
_REF_V2 = re.compile(rf"^\$({_NAME})((?:\.{_NAME})*)\Z")

#: A compiled value: the run's scope (name -> value) in, the value out.
Getter = Callable[[dict[str, Any]], Any]


class ValueSyntaxError(ValueError):
    """A value that is not well formed: a malformed reference or operation. ``pointer`` is where."""

    def __init__(self, message: str, pointer: str = "", suggestion: str | None = None):
        super().__init__(message)
        self.pointer = pointer
        self.suggestion = suggestion


class Ref:
    """``$source.path...``: a variable and the fields below it (``path`` may be empty)."""

    __slots__ = ("path", "source")

    def __init__(self, source: str, *path: str | None):
        self.source = source
        self.path: tuple[str, ...] = tuple(p for p in path if p is not None)

    @property
    def field(self) -> str | None:
        """The first field (format 1 references have at most one)."""
        return self.path[0] if self.path else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.source == self.source and other.path == self.path

    def __hash__(self) -> int:
        return hash((self.source, self.path))

    def __repr__(self) -> str:
        return f"Ref({str(self)!r})"

    def __str__(self) -> str:
        return "$" + ".".join((self.source, *self.path))


class Op:
    """``{$name: args}``: an operation; ``args`` is a parsed value (one value, or a list for
    operations taking several); ``pointer`` is the JSON pointer of the mapping in the file."""

    __slots__ = ("args", "name", "pointer")

    def __init__(self, name: str, args: Any, pointer: str = ""):
        self.name = name
        self.args = args
        self.pointer = pointer

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Op) and other.name == self.name and other.args == self.args

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"Op({self.name!r}, {self.args!r})"



def _suggest(name: str, candidates: list[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


# -- parsing ----------------------------------------------------------------------------------------
def parse_value(value: Any, *, version: int = 1, pointer: str = "") -> Any:
    """Raw data -> the same shape with :class:`Ref` / :class:`Op` in place of references and
    operations and ``$$`` escapes undone. Raises :class:`ValueSyntaxError` (with its pointer)."""
    return _parse(value, version, pointer, 0, 0)


def _parse(value: Any, version: int, pointer: str, depth: int, ops: int) -> Any:
    if isinstance(value, str):
        if not value.startswith("$"):
            return value
        if value.startswith("$$"):
            return value[1:]
        return _parse_ref(value, version, pointer)
    if depth >= MAX_VALUE_DEPTH:
        raise ValueSyntaxError(f"value nested deeper than {MAX_VALUE_DEPTH} levels", pointer)
    if isinstance(value, list):
        return [_parse(v, version, f"{pointer}/{i}", depth + 1, ops) for i, v in enumerate(value)]
    if isinstance(value, dict):
        op_keys = [k for k in value if isinstance(k, str) and k.startswith("$") and not k.startswith("$$")]
        if version == 1:
            # Format 1 reads every key literally; an operation there is a mistake worth naming.
            if len(value) == 1 and op_keys and op_keys[0][1:] in OPERATIONS:
                raise ValueSyntaxError(f"operations ({op_keys[0]}) need 'stepbridge: 2'", pointer)
            return {k: _parse(v, version, f"{pointer}/{_esc(k)}", depth + 1, ops) for k, v in value.items()}
        if op_keys:
            if len(value) != 1:
                raise ValueSyntaxError(
                    f"an operation is a mapping with exactly one key; {op_keys[0]!r} has company "
                    f"({', '.join(repr(k) for k in list(value)[:4])}); write $$ for a literal '$' key", pointer)
            return _parse_op(op_keys[0], value[op_keys[0]], version, pointer, depth, ops)
        return {(k[1:] if isinstance(k, str) and k.startswith("$$") else k):
                _parse(v, version, f"{pointer}/{_esc(k)}", depth + 1, ops) for k, v in value.items()}
    return value


def _parse_ref(value: str, version: int, pointer: str) -> Ref:
    m = _REF_V1.match(value)
    if m is not None:
        return Ref(m.group(1), m.group(2))
    m = _REF_V2.match(value)
    if m is not None:
        path = m.group(2).split(".")[1:]
        if version == 1:
            raise ValueSyntaxError(f"reference {value!r} has a path of {len(path)} fields; paths longer than one "
                                   "field need 'stepbridge: 2'", pointer)
        if len(path) > MAX_PATH:
            raise ValueSyntaxError(f"reference {value[:60]!r} has {len(path)} fields; at most {MAX_PATH}", pointer)
        return Ref(m.group(1), *path)
    shown = value if len(value) <= 60 else value[:57] + "..."
    if version == 1:
        raise ValueSyntaxError(f"malformed reference {shown!r}: use $inputs.<field>, $<name>.<field> or $<item> "
                               "(write $$ for a literal dollar)", pointer)
    raise ValueSyntaxError(f"malformed reference {shown!r}: use $<name> or $<name>.<field>.<field> "
                           "(write $$ for a literal dollar)", pointer)


def _parse_op(key: str, raw: Any, version: int, pointer: str, depth: int, ops: int) -> Op:
    name = key[1:]
    op_pointer = f"{pointer}/{_esc(key)}"
    spec = OPERATIONS.get(name)
    if spec is None:
        hint = _suggest(name, list(OPERATIONS))
        raise ValueSyntaxError(f"unknown operation {key!r} (operations: {', '.join('$' + n for n in OPERATIONS)})",
                               op_pointer, f"${hint}" if hint else None)
    if ops >= MAX_OP_DEPTH:
        raise ValueSyntaxError(f"operations nested deeper than {MAX_OP_DEPTH}", pointer)
    if spec.arity is None:
        return Op(name, _parse(raw, version, op_pointer, depth + 1, ops + 1), pointer)
    lo, hi = spec.arity
    if not isinstance(raw, list):
        raise ValueSyntaxError(f"{key} takes a list of arguments: {spec.summary}", op_pointer)
    if len(raw) < lo or (hi is not None and len(raw) > hi):
        count = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi is not None else f"at least {lo}"
        raise ValueSyntaxError(f"{key} takes {count} argument{'s' if (hi or 2) > 1 else ''}, got {len(raw)}: "
                               f"{spec.summary}", op_pointer)
    args = [_parse(v, version, f"{op_pointer}/{i}", depth + 1, ops + 1) for i, v in enumerate(raw)]
    if name == "template":
        if not isinstance(args[1], dict):
            raise ValueSyntaxError("$template's second argument is a mapping of placeholder names to values",
                                   f"{op_pointer}/1")
        if isinstance(args[0], str):
            try:
                names = {part for is_field, part in template_parts(args[0]) if is_field}
            except ValueError as exc:
                raise ValueSyntaxError(f"$template: {exc}", f"{op_pointer}/0") from None
            missing = sorted(names - set(args[1]))
            if missing:
                raise ValueSyntaxError(f"$template has no value for the placeholder {{{missing[0]}}}",
                                       f"{op_pointer}/1", _suggest(missing[0], [str(k) for k in args[1]]))
    return Op(name, args, pointer)


# -- inspection -------------------------------------------------------------------------------------
def walk_values(parsed: Any, pointer: str = "") -> Iterator[tuple[str, Any]]:
    """Every node of a parsed value with its JSON pointer (operations' pointers as parsed)."""
    yield pointer, parsed
    if isinstance(parsed, Op):
        base = f"{parsed.pointer}/{_esc('$' + parsed.name)}"
        if isinstance(parsed.args, list) and OPERATIONS[parsed.name].arity is not None:
            for i, v in enumerate(parsed.args):
                yield from walk_values(v, f"{base}/{i}")
        else:
            yield from walk_values(parsed.args, base)
    elif isinstance(parsed, list):
        for i, v in enumerate(parsed):
            yield from walk_values(v, f"{pointer}/{i}")
    elif isinstance(parsed, dict):
        for k, v in parsed.items():
            yield from walk_values(v, f"{pointer}/{_esc(k)}")


def find_refs(parsed: Any, pointer: str = "") -> Iterator[tuple[str, Ref]]:
    """Every :class:`Ref` in a parsed value, with its JSON pointer below ``pointer``."""
    for where, node in walk_values(parsed, pointer):
        if isinstance(node, Ref):
            yield where, node


def has_refs(parsed: Any) -> bool:
    return next(find_refs(parsed), None) is not None


def is_constant(parsed: Any) -> bool:
    """No reference and no operation anywhere inside."""
    return not any(isinstance(node, Ref | Op) for _, node in walk_values(parsed))


# -- evaluation -------------------------------------------------------------------------------------
def _field(value: Any, name: str, ref: Ref, i: int, pointer: str) -> Any:
    if isinstance(value, dict):
        if name in value:
            return value[name]
        where = "$" + ".".join((ref.source, *ref.path[:i]))
        raise OperationError(f"{pointer or '/'}: {where} has no field {name!r} (fields: "
                             f"{', '.join(list(value)[:20]) or 'none'})", pointer=pointer)
    if isinstance(value, list):
        return [_field(element, name, ref, i, pointer) for element in value]
    if value is None:
        return None
    where = "$" + ".".join((ref.source, *ref.path[:i]))
    raise OperationError(f"{pointer or '/'}: {where} is {type(value).__name__}, it has no field {name!r}",
                         pointer=pointer)


def compile_value(parsed: Any, pointer: str = "", *, measured: bool = True) -> Getter:
    """A function of the scope computing ``parsed`` (references looked up, operations applied);
    ``pointer`` is where the value stands in the file (run-time errors name it).

    Containers are built afresh on every call (a module may mutate what it is given); a container
    holding references or operations is measured against the size bounds (a list literal that is
    ``$concat``'s argument, ``measured=False``, is measured as part of the concatenation)."""
    if isinstance(parsed, Ref):
        source, path = parsed.source, parsed.path
        if not path:
            return lambda scope: scope[source]
        if len(path) == 1:
            name = path[0]

            def one(scope: dict[str, Any]) -> Any:
                value = scope[source]
                if type(value) is dict and name in value:
                    return value[name]
                return _field(value, name, parsed, 0, pointer)
            return one

        def follow(scope: dict[str, Any]) -> Any:
            value = scope[source]
            for i, name in enumerate(path):
                value = _field(value, name, parsed, i, pointer)
            return value
        return follow
    if isinstance(parsed, Op):
        return _compile_op(parsed)
    if isinstance(parsed, list):
        if all(not isinstance(v, Ref | Op | list | dict) for v in parsed):
            items = list(parsed)
            return lambda scope: list(items)
        getters = [compile_value(v, f"{pointer}/{i}") for i, v in enumerate(parsed)]
        build = _list_of(getters)
        if is_constant(parsed) or not measured:
            return build
        if len(getters) == 1:  # ``[$x]``, as a loop appends with $concat: without the build's frame
            (g0,) = getters
            return lambda scope: measure([g0(scope)], pointer, "a list literal", scope)
        return lambda scope: measure(build(scope), pointer, "a list literal", scope)
    if isinstance(parsed, dict):
        pairs = [(k, compile_value(v, f"{pointer}/{_esc(k)}")) for k, v in parsed.items()]
        if is_constant(parsed):
            return lambda scope: {k: g(scope) for k, g in pairs}
        return lambda scope: measure({k: g(scope) for k, g in pairs}, pointer, "a mapping literal", scope)
    return lambda scope: parsed


def compile_args(parsed: dict[str, Any], pointer: str = "") -> Getter:
    """A mapping of name -> value (``with``, ``return``, ``set``) compiled to one getter."""
    pairs = [(k, compile_value(v, f"{pointer}/{_esc(k)}")) for k, v in parsed.items()]
    if len(pairs) == 1:  # the common case (``set: {x: ...}``, ``with: {question: ...}``) without a loop
        (key, getter), = pairs
        return lambda scope: {key: getter(scope)}
    return lambda scope: {k: g(scope) for k, g in pairs}


def _compile_op(op: Op) -> Getter:
    spec = OPERATIONS[op.name]
    pointer = op.pointer
    base = f"{pointer}/{_esc('$' + op.name)}"
    # An operation that neither grows nor reads (``$len``, ``$ge``...) has nothing to measure or charge:
    # it runs without run_operation's frame (a visible share of a loop pass).
    pure = not (spec.grows or spec.reads)
    run = spec.run
    if spec.arity is None:
        arg = compile_value(op.args, base)
        if not pure:
            return lambda scope: run_operation(spec, arg(scope), pointer, scope)

        def pure_one(scope: dict[str, Any]) -> Any:
            value = arg(scope)
            try:
                return run(value)
            except DOMAIN_ERRORS as exc:
                raise operation_error(spec, exc, pointer) from None
        return pure_one
    if spec.lazy:
        getters = [compile_value(v, f"{base}/{i}") for i, v in enumerate(op.args)]
        return lambda scope: run_lazy(spec, getters, scope, pointer)
    if len(op.args) == 2:  # most operations: the argument list built here, without one more frame
        g0 = compile_value(op.args[0], f"{base}/0", measured=not spec.joins)
        second = op.args[1]  # a literal scalar (``{$ge: [$n, 3]}``) is taken as is
        g1 = None if not isinstance(second, Ref | Op | list | dict) else compile_value(
            second, f"{base}/1", measured=not spec.joins)
        if spec.name == "concat":  # a loop's growing state: without run_operation's and _concat's frames
            return lambda scope: concat_two(spec, g0(scope), second if g1 is None else g1(scope), pointer, scope)
        if not pure:
            return lambda scope: run_operation(spec, [g0(scope), second if g1 is None else g1(scope)], pointer,
                                               scope)

        def pure_two(scope: dict[str, Any]) -> Any:
            args = [g0(scope), second if g1 is None else g1(scope)]
            try:
                return run(args)
            except DOMAIN_ERRORS as exc:
                raise operation_error(spec, exc, pointer) from None
        return pure_two
    build = _list_of([compile_value(v, f"{base}/{i}", measured=not spec.joins) for i, v in enumerate(op.args)])
    return lambda scope: run_operation(spec, build(scope), pointer, scope)


def _list_of(getters: list[Getter]) -> Getter:
    """The list of the getters' values; one or two getters (most operations, ``[$x]``) without a
    list comprehension's frame, which is a visible share of a loop pass."""
    if len(getters) == 1:
        (g0,) = getters
        return lambda scope: [g0(scope)]
    if len(getters) == 2:
        g0, g1 = getters
        return lambda scope: [g0(scope), g1(scope)]
    return lambda scope: [g(scope) for g in getters]
