"""The value operations of format 2: a closed set of total, pure, bounded functions on JSON values.

A program writes an operation as a mapping with one ``$``-key, ``{$concat: [$a, $b]}``; this module
holds what each one does at run time (:data:`OPERATIONS`) and what type it gives statically (used
by validation). Every operation is *total*: a value outside its domain is a typed
:class:`~stepbridge.errors.OperationError` naming the operation's JSON pointer, never a crash, and
every value an operation (or a literal holding references) builds is *bounded*: at most
:data:`MAX_ITEMS` values, :data:`MAX_CHARS` characters of text, :data:`MAX_VALUE_DEPTH` levels.
Equality is JSON equality (``1 == 1.0``; ``true`` is not ``1``); truthiness is Python's.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import OperationError
from .signature import TypeExpr

__all__ = [
    "DOMAIN_ERRORS",
    "MAX_CHARS",
    "MAX_ITEMS",
    "MAX_VALUE_DEPTH",
    "MAX_WORK",
    "OPERATIONS",
    "SIZES_KEY",
    "WORK_KEY",
    "Operation",
    "OperationTypeError",
    "concat_two",
    "json_equal",
    "measure",
    "operation_error",
    "truthy",
]

MAX_ITEMS = 1_000_000
MAX_CHARS = 8 * 2**20
MAX_VALUE_DEPTH = 64
MAX_INT = 2**63 - 1
#: Work one run's value operations may do in total (elements and object entries touched, text per 64
#: characters): a loop may rebuild a growing value on every pass, each pass bounded, the sum not.
MAX_WORK = 20_000_000
#: Where a run keeps its work budget: in its scope, under a key no program name can take (``$``); the
#: interpreter puts ``[MAX_WORK]`` there, and every copy of the scope (``map`` elements) shares it.
WORK_KEY = "$work"
#: Where a run remembers the sizes of the lists it built and measured (``id -> (list, length, values,
#: characters)``, the list held so its id stays its own): a loop appending to its state with ``$concat``
#: measures only what it appends, not the whole state again on every pass. Optional: without it,
#: every part is walked.
SIZES_KEY = "$sizes"
_MAX_SIZES = 16  # remembered sizes per run (the oldest forgotten first: the memo only saves time)
_FLAT = frozenset({str, int, float, bool, type(None)})
_STR_ONLY = {str}
_LIST_ONLY = {list}

ANY = TypeExpr("any")
INT = TypeExpr("int")
FLOAT = TypeExpr("float")
STR = TypeExpr("str")
BOOL = TypeExpr("bool")
NONE = TypeExpr("literal", (None,))


class OperationTypeError(Exception):
    """Static: an operation's arguments cannot have the types it needs (reported by validation)."""


class _Domain(Exception):
    """Run time: a value outside the operation's domain (becomes an OperationError with the pointer)."""


# -- JSON semantics ---------------------------------------------------------------------------------
def truthy(value: Any) -> bool:
    """Python's truthiness, which is JSON's intuition: false, null, 0, "", [] and {} are false."""
    return bool(value)


def _is_number(value: Any) -> bool:
    kind = type(value)
    return kind is int or kind is float or (isinstance(value, int | float) and kind is not bool)


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers by value (``1 == 1.0``), booleans only with booleans."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) or _is_number(b):
        return _is_number(a) and _is_number(b) and a == b
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return (isinstance(b, dict) and len(a) == len(b)
                and all(k in b and json_equal(v, b[k]) for k, v in a.items()))
    return type(a) is type(b) and a == b


