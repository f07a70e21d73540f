"""Signatures: the typed inputs and outputs of a program or module, in DSPy's grammar.

``"context: list[str], question -> answer: int"``; an untyped field is ``str``. The long form
``{instructions, inputs: {name: {type, desc}}, outputs: {...}}`` is accepted too.

Types are parsed by hand from a closed grammar: nothing here is ever evaluated or imported.

* scalars ``str``, ``int``, ``float``, ``bool``; ``Any``;
* ``list[T]``, ``dict[K, V]`` (``K`` a scalar, a ``Literal`` of strings or an enum), ``tuple[A, B, ...]``;
* ``Literal[...]`` (strings, numbers, booleans), ``Optional[T]``, ``Union[A, B]`` / ``A | B``;
* ``History`` (DSPy's ``dspy.History``), only as the whole type of an input field;
* the name of a type declared in a program's ``types`` section (:mod:`stepbridge.named_types`):
  an identifier starting with an uppercase letter, resolved when the program is validated.

A :class:`TypeExpr` is the parsed form. Unions are normalised as Python normalises them (nested
unions flattened, duplicates dropped, order kept) except that ``None`` always comes last:
``A | None | B`` is ``Optional[Union[A, B]]``.
"""

from __future__ import annotations

import math
import re
import types as _pytypes
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

if TYPE_CHECKING:
    from .named_types import EnumDecl, ObjectDecl

__all__ = [
    "FieldSpec",
    "Signature",
    "SignatureSyntaxError",
    "TypeExpr",
    "parse_signature",
    "parse_type",
]

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
TYPE_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]*\Z")
SCALARS = ("str", "int", "float", "bool")
MAX_TYPE_DEPTH = 8
MAX_TYPE_LENGTH = 2000
#: Names the grammar gives a meaning: a declared type may not take one of them.
BUILTIN_TYPE_NAMES = frozenset({
    *SCALARS, "Any", "list", "List", "dict", "Dict", "tuple", "Tuple", "Literal", "Optional", "Union", "History",
    "None", "NoneType", "typing",
})
#: The kinds that need the ``typed_objects`` capability.
TYPED_OBJECT_KINDS = frozenset({"any", "union", "tuple", "history", "named", "object", "enum"})


class SignatureSyntaxError(ValueError):
    """A signature or type string does not follow the grammar; ``position`` is the character offset."""

    def __init__(self, message: str, text: str, position: int | None = None):
        where = f" at character {position}" if position is not None else ""
        super().__init__(f"{message}{where} in {text!r}")
        self.text = text
        self.position = position