def _key(value: Any) -> Any:
    """A hashable key equal for JSON-equal values (what ``$dedupe`` compares by)."""
    if isinstance(value, bool):
        return ("b", value)
    if _is_number(value):
        return ("n", value)  # 1 and 1.0 hash and compare alike
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("z",)
    if isinstance(value, list):
        return ("l", tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return ("d", frozenset((k, _key(v)) for k, v in value.items()))
    return ("o", repr(value))


def measure(value: Any, pointer: str, what: str, scope: dict[str, Any] | None = None) -> Any:
    """Check that a built value is within the bounds (values, text, depth) and return it.

    Shared sub-values count once per occurrence (``[$x, $x]`` is twice the size of ``$x``), but are
    walked once, so checking costs at most the size of the distinct data. The size is charged to the
    run's work budget (in ``scope``)."""
    if not isinstance(value, list | dict):
        return value
    nodes, chars = _size(value, pointer, what)
    _charge(scope, nodes + chars // 64, pointer, what)
    if type(value) is list and scope is not None:
        _remember(scope.get(SIZES_KEY), value, nodes, chars)
    return value


def measure_concat(result: list[Any], parts: Sequence[Any], pointer: str, what: str,
                   scope: dict[str, Any] | None) -> None:
    """:func:`measure` for ``result``, the concatenation of the lists ``parts``, from the parts' sizes.

    The same bounds and the same charge as measuring ``result`` itself, but a part this run's
    ``$concat`` built before (a loop's growing state) is not walked again: its size is remembered
    (while its length is unchanged)."""
    sizes = scope.get(SIZES_KEY) if scope is not None else None
    nodes, chars = 1, 0
    for part in parts:
        known = sizes.get(id(part)) if sizes is not None else None
        if known is not None and known[0] is part and known[1] == len(part):
            n, c = known[2], known[3]
        else:
            n, c = _size(part, pointer, what)
        nodes += n - 1  # the part's own list node is not in the result
        chars += c
    if nodes > MAX_ITEMS:
        raise _limit(pointer, what, f"has more than {MAX_ITEMS:,} values")
    if chars > MAX_CHARS:
        raise _limit(pointer, what, f"holds more than {MAX_CHARS:,} characters of text")
    _charge(scope, nodes + chars // 64, pointer, what)
    _remember(sizes, result, nodes, chars)


def _remember(sizes: dict[int, tuple[list[Any], int, int, int]] | None, value: list[Any], nodes: int,
              chars: int) -> None:
    if sizes is not None:
        if len(sizes) >= _MAX_SIZES:
            del sizes[next(iter(sizes))]  # the oldest: a loop's state is remembered anew on every pass
        sizes[id(value)] = (value, len(value), nodes, chars)


def _size(value: list[Any] | dict[str, Any], pointer: str, what: str) -> tuple[int, int]:
    """(values, characters of text) in ``value``, checked against the bounds."""
    if type(value) is list and len(value) == 1 and type(value[0]) is str:  # ``[$r.answer]``, a loop's append
        chars = len(value[0])
        if MAX_ITEMS < 2:  # the list and its text
            raise _limit(pointer, what, f"has more than {MAX_ITEMS:,} values")
        if chars > MAX_CHARS:
            raise _limit(pointer, what, f"holds more than {MAX_CHARS:,} characters of text")
        return 2, chars
    children = value.values() if isinstance(value, dict) else value
    kinds = set(map(type, children))
    if kinds <= _FLAT and isinstance(value, list):  # the common case: a flat list, at C speed
        nodes = 1 + len(value)
        chars = (sum(map(len, value)) if kinds == _STR_ONLY else
                 sum(len(c) for c in value if type(c) is str) if str in kinds else 0)
        if nodes > MAX_ITEMS:
            raise _limit(pointer, what, f"has more than {MAX_ITEMS:,} values")
        if chars > MAX_CHARS:
            raise _limit(pointer, what, f"holds more than {MAX_CHARS:,} characters of text")
        return nodes, chars
    return _walk(value, 0, {}, pointer, what)


def _walk(item: Any, depth: int, memo: dict[int, tuple[int, int]], pointer: str, what: str) -> tuple[int, int]:
    hit = memo.get(id(item))
    if hit is not None:
        return hit
    if depth >= MAX_VALUE_DEPTH:
        raise _limit(pointer, what, f"nests deeper than {MAX_VALUE_DEPTH} levels")
    nodes, chars = 1, 0
    if isinstance(item, dict):
        chars += sum(len(str(k)) for k in item)
        children: Any = item.values()
    else:
        children = item
    kinds = set(map(type, children))
    if kinds <= _FLAT:
        nodes += len(item)
        if str in kinds:
            chars += sum(map(len, children)) if kinds == _STR_ONLY else sum(
                len(c) for c in children if type(c) is str)
        children = ()
    for child in children:
        if type(child) is str:
            nodes += 1
            chars += len(child)
        elif isinstance(child, list | dict):
            n, c = _walk(child, depth + 1, memo, pointer, what)
            nodes += n
            chars += c
            if nodes > MAX_ITEMS or chars > MAX_CHARS:
                break
        else:
            nodes += 1
    if nodes > MAX_ITEMS:
        raise _limit(pointer, what, f"has more than {MAX_ITEMS:,} values")
    if chars > MAX_CHARS:
        raise _limit(pointer, what, f"holds more than {MAX_CHARS:,} characters of text")
    memo[id(item)] = (nodes, chars)
    return nodes, chars


def _charge(scope: dict[str, Any] | None, units: int, pointer: str, what: str) -> None:
    budget = scope.get(WORK_KEY) if scope is not None else None
    if budget is not None:
        budget[0] -= units
        if budget[0] < 0:
            raise OperationError(f"{pointer or '/'}: {what}: this run's value operations did more than "
                                 f"{MAX_WORK:,} units of work (values built or read); lower the loops' 'max' or the "
                                 "sizes", pointer=pointer, operation=what.removeprefix("$") if what.startswith("$")
                                 else None)


def _units(value: Any) -> int:
    if isinstance(value, list | dict):
        return len(value)
    if isinstance(value, str):
        return len(value) // 64
    return 0


def _limit(pointer: str, what: str, problem: str) -> OperationError:
    return OperationError(f"{pointer or '/'}: the value {what} builds {problem}", pointer=pointer,
                          operation=what.removeprefix("$") if what.startswith("$") else None)


# -- operations -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Operation:
    """One operation: ``arity`` None takes one value; ``(lo, hi)`` takes a list of lo..hi values
    (``hi`` None: no upper bound). ``run`` gets the evaluated arguments (``lazy``: their getters and
    the scope); ``result`` gives the static result type from the argument types."""

    name: str
    arity: tuple[int, int | None] | None
    run: Callable[..., Any]
    result: Callable[[list[TypeExpr], list[Any]], TypeExpr]
    summary: str
    lazy: bool = False
    grows: bool = False  # builds lists or text: its result is measured
    reads: bool = False  # walks its arguments (time proportional to their size): charged to the run
    joins: bool = False  # a list result is its (list) arguments joined: measured from them (measure_concat)


def _check_len(n: int) -> None:
    if n > MAX_ITEMS:
        raise _Domain(f"the result would have {n:,} elements (at most {MAX_ITEMS:,})")


def _check_chars(n: int) -> None:
    if n > MAX_CHARS:
        raise _Domain(f"the result would hold {n:,} characters (at most {MAX_CHARS:,})")


def _concat(args: list[Any]) -> Any:
    kinds = set(map(type, args))
    if kinds == _LIST_ONLY or (kinds != _STR_ONLY and all(isinstance(a, list) for a in args)):
        n = sum(map(len, args))
        if n > MAX_ITEMS:
            _check_len(n)
        out: list[Any] = []
        for a in args:
            out += a
        return out
    if all(isinstance(a, str) for a in args):
        _check_chars(sum(map(len, args)))
        return "".join(args)
    kinds_shown = ", ".join(sorted({_kind(a) for a in args}))
    raise _Domain(f"needs all lists or all strings, got {kinds_shown}")


def _dedupe(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _Domain(f"needs a list, got {_kind(value)}")
    seen: set[Any] = set()
    out = []
    for item in value:
        key = _key(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _join(args: list[Any]) -> str:
    items, sep = args
    if not isinstance(items, list):
        raise _Domain(f"needs a list to join, got {_kind(items)}")
    if not isinstance(sep, str):
        raise _Domain(f"the separator must be a string, got {_kind(sep)}")
    bad = next((i for i, v in enumerate(items) if not isinstance(v, str)), None)
    if bad is not None:
        raise _Domain(f"element {bad} is {_kind(items[bad])}, not a string")
    _check_chars(sum(len(v) for v in items) + len(sep) * max(len(items) - 1, 0))
    return sep.join(items)


def _split(args: list[Any]) -> list[str]:
    text, sep = args
    if not isinstance(text, str) or not isinstance(sep, str):
        raise _Domain(f"needs a string and a separator string, got {_kind(text)} and {_kind(sep)}")
    if not sep:
        raise _Domain("the separator is empty")
    _check_len(text.count(sep) + 1)
    return text.split(sep)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Domain(f"needs a string, got {_kind(value)}")
    return value


def _strip(value: Any) -> str:
    return _text(value).strip()


def _cased(text: str, mapping: Callable[[str], str]) -> str:
    """A case mapping never shortens text and lengthens it at most 3 times ('ß' uppers to 'SS', 'ﬄ' to 'FFL'):
    a text already past the bound is refused before anything is built, the result checked."""
    _check_chars(len(text))
    result = mapping(text)
    _check_chars(len(result))
    return result


def _lower(value: Any) -> str:
    return _cased(_text(value), str.lower)


def _upper(value: Any) -> str:
    return _cased(_text(value), str.upper)


def _replace(args: list[Any]) -> str:
    text, old, new = args
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        raise _Domain(f"needs three strings (text, old, new), got {_kind(text)}, {_kind(old)} and {_kind(new)}")
    # Python's count of an empty ``old`` is len(text) + 1 (it inserts ``new`` between every character):
    # the size is known before anything is built.
    _check_chars(len(text) + text.count(old) * (len(new) - len(old)))
    return text.replace(old, new)


def _affix(check: Callable[[str, str], bool], what: str) -> Callable[[list[Any]], bool]:
    def run(args: list[Any]) -> bool:
        text, affix = args
        if not (isinstance(text, str) and isinstance(affix, str)):
            raise _Domain(f"needs a string and a {what} string, got {_kind(text)} and {_kind(affix)}")
        return check(text, affix)
    return run


_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|\{|\}")


def template_parts(text: str) -> list[tuple[bool, str]]:
    """``text`` as ``(is_field, text_or_name)`` parts; ``{{``/``}}`` are literal braces. A lone
    brace, or braces around anything but a name, is an error (ValueError)."""
    parts: list[tuple[bool, str]] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        if m.start() > pos:
            parts.append((False, text[pos:m.start()]))
        token = m.group(0)
        if token in ("{{", "}}"):
            parts.append((False, token[0]))
        elif m.group(1) is not None:
            parts.append((True, m.group(1)))
        else:
            raise ValueError(f"a lone {token!r} at character {m.start()}: write {token * 2!r} for a literal brace, "
                             "{name} for a field")
        pos = m.end()
    if pos < len(text):
        parts.append((False, text[pos:]))
    return parts


def _render(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _template(args: list[Any]) -> str:
    text, fields = args
    if not isinstance(text, str):
        raise _Domain(f"the template must be a string, got {_kind(text)}")
    if not isinstance(fields, dict):
        raise _Domain(f"the fields must be a mapping, got {_kind(fields)}")
    try:
        parts = template_parts(text)
    except ValueError as exc:
        raise _Domain(str(exc)) from None
    out: list[str] = []
    size = 0
    for is_field, part in parts:
        if is_field:
            if part not in fields:
                raise _Domain(f"no value for the placeholder {{{part}}}")
            value = fields[part]
            # str() of a bounded value is bounded, but check before joining
            part = _render(value)
        size += len(part)
        _check_chars(size)
        out.append(part)
    return "".join(out)


def _len(value: Any) -> int:
    if isinstance(value, list | str | dict):
        return len(value)
    raise _Domain(f"needs a list, string or object, got {_kind(value)}")


def _int_arg(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Domain(f"the {what} must be an integer, got {_kind(value)}")
    return value


def _index(args: list[Any]) -> Any:
    seq, i = args
    if not isinstance(seq, list | str):
        raise _Domain(f"needs a list or string, got {_kind(seq)}")
    i = _int_arg(i, "index")
    if not -len(seq) <= i < len(seq):
        raise _Domain(f"index {i} is out of range for {_kind(seq)} of length {len(seq)}")
    return seq[i]


def _slice(args: list[Any]) -> Any:
    seq, start, stop = args
    if not isinstance(seq, list | str):
        raise _Domain(f"needs a list or string, got {_kind(seq)}")
    lo = None if start is None else _int_arg(start, "start")
    hi = None if stop is None else _int_arg(stop, "stop")
    return seq[lo:hi]


_MISSING = object()


def _get(args: list[Any]) -> Any:
    obj, key = args[0], args[1]
    default = args[2] if len(args) > 2 else _MISSING
    if not isinstance(obj, dict):
        if obj is None and default is not _MISSING:
            return default
        raise _Domain(f"needs an object, got {_kind(obj)}")
    if not isinstance(key, str):
        raise _Domain(f"the key must be a string, got {_kind(key)}")
    if key in obj:
        return obj[key]
    if default is _MISSING:
        raise _Domain(f"no field {key!r} (fields: {', '.join(list(obj)[:20]) or 'none'}); give a default as the "
                      "third argument")
    return default


def _add(args: list[Any]) -> Any:
    a, b = args
    if not (_is_number(a) and _is_number(b)):
        raise _Domain(f"needs two numbers, got {_kind(a)} and {_kind(b)}")
    result = a + b
    if type(result) is int:
        if not -MAX_INT <= result <= MAX_INT:
            raise _Domain("the result is outside the 64-bit integer range")
    elif not math.isfinite(result):
        raise _Domain("the result is not a finite number")
    return result


def _compare(check: Callable[[Any, Any], bool]) -> Callable[[list[Any]], bool]:
    def run(args: list[Any]) -> bool:
        a, b = args
        kinds = type(a), type(b)
        if kinds in _SAME_KINDS or (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
            return check(a, b)
        raise _Domain(f"compares two numbers or two strings, got {_kind(a)} and {_kind(b)}")
    return run


#: argument types a comparison takes as they are (the checks above, without their calls)
_SAME_KINDS = frozenset({(int, int), (int, float), (float, int), (float, float), (str, str)})


def _in(args: list[Any]) -> bool:
    x, container = args
    if isinstance(container, list):
        return any(json_equal(x, item) for item in container)
    if isinstance(container, str):
        if not isinstance(x, str):
            raise _Domain(f"a substring test needs a string, got {_kind(x)}")
        return x in container
    if isinstance(container, dict):
        if not isinstance(x, str):
            raise _Domain(f"a key test needs a string, got {_kind(x)}")
        return x in container
    raise _Domain(f"needs a list, string or object to look in, got {_kind(container)}")


def _and(getters: Sequence[Callable[[Any], Any]], scope: Any) -> bool:
    return all(truthy(g(scope)) for g in getters)


def _or(getters: Sequence[Callable[[Any], Any]], scope: Any) -> bool:
    return any(truthy(g(scope)) for g in getters)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if _is_number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# -- static result types ----------------------------------------------------------------------------
def _base(t: TypeExpr) -> str:
    """The JSON kind a type's values have: str, number, bool, list, object, null, any or mixed."""
    k = t.kind
    if k in ("any", "never"):
        return "any"
    if k == "str":
        return "str"
    if k in ("int", "float"):
        return "number"
    if k == "bool":
        return "bool"
    if k == "list":
        return "list"
    if k in ("dict", "record"):
        return "object"
    if k == "literal":
        kinds = {"null" if v is None else "bool" if isinstance(v, bool) else "str" if isinstance(v, str)
                 else "number" for v in t.args}
        return kinds.pop() if len(kinds) == 1 else "mixed"
    if k == "optional":
        return "optional"
    return "any"  # kinds this module does not know (added by other parts of format 2): no static claim


def _need(t: TypeExpr, kinds: set[str], what: str) -> str:
    base = _base(t)
    if base == "any" or base in kinds:
        return base
    raise OperationTypeError(f"{what} must be {' or '.join(sorted(kinds))}, not {t}")


def _t_concat(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    bases = {_base(t) for t in types} - {"any"}
    if not bases:
        return ANY
    if bases == {"str"}:
        return STR
    if bases == {"list"}:
        element = TypeExpr("never")
        for t in types:
            if t.kind == "list":
                joined = element.join(t.args[0])
                if joined is None:
                    raise OperationTypeError(f"the lists have elements of different types ({element} and {t.args[0]})")
                element = joined
        return TypeExpr("list", (element,))
    raise OperationTypeError("concatenates all lists or all strings, not "
                             + " and ".join(str(t) for t in types))


def _t_dedupe(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    _need(types[0], {"list"}, "the argument")
    return types[0] if types[0].kind == "list" else TypeExpr("list", (ANY,))


def _t_join(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    _need(types[0], {"list"}, "the first argument")
    _need(types[1], {"str"}, "the separator")
    element = types[0].element()
    if element is not None and _base(element) not in ("str", "any"):
        raise OperationTypeError(f"joins strings; the elements are {element}")
    return STR


def _t_split(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    _need(types[0], {"str"}, "the first argument")
    _need(types[1], {"str"}, "the separator")
    return TypeExpr("list", (STR,))


def _t_text(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    for i, t in enumerate(types):
        _need(t, {"str"}, "the text" if i == 0 else f"argument {i}")
    return STR


def _t_affix(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    _t_text(types, _)
    return BOOL


def _t_template(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    _need(types[0], {"str"}, "the template")
    _need(types[1], {"object"}, "the fields")
    return STR


def _t_len(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    _need(types[0], {"list", "str", "object"}, "the argument")
    return INT


def _t_index(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    base = _need(types[0], {"list", "str"}, "the first argument")
    _need(types[1], {"number"}, "the index")
    if base == "str":
        return STR
    return types[0].element() or ANY


def _t_slice(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    base = _need(types[0], {"list", "str"}, "the first argument")
    for t, what in ((types[1], "start"), (types[2], "stop")):
        _need(t, {"number", "null"}, f"the {what}")
    return STR if base == "str" else (types[0] if types[0].kind == "list" else TypeExpr("list", (ANY,)))


def _t_get(types: list[TypeExpr], args: list[Any]) -> TypeExpr:
    obj = types[0]
    _need(types[1], {"str"}, "the key")
    default = types[2] if len(types) > 2 else None
    base = _need(obj, {"object"} | ({"null", "optional"} if default is not None else set()), "the first argument")
    if obj.kind == "optional":
        obj = obj.args[0]
    field: TypeExpr | None = ANY
    if obj.kind == "record" and isinstance(args[1], str):
        field = obj.field(args[1])
        if field is None and default is None:
            raise OperationTypeError(f"{obj} has no field {args[1]!r}; give a default as the third argument")
    elif obj.kind == "dict":
        field = obj.args[0]
    elif base == "null":
        field = None
    if default is None:
        return field or ANY
    if field is None:
        return default
    joined = field.join(default)
    return joined if joined is not None else ANY


def _t_add(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    for t in types:
        _need(t, {"number"}, "both arguments")
    if all(t.kind == "int" or (t.kind == "literal" and all(isinstance(v, int) for v in t.args)) for t in types):
        return INT
    return FLOAT if all(_base(t) == "number" for t in types) else ANY


def _t_bool(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    return BOOL


def _t_compare(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    a = _need(types[0], {"number", "str"}, "the first argument")
    b = _need(types[1], {"number", "str"}, "the second argument")
    if "any" not in (a, b) and a != b:
        raise OperationTypeError(f"compares two numbers or two strings, not {types[0]} and {types[1]}")
    return BOOL


def _t_in(types: list[TypeExpr], _: list[Any]) -> TypeExpr:
    base = _need(types[1], {"list", "str", "object"}, "the container")
    if base in ("str", "object"):
        _need(types[0], {"str"}, "what is looked for")
    return BOOL


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("concat", (1, None), _concat, _t_concat, "all lists or all strings, concatenated", grows=True,
              reads=True, joins=True),
    Operation("dedupe", None, _dedupe, _t_dedupe, "a list without later duplicates (JSON equality), order kept",
              reads=True),
    Operation("join", (2, 2), _join, _t_join, "[list of strings, separator] -> string", grows=True, reads=True),
    Operation("split", (2, 2), _split, _t_split, "[string, separator] -> list of strings", grows=True,
              reads=True),
    Operation("strip", None, _strip, _t_text, "a string without leading and trailing whitespace (Python's "
              "str.strip())", grows=True, reads=True),
    Operation("lower", None, _lower, _t_text, "a string in lower case (Python's str.lower())", grows=True,
              reads=True),
    Operation("upper", None, _upper, _t_text, "a string in upper case (Python's str.upper())", grows=True,
              reads=True),
    Operation("replace", (3, 3), _replace, _t_text, "[text, old, new] -> every old replaced by new (Python's "
              "str.replace)", grows=True, reads=True),
    Operation("startswith", (2, 2), _affix(str.startswith, "prefix"), _t_affix, "[text, prefix] -> bool",
              reads=True),
    Operation("endswith", (2, 2), _affix(str.endswith, "suffix"), _t_affix, "[text, suffix] -> bool",
              reads=True),
    Operation("template", (2, 2), _template, _t_template,
              "[text with {name} placeholders, {name: value}] -> string", grows=True, reads=True),
    Operation("len", None, _len, _t_len, "length of a list, string or object"),
    Operation("index", (2, 2), _index, _t_index, "[list or string, i] -> element (negative counts from the end)"),
    Operation("slice", (3, 3), _slice, _t_slice, "[list or string, start, stop] (null: open end)", reads=True),
    Operation("get", (2, 3), _get, _t_get, "[object, key] or [object, key, default] -> the field"),
    Operation("add", (2, 2), _add, _t_add, "[a, b] -> a + b (numbers)"),
    Operation("eq", (2, 2), lambda a: json_equal(a[0], a[1]), _t_bool, "[a, b] -> JSON equality", reads=True),
    Operation("ne", (2, 2), lambda a: not json_equal(a[0], a[1]), _t_bool, "[a, b] -> not equal", reads=True),
    Operation("lt", (2, 2), _compare(operator.lt), _t_compare, "[a, b] -> a < b (numbers or strings)"),
    Operation("le", (2, 2), _compare(operator.le), _t_compare, "[a, b] -> a <= b"),
    Operation("gt", (2, 2), _compare(operator.gt), _t_compare, "[a, b] -> a > b"),
    Operation("ge", (2, 2), _compare(operator.ge), _t_compare, "[a, b] -> a >= b"),
    Operation("in", (2, 2), _in, _t_in, "[x, list/string/object] -> element / substring / key test", reads=True),
    Operation("and", (1, None), _and, _t_bool, "[a, b, ...] -> all truthy (short-circuit)", lazy=True),
    Operation("or", (1, None), _or, _t_bool, "[a, b, ...] -> any truthy (short-circuit)", lazy=True),
    Operation("not", None, lambda v: not truthy(v), _t_bool, "a value -> its truthiness negated"),
)}


#: What ``op.run`` raises for arguments outside its domain (see :func:`operation_error`).
DOMAIN_ERRORS = (_Domain, RecursionError)


def operation_error(op: Operation, exc: BaseException, pointer: str) -> OperationError:
    """The typed error for one of :data:`DOMAIN_ERRORS` raised by ``op`` at ``pointer``."""
    if isinstance(exc, RecursionError):
        return OperationError(f"{pointer or '/'}: ${op.name}: the value nests too deeply", pointer=pointer,
                              operation=op.name)
    return OperationError(f"{pointer or '/'}: ${op.name} {exc}", pointer=pointer, operation=op.name)


def run_operation(op: Operation, args: Any, pointer: str, scope: dict[str, Any] | None = None) -> Any:
    """Apply ``op`` to evaluated arguments; a domain problem becomes a typed OperationError. The work
    is charged to the run's budget in ``scope`` (none without a scope)."""
    try:
        result = op.run(args)
    except DOMAIN_ERRORS as exc:
        raise operation_error(op, exc, pointer) from None
    if op.grows and isinstance(result, list):
        if op.joins:
            measure_concat(result, args, pointer, f"${op.name}", scope)
        else:
            measure(result, pointer, f"${op.name}", scope)
    elif op.reads and scope is not None:  # reading a big value costs too ($in, $eq, $dedupe...)
        units = _units(result) + (sum(_units(a) for a in args) if op.arity is not None else _units(args))
        if units:
            _charge(scope, units, pointer, f"${op.name}")
    return result


def concat_two(op: Operation, a: Any, b: Any, pointer: str, scope: dict[str, Any] | None = None) -> Any:
    """``run_operation(op, [a, b], ...)`` for ``$concat`` (``op``) of two values: two lists (a loop appending
    to its state) joined and measured in this frame, the same result, bounds and charge; anything else
    (text, mixed, a result too long) takes the general path."""
    if type(a) is not list or type(b) is not list or len(a) + len(b) > MAX_ITEMS:
        return run_operation(op, [a, b], pointer, scope)
    result = a + b
    measure_concat(result, (a, b), pointer, "$concat", scope)
    return result


def run_lazy(op: Operation, getters: Sequence[Callable[[Any], Any]], scope: Any, pointer: str) -> Any:
    try:
        return op.run(getters, scope)
    except _Domain as exc:
        raise OperationError(f"{pointer or '/'}: ${op.name} {exc}", pointer=pointer, operation=op.name) from None