@dataclass(frozen=True)
class TypeExpr:
    """A parsed field type.

    ``kind`` and ``args``:

    * ``str`` ``int`` ``float`` ``bool`` ``any`` ``history``: no args;
    * ``list`` ``(T,)``; ``optional`` ``(T,)``; ``tuple`` ``(T1, ..., Tn)``; ``union`` ``(T1, ..., Tn)``
      (n >= 2, no optional or union among them);
    * ``dict`` ``(V,)`` for ``dict[str, V]`` or ``(V, K)`` for another key type: ``args[0]`` is always
      the value type;
    * ``literal``: the values;
    * ``named`` ``(name,)``: a declared type not yet resolved against a program's ``types`` section;
    * ``object`` / ``enum`` ``(name, digest)``: a resolved declared type; ``decl`` holds its definition
      (:class:`~stepbridge.named_types.ObjectDecl` / ``EnumDecl``). Two resolved types are equal when
      their names and content digests are.

    Static checks of format 2 also use kinds no signature spells: ``never`` (the element type of an
    empty list literal ``[]``, which later bindings refine) and ``record`` (a step's result or a
    mapping literal: ``args`` holds ``(name, TypeExpr)`` pairs in order); ``any`` is also what a value
    of statically unknown type has (compatible with everything).
    """

    kind: str
    args: tuple[Any, ...] = ()
    decl: ObjectDecl | EnumDecl | None = field(default=None, compare=False, repr=False)

    # -- text ------------------------------------------------------------------------------------
    def __str__(self) -> str:
        k = self.kind
        if k in SCALARS:
            return k
        if k == "any":
            return "Any"
        if k == "never":
            return "Never"
        if k == "record":
            return "{" + ", ".join(f"{name}: {t}" for name, t in self.args) + "}"
        if k == "history":
            return "History"
        if k in ("named", "object", "enum"):
            return str(self.args[0])
        if k == "list":
            return f"list[{self.args[0]}]"
        if k == "dict":
            return f"dict[{self.key}, {self.args[0]}]"
        if k == "optional":
            return f"Optional[{self.args[0]}]"
        if k == "tuple":
            return "tuple[" + ", ".join(map(str, self.args)) + "]"
        if k == "union":
            return "Union[" + ", ".join(map(str, self.args)) + "]"
        return "Literal[" + ", ".join(_literal_repr(v) for v in self.args) + "]"

    @property
    def key(self) -> TypeExpr:
        """The key type of a ``dict`` (``str`` unless spelled otherwise)."""
        return self.args[1] if self.kind == "dict" and len(self.args) > 1 else _STR

    def walk(self, *, into_declared: bool = False) -> typing.Iterator[TypeExpr]:
        """This type and every type inside it (the fields of declared object types with ``into_declared``)."""
        todo = [self]
        seen: set[tuple[str, Any]] = set()
        while todo:
            t = todo.pop()
            yield t
            if t.kind in ("object", "enum"):
                if into_declared and t.kind == "object" and (t.kind, t.args) not in seen:
                    seen.add((t.kind, t.args))
                    todo.extend(f.type for f in t.decl.fields)  # type: ignore[union-attr]
            elif t.kind == "record":
                todo.extend(a for _, a in t.args)
            elif t.kind != "literal":
                todo.extend(a for a in t.args if isinstance(a, TypeExpr))

    def names(self) -> list[str]:
        """The declared type names this type refers to (resolved or not), in order of appearance."""
        found: list[str] = []
        for t in self.walk():
            if t.kind in ("named", "object", "enum") and t.args[0] not in found:
                found.append(t.args[0])
        return found

    @property
    def needs_typed_objects(self) -> bool:
        """Whether a field of this type needs the ``typed_objects`` capability (and format 2)."""
        return any(t.kind in TYPED_OBJECT_KINDS or (t.kind == "dict" and len(t.args) > 1) for t in self.walk())

    # -- python typing ---------------------------------------------------------------------------
    def annotation(self) -> Any:
        """The equivalent Python annotation (what a DSPy signature would hold).

        Declared types become real pydantic models and ``Enum`` classes (built once per content,
        :func:`stepbridge.named_types.materialize`); ``History`` is a pydantic model with the shape
        and name of ``dspy.History`` (the DSPy adapter swaps in the real one), so the core needs no dspy.
        """
        k = self.kind
        if k in SCALARS:
            return {"str": str, "int": int, "float": float, "bool": bool}[k]
        if k == "any":
            return Any
        if k == "list":
            return list[self.args[0].annotation()]  # type: ignore[misc]
        if k == "dict":
            return dict[self.key.annotation(), self.args[0].annotation()]  # type: ignore[misc]
        if k == "optional":
            inner = self.args[0]
            members = inner.args if inner.kind == "union" else (inner,)
            return _union_annotation((*(a.annotation() for a in members), type(None)))
        if k == "tuple":
            return tuple[tuple(a.annotation() for a in self.args)]  # type: ignore[misc]
        if k == "union":
            return _union_annotation(tuple(a.annotation() for a in self.args))
        if k in ("object", "enum", "history"):
            from .named_types import materialize

            return materialize(self)
        if k == "named":
            raise TypeError(f"type {self.args[0]!r} is not resolved: declare it in the program's 'types' section")
        if k == "never":
            return Any
        if k == "record":
            return dict[str, Any]
        return Literal[tuple(self.args)]

    @classmethod
    def from_annotation(cls, annotation: Any) -> TypeExpr:
        """Inverse of :meth:`annotation`, for tools and imported DSPy signatures.

        Accepts pydantic models and ``Enum`` classes (as declared types: their JSON schema must be
        one a ``types`` section can declare, else ``TypeError``) and ``dspy.History``.
        """
        import enum

        if annotation in (str, int, float, bool):
            return cls(annotation.__name__)
        if annotation is Any:
            return cls("any")
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is list and len(args) == 1:
            return cls("list", (cls.from_annotation(args[0]),))
        if origin is dict and len(args) == 2:
            return _dict(cls.from_annotation(args[0]), cls.from_annotation(args[1]), None)
        if origin is tuple and args and Ellipsis not in args:
            return cls("tuple", tuple(cls.from_annotation(a) for a in args))
        if origin is Literal and args and all(_is_literal_value(a) for a in args):
            return cls("literal", tuple(args))
        if origin in (typing.Union, _pytypes.UnionType):
            members = [_NONE if a is type(None) else cls.from_annotation(a) for a in args]
            return _union(members, None)
        if isinstance(annotation, type) and (
            issubclass(annotation, BaseModel) or issubclass(annotation, enum.Enum)
        ):
            from .named_types import from_class

            return from_class(annotation)
        raise TypeError(f"unsupported type annotation {annotation!r}; use str, int, float, bool, Any, "
                        "list[T], dict[K, V], tuple[...], Literal[...], Optional[T], Union[...], a pydantic "
                        "model, an Enum or dspy.History")

    # -- values ----------------------------------------------------------------------------------
    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (plain JSON data) is an instance of this type.

        A declared object is a JSON object with the declared fields (an ``Optional`` one may be left
        out; no other keys); an enum value is one of its strings; a tuple is a list of its length;
        a ``History`` is ``{"messages": [{field: value, ...}, ...]}``. An unresolved name accepts nothing.
        """
        k = self.kind
        if k == "str":
            return isinstance(value, str)
        if k == "bool":
            return isinstance(value, bool)
        if k == "int":
            return isinstance(value, int) and not isinstance(value, bool)
        if k == "float":
            if isinstance(value, float):
                return math.isfinite(value)
            return isinstance(value, int) and not isinstance(value, bool)
        if k == "any":
            return True
        if k == "list":
            return isinstance(value, list) and all(self.args[0].accepts(v) for v in value)
        if k == "dict":
            key = self.key
            return isinstance(value, dict) and all(
                key.accepts_key(name) and self.args[0].accepts(v) for name, v in value.items()
            )
        if k == "optional":
            return value is None or self.args[0].accepts(value)
        if k == "tuple":
            return (isinstance(value, list | tuple) and len(value) == len(self.args)
                    and all(t.accepts(v) for t, v in zip(self.args, value, strict=True)))
        if k == "union":
            return any(t.accepts(value) for t in self.args)
        if k == "enum":
            return isinstance(value, str) and value in self.decl.values  # type: ignore[union-attr]
        if k == "object":
            if not isinstance(value, dict):
                return False
            fields = self.decl.field_types  # type: ignore[union-attr]
            for name, item in value.items():
                ftype = fields.get(name)
                if ftype is None or not ftype.accepts(item):
                    return False
            return all(name in value for name in self.decl.required)  # type: ignore[union-attr]
        if k == "history":
            return (isinstance(value, dict) and set(value) == {"messages"} and isinstance(value["messages"], list)
                    and all(isinstance(m, dict) and all(isinstance(n, str) for n in m) for m in value["messages"]))
        if k in ("named", "never"):
            return False
        if k == "record":
            return isinstance(value, dict) and all(name in value and t.accepts(value[name]) for name, t in self.args)
        return any(value == v and type(value) is type(v) for v in self.args)

    def accepts_key(self, key: Any) -> bool:
        """Whether ``key`` is a valid JSON object key of a ``dict`` with this key type."""
        if self.kind == "str":
            return isinstance(key, str)
        if not isinstance(key, str):
            return self.accepts(key)
        if self.kind == "int":
            return re.fullmatch(r"-?[0-9]+", key) is not None
        if self.kind == "float":
            try:
                return math.isfinite(float(key))
            except ValueError:
                return False
        if self.kind == "bool":
            return key in ("true", "false")
        if self.kind == "literal":
            return any(_key_text(v) == key for v in self.args)
        return self.accepts(key)

    def assignable_to(self, target: TypeExpr) -> bool:
        """Whether every value of this type is a valid value of ``target`` (producer -> consumer)."""
        if self.kind in ("any", "never") or target.kind == "any":
            return True  # statically unknown: checked when the value exists
        if target.kind == "never":
            return False
        if self.kind == "union":
            return all(t.assignable_to(target) for t in self.args)
        if self.kind == "record":
            if target.kind == "record":
                mine = dict(self.args)
                return all(name in mine and mine[name].assignable_to(t) for name, t in target.args)
            if target.kind == "dict":
                return target.key.kind == "str" and all(t.assignable_to(target.args[0]) for _, t in self.args)
            if target.kind == "object":  # a mapping literal or a result as a declared object
                mine = dict(self.args)
                fields = target.decl.field_types  # type: ignore[union-attr]
                return (all(n in fields and t.assignable_to(fields[n]) for n, t in mine.items())
                        and all(n in mine for n in target.decl.required))  # type: ignore[union-attr]
            if target.kind == "optional":
                return self.assignable_to(target.args[0])
            if target.kind == "union":
                return any(self.assignable_to(t) for t in target.args)
            return False
        if target.kind == "optional":
            inner = target.args[0]
            return (_is_none(self) or self.assignable_to(inner)
                    or (self.kind == "optional" and self.args[0].assignable_to(inner)))
        if self.kind == "optional":
            return False
        if target.kind == "union":
            return any(self.assignable_to(t) for t in target.args)
        if self.kind == "literal":
            return all(target.accepts(v) for v in self.args)
        if self.kind == "enum":
            if target.kind == "enum":
                return self == target
            return all(target.accepts(v) for v in self.decl.values)  # type: ignore[union-attr]
        if target.kind == "float" and self.kind == "int":
            return True
        if target.kind == "str" and self.kind in SCALARS:
            # DSPy renders any scalar as text in a str field; treat as compatible.
            return True
        if self.kind == "tuple" and target.kind == "list":
            return all(t.assignable_to(target.args[0]) for t in self.args)
        if self.kind == "object" and target.kind == "dict":
            return target.key.kind == "str" and all(
                f.type.assignable_to(target.args[0]) for f in self.decl.fields)  # type: ignore[union-attr]
        if self.kind != target.kind:
            return False
        if self.kind == "list":
            return bool(self.args[0].assignable_to(target.args[0]))
        if self.kind == "dict":
            return self.key.assignable_to(target.key) and self.args[0].assignable_to(target.args[0])
        if self.kind == "tuple":
            return len(self.args) == len(target.args) and all(
                a.assignable_to(b) for a, b in zip(self.args, target.args, strict=True))
        if self.kind in ("object", "named"):
            return self == target
        return True

    def element(self) -> TypeExpr | None:
        """The element type of a list (what ``map`` iterates over), else None."""
        if self.kind == "any":
            return self
        return self.args[0] if self.kind == "list" else None

    def field(self, name: str) -> TypeExpr | None:
        """The type of ``value.name`` (None: no such field). On a list, the field of every element."""
        k = self.kind
        if k in ("any", "never"):
            return self
        if k == "record":
            return next((t for n, t in self.args if n == name), None)
        if k == "object":
            return self.decl.field_types.get(name)  # type: ignore[union-attr]
        if k == "dict":
            return self.args[0]
        if k == "list":
            inner = self.args[0].field(name)
            return TypeExpr("list", (inner,)) if inner is not None else None
        if k == "optional":
            inner = self.args[0].field(name)
            return optional(inner) if inner is not None else None
        return None

    def join(self, other: TypeExpr) -> TypeExpr | None:
        """The least type both are assignable to (None if there is none): how a name rebound on
        several paths, or the elements of a list literal, get one type."""
        a, b = self, other
        if a == b or b.kind == "never" or a.kind == "any":
            return a
        if a.kind == "never" or b.kind == "any":
            return b
        if a.kind == "optional" or b.kind == "optional":
            inner = (a.args[0] if a.kind == "optional" else a).join(b.args[0] if b.kind == "optional" else b)
            return optional(inner) if inner is not None else None
        if _is_none(a) or _is_none(b):
            return optional(b if _is_none(a) else a)
        if a.kind == "literal" and b.kind == "literal":
            values = list(a.args) + [v for v in b.args if not any(v == w and type(v) is type(w) for w in a.args)]
            return TypeExpr("literal", tuple(values))
        if a.kind == "literal" or b.kind == "literal":
            lit, other_t = (a, b) if a.kind == "literal" else (b, a)
            return other_t if lit.assignable_to(other_t) else None
        if {a.kind, b.kind} == {"int", "float"}:
            return TypeExpr("float")
        if a.kind == b.kind == "list" or (a.kind == b.kind == "dict" and a.key == b.key):
            inner = a.args[0].join(b.args[0])
            return TypeExpr(a.kind, (inner, *a.args[1:])) if inner is not None else None
        if a.kind == b.kind == "record":
            theirs = dict(b.args)
            fields = []
            for name, t in a.args:
                if name in theirs:
                    joined = t.join(theirs[name])
                    if joined is None:
                        return None
                    fields.append((name, joined))
            return TypeExpr("record", tuple(fields))
        if {a.kind, b.kind} == {"record", "dict"}:
            rec, dct = (a, b) if a.kind == "record" else (b, a)
            if dct.key.kind != "str":
                return None
            inner = dct.args[0]
            for _, t in rec.args:
                joined = inner.join(t)
                if joined is None:
                    return None
                inner = joined
            return TypeExpr("dict", (inner,))
        return None


def optional(inner: TypeExpr) -> TypeExpr:
    """``Optional[inner]`` (not doubly wrapped; Any and null stay as they are)."""
    if inner.kind in ("optional", "any") or _is_none(inner):
        return inner
    return TypeExpr("optional", (inner,))


def _is_none(t: TypeExpr) -> bool:
    return t.kind == "literal" and t.args == (None,)


def _union_annotation(members: tuple[Any, ...]) -> Any:
    """``Union[members]`` in exactly this order.

    ``typing.Union[...]`` is cached by an equality that ignores order (``Union[int, str] ==
    Union[str, int]``), so it may hand back an equal union created earlier in another order, and DSPy
    would then print ``Union[str, int]`` for ``int | str``. The alias is built directly instead, so a
    prompt never depends on which programs ran before in the process."""
    alias = getattr(typing, "_UnionGenericAlias", None)
    if alias is None or len(members) < 2:  # pragma: no cover - other Python versions
        return Union[members]  # noqa: UP007
    return alias(Union, members)


_STR = TypeExpr("str")
#: ``None`` inside a union while it is being built; never escapes :func:`_union`.
_NONE = TypeExpr("none")


def _is_literal_value(value: Any) -> bool:
    return type(value) in (str, int, float, bool) and not (type(value) is float and not math.isfinite(value))


def _literal_repr(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def _key_text(value: Any) -> str:
    """How a non-string dict key is written as a JSON object key (what pydantic's JSON mode writes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _union(members: list[TypeExpr], error: typing.Callable[[str], Exception] | None) -> TypeExpr:
    """Python's Union normalisation: flattened, duplicates dropped, order kept; ``None`` last."""
    flat: list[TypeExpr] = []
    has_none = False
    for member in members:
        if member is _NONE or member == _NONE:
            has_none = True
            continue
        if member.kind == "optional":
            has_none = True
            member = member.args[0]
        for item in member.args if member.kind == "union" else (member,):
            if item not in flat:
                flat.append(item)
    if not flat:
        raise (error or TypeError)("a union needs a type other than None")
    if any(t.kind == "history" for t in flat) and (len(flat) > 1 or has_none):
        raise (error or TypeError)("History cannot be part of a union or Optional")
    result = flat[0] if len(flat) == 1 else TypeExpr("union", tuple(flat))
    return TypeExpr("optional", (result,)) if has_none else result


def _dict(key: TypeExpr, value: TypeExpr, error: typing.Callable[[str], Exception] | None) -> TypeExpr:
    # JSON object keys are strings: pydantic reads "1" as an int key, but never as Literal[1]
    if key.kind not in (*SCALARS, "literal", "named", "enum") or (
            key.kind == "literal" and not all(isinstance(v, str) for v in key.args)):
        raise (error or TypeError)(
            f"dict keys must be str, int, float, bool, a Literal of strings or an enum, not {key}")
    return TypeExpr("dict", (value,) if key.kind == "str" else (value, key))


class _TypeParser:
    _token = re.compile(
        r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
        r"|(?P<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<punct>[\[\],|]))"
    )

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def _peek(self) -> tuple[str, str, int] | None:
        if self.pos >= len(self.text) or not self.text[self.pos:].strip():
            return None
        m = self._token.match(self.text, self.pos)
        if m is None or m.lastgroup is None:
            raise SignatureSyntaxError("unexpected character", self.text, self.pos)
        return m.lastgroup, m.group(m.lastgroup), m.end()

    def _next(self) -> tuple[str, str]:
        tok = self._peek()
        if tok is None:
            raise SignatureSyntaxError("unexpected end of type", self.text, len(self.text))
        self.pos = tok[2]
        return tok[0], tok[1]

    def _at(self, punct: str) -> bool:
        tok = self._peek()
        return tok is not None and tok[0] == "punct" and tok[1] == punct

    def _expect(self, punct: str) -> None:
        start = self.pos
        kind, value = self._next()
        if kind != "punct" or value != punct:
            raise SignatureSyntaxError(f"expected {punct!r}, found {value!r}", self.text, start)

    def _error(self, start: int) -> typing.Callable[[str], Exception]:
        return lambda message: SignatureSyntaxError(message, self.text, start)

    def parse(self) -> TypeExpr:
        start = self.pos
        result = self._type(0)
        if result is _NONE:
            raise SignatureSyntaxError("None is not a type on its own: use Optional[T]", self.text, start)
        if self._peek() is not None:
            raise SignatureSyntaxError("unexpected trailing text", self.text, self.pos)
        return result

    def _type(self, depth: int) -> TypeExpr:
        """``primary ('|' primary)*``: a union binds loosest."""
        start = self.pos
        members = [self._primary(depth)]
        while self._at("|"):
            self._next()
            members.append(self._primary(depth))
        if len(members) == 1:
            return members[0]
        return _union(members, self._error(start))

    def _items(self, depth: int) -> list[TypeExpr]:
        """``[T, T, ...]`` (at least one)."""
        self._expect("[")
        items = [self._type(depth + 1)]
        while self._at(","):
            self._next()
            items.append(self._type(depth + 1))
        self._expect("]")
        return items

    def _one(self, depth: int, what: str, start: int) -> TypeExpr:
        items = self._items(depth)
        if len(items) != 1:
            raise SignatureSyntaxError(f"{what}[...] takes one type, got {len(items)}", self.text, start)
        return self._not_none(items[0], start)

    def _not_none(self, t: TypeExpr, start: int) -> TypeExpr:
        if t is _NONE:
            raise SignatureSyntaxError("None is only allowed in Optional or a union", self.text, start)
        return t

    def _primary(self, depth: int) -> TypeExpr:
        if depth > MAX_TYPE_DEPTH:
            raise SignatureSyntaxError(f"type nested deeper than {MAX_TYPE_DEPTH}", self.text, self.pos)
        start = self.pos
        kind, name = self._next()
        if kind != "name":
            raise SignatureSyntaxError(f"expected a type name, found {name!r}", self.text, start)
        name = name.removeprefix("typing.")
        if name == "dspy.History":
            name = "History"
        if name in SCALARS:
            return TypeExpr(name)
        if name == "Any":
            return TypeExpr("any")
        if name == "History":
            return TypeExpr("history")
        if name in ("None", "NoneType"):
            return _NONE
        if name in ("list", "List"):
            return TypeExpr("list", (self._one(depth, name, start),))
        if name in ("dict", "Dict"):
            items = self._items(depth)
            if len(items) != 2:
                raise SignatureSyntaxError(f"{name}[K, V] takes two types, got {len(items)}", self.text, start)
            return _dict(self._not_none(items[0], start), self._not_none(items[1], start), self._error(start))
        if name in ("tuple", "Tuple"):
            return TypeExpr("tuple", tuple(self._not_none(t, start) for t in self._items(depth)))
        if name == "Optional":
            return _union([self._one(depth, name, start), _NONE], self._error(start))
        if name == "Union":
            return _union(self._items(depth), self._error(start))
        if name == "Literal":
            return self._literal_type(start)
        if TYPE_NAME.match(name) and name not in BUILTIN_TYPE_NAMES:
            if self._at("["):
                raise SignatureSyntaxError(f"unknown type {name!r}: a declared type takes no [parameters]",
                                           self.text, start)
            return TypeExpr("named", (name,))
        import difflib

        close = difflib.get_close_matches(name.lower()[:100], ["str", "int", "float", "bool", "list", "dict",
                                                               "tuple", "any", "optional", "union", "literal",
                                                               "history"], n=1, cutoff=0.6)
        hint = {"any": "Any", "optional": "Optional", "union": "Union", "literal": "Literal",
                "history": "History"}.get(close[0], close[0]) if close else None
        raise SignatureSyntaxError(
            f"unknown type {name!r}" + (f" (did you mean {hint}?)" if hint else "")
            + " (use str, int, float, bool, Any, list[T], dict[K, V], tuple[...], "
            "Literal[...], Optional[T], Union[...], History, or a type declared in the program's 'types' "
            "section: its name starts with an uppercase letter)", self.text, start)

    def _literal_type(self, start: int) -> TypeExpr:
        self._expect("[")
        values: list[Any] = [self._literal()]
        while self._at(","):
            self._next()
            values.append(self._literal())
        self._expect("]")
        if len(set(map(repr, values))) != len(values):
            raise SignatureSyntaxError("duplicate Literal value", self.text, start)
        return TypeExpr("literal", tuple(values))

    def _literal(self) -> Any:
        start = self.pos
        kind, value = self._next()
        if kind == "str":
            body = value[1:-1]
            return re.sub(r"\\(.)", r"\1", body)
        if kind == "num":
            number = float(value) if any(c in value for c in ".eE") else int(value)
            if isinstance(number, float) and not math.isfinite(number):
                raise SignatureSyntaxError("Literal numbers must be finite", self.text, start)
            return number
        if kind == "name" and value in ("True", "False"):
            return value == "True"
        raise SignatureSyntaxError(f"Literal values must be strings, numbers or booleans, found {value!r}",
                                   self.text, start)


_type_cache: dict[str, TypeExpr] = {}


def parse_type(text: str) -> TypeExpr:
    """Parse a type string such as ``list[str]``, ``int | None`` or ``Literal['yes', 'no']``."""
    cached = _type_cache.get(text)
    if cached is None:
        if len(text) > MAX_TYPE_LENGTH:
            raise SignatureSyntaxError("type string too long", text[:40] + "...")
        cached = _TypeParser(text).parse()
        if len(_type_cache) < 4096:
            _type_cache[text] = cached
    return cached


class FieldSpec(BaseModel):
    """One input or output field: a type, an optional description and, as DSPy prints them, constraints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = "str"
    desc: str | None = Field(default=None, max_length=20_000)
    constraints: str | None = Field(
        default=None, max_length=20_000,
        description="text printed under the field's description as DSPy prints a field's pydantic constraints "
                    "(`Constraints: greater than or equal to: 0, ...`); like DSPy, replies are not checked against it")

    @field_validator("type")
    @classmethod
    def _check_type(cls, value: str) -> str:
        return str(parse_type(value))

    @model_serializer(mode="wrap")
    def _serialize(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("constraints") is None:  # dumps as before it existed
            data.pop("constraints", None)
        return data

    @property
    def type_expr(self) -> TypeExpr:
        return parse_type(self.type)


def _split_top_level(text: str, sep: str = ",", *, brackets: bool = True) -> list[tuple[str, int]]:
    """Split on ``sep`` outside quotes (and brackets, if ``brackets``), keeping each part's start offset."""
    parts: list[tuple[str, int]] = []
    depth, quote, escaped, start = 0, "", False, 0
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif (depth == 0 or not brackets) and text.startswith(sep, i) and i >= start:
            parts.append((text[start:i], start))
            start = i + len(sep)
    parts.append((text[start:], start))
    return parts


def _parse_fields(text: str, offset: int, full: str) -> dict[str, FieldSpec]:
    fields: dict[str, FieldSpec] = {}
    if not text.strip():
        return fields
    for part, start in _split_top_level(text):
        name, _, type_text = part.partition(":")
        name = name.strip()
        pos = offset + start
        if not IDENTIFIER.match(name):
            raise SignatureSyntaxError(f"invalid field name {name!r}", full, pos)
        if name in fields:
            raise SignatureSyntaxError(f"duplicate field {name!r}", full, pos)
        try:
            type_str = str(parse_type(type_text.strip())) if type_text.strip() else "str"
        except SignatureSyntaxError as exc:
            raise SignatureSyntaxError(f"field {name!r}: {str(exc).split(' in ')[0]}", full, pos) from None
        fields[name] = FieldSpec(type=type_str)
    return fields


def parse_signature(text: str) -> Signature:
    """Parse DSPy's string form ``"a: list[str], b -> c: int"``."""
    if len(text) > 20_000:
        raise SignatureSyntaxError("signature string too long", text[:40] + "...")
    sides = _split_top_level(text, "->", brackets=False)  # not inside a Literal['a->b']
    if len(sides) != 2:
        raise SignatureSyntaxError("a signature needs exactly one '->'", text)
    left, right = sides[0][0], sides[1][0]
    inputs = _parse_fields(left, 0, text)
    outputs = _parse_fields(right, len(left) + 2, text)
    return Signature(inputs=inputs, outputs=outputs)


class Signature(BaseModel):
    """Inputs -> outputs with optional instructions. Accepts the string form or the long form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instructions: str | None = Field(default=None, max_length=200_000)
    inputs: dict[str, FieldSpec] = Field(default_factory=dict)
    outputs: dict[str, FieldSpec] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            sig = parse_signature(data)
            return {"inputs": sig.inputs, "outputs": sig.outputs}
        return data

    @model_validator(mode="after")
    def _check_names(self) -> Signature:
        for group in (self.inputs, self.outputs):
            for name in group:
                if not IDENTIFIER.match(name):
                    raise ValueError(f"invalid field name {name!r}")
        clash = set(self.inputs) & set(self.outputs)
        if clash:
            raise ValueError(f"field {sorted(clash)[0]!r} is both an input and an output")
        # DSPy turns a History input into chat turns: only an input whose whole type is History is one.
        histories = [name for name, f in self.inputs.items() if f.type_expr.kind == "history"]
        if len(histories) > 1:
            raise ValueError(f"at most one History input, got {', '.join(histories)}")
        for group, what in ((self.inputs, "input"), (self.outputs, "output")):
            for name, f in group.items():
                t = f.type_expr
                if (what == "output" or t.kind != "history") and any(s.kind == "history" for s in t.walk()):
                    raise ValueError(f"{what} field {name!r}: History is only the whole type of an input field")
        if not self.outputs:
            raise ValueError("a signature needs at least one output field")
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        # A file may spell a signature as the short string form too; the schema must accept both.
        return {"anyOf": [
            {"type": "string", "description": "short form, e.g. \"context: list[str], question -> answer\""},
            handler(core_schema),
        ]}

    @model_serializer(mode="wrap")
    def _serialize(self, handler: Any) -> Any:
        # Short form when nothing but names and types is set: the files stay readable.
        if self.instructions is None and all(
            f.desc is None and f.constraints is None for f in (*self.inputs.values(), *self.outputs.values())
        ):
            return self.to_string()
        return handler(self)

    def to_string(self) -> str:
        """The string form (``"question, k: int -> answer"``), without the instructions."""
        def side(fields: dict[str, FieldSpec]) -> str:
            return ", ".join(name if f.type == "str" else f"{name}: {f.type}" for name, f in fields.items())

        return f"{side(self.inputs)} -> {side(self.outputs)}"

    def canonical(self) -> dict[str, Any]:
        """The long form with every default spelled out: what the content hash sees."""
        def spec(f: FieldSpec) -> dict[str, Any]:  # constraints only when set: older files keep their hash
            return {"type": f.type, "desc": f.desc, **({"constraints": f.constraints} if f.constraints else {})}

        return {
            "instructions": self.instructions,
            "inputs": {k: spec(f) for k, f in self.inputs.items()},
            "outputs": {k: spec(f) for k, f in self.outputs.items()},
        }

    def with_instructions(self, instructions: str | None) -> Signature:
        """A copy with other instructions (signatures are immutable)."""
        return self.model_copy(update={"instructions": instructions})
