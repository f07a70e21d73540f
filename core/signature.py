"""Signatures: the typed inputs and outputs of a program or module, in DSPy's grammar.

``"context: list[str], question -> answer: int"``; an untyped field is ``str``. The long form
``{instructions, inputs: {name: {type, desc}}, outputs: {...}}`` is accepted too. Types are a
small closed set (str, int, float, bool, list[T], dict[str, T], Literal[...], Optional[T]) parsed
by hand: nothing here is ever evaluated or imported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

__all__ = ["FieldSpec", "Signature", "SignatureSyntaxError", "TypeExpr", "parse_signature", "parse_type"]

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
SCALARS = ("str", "int", "float", "bool")
MAX_TYPE_DEPTH = 8


class SignatureSyntaxError(ValueError):
    """A signature or type string does not follow the grammar; ``position`` is the character offset."""

    def __init__(self, message: str, text: str, position: int | None = None):
        where = f" at character {position}" if position is not None else ""
        super().__init__(f"{message}{where} in {text!r}")
        self.text = text
        self.position = position


@dataclass(frozen=True)
class TypeExpr:
    """A parsed field type. ``kind`` is a scalar name, ``list``, ``dict``, ``literal`` or ``optional``.

    Static checks of format 2 also use three kinds no signature spells: ``any`` (statically unknown:
    compatible with everything), ``never`` (the element type of an empty list literal ``[]``, which
    later bindings refine) and ``record`` (a step's result or a mapping literal: ``args`` holds
    ``(name, TypeExpr)`` pairs in order).
    """

    kind: str
    args: tuple[Any, ...] = ()

    def __str__(self) -> str:
        if self.kind in SCALARS:
            return self.kind
        if self.kind == "any":
            return "Any"
        if self.kind == "never":
            return "Never"
        if self.kind == "record":
            return "{" + ", ".join(f"{name}: {t}" for name, t in self.args) + "}"
        if self.kind == "list":
            return f"list[{self.args[0]}]"
        if self.kind == "dict":
            return f"dict[str, {self.args[0]}]"
        if self.kind == "optional":
            return f"Optional[{self.args[0]}]"
        return "Literal[" + ", ".join(_literal_repr(v) for v in self.args) + "]"

    # -- python typing ---------------------------------------------------------------------------
    def annotation(self) -> Any:
        """The equivalent Python annotation (what a DSPy signature would hold)."""
        if self.kind in SCALARS:
            return {"str": str, "int": int, "float": float, "bool": bool}[self.kind]
        if self.kind == "list":
            return list[self.args[0].annotation()]  # type: ignore[misc]
        if self.kind == "dict":
            return dict[str, self.args[0].annotation()]  # type: ignore[misc]
        if self.kind == "optional":
            return Optional[self.args[0].annotation()]  # noqa: UP045
        if self.kind in ("any", "never"):
            return Any
        if self.kind == "record":
            return dict[str, Any]
        return Literal[tuple(self.args)]

    @classmethod
    def from_annotation(cls, annotation: Any) -> TypeExpr:
        """Inverse of :meth:`annotation`, for tools and imported DSPy signatures."""
        import types
        import typing

        if annotation in (str, int, float, bool):
            return cls(annotation.__name__)
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is list and len(args) == 1:
            return cls("list", (cls.from_annotation(args[0]),))
        if origin is dict and len(args) == 2 and args[0] is str:
            return cls("dict", (cls.from_annotation(args[1]),))
        if origin is Literal:
            return cls("literal", tuple(args))
        if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
            inner = args[0] if args[1] is type(None) else args[1]
            return cls("optional", (cls.from_annotation(inner),))
        raise TypeError(f"unsupported type annotation {annotation!r}; use str, int, float, bool, "
                        "list[T], dict[str, T], Literal[...] or Optional[T]")

    # -- values ----------------------------------------------------------------------------------
    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (plain JSON data) is an instance of this type."""
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
        if k == "list":
            return isinstance(value, list) and all(self.args[0].accepts(v) for v in value)
        if k == "dict":
            return isinstance(value, dict) and all(
                isinstance(key, str) and self.args[0].accepts(v) for key, v in value.items()
            )
        if k == "optional":
            return value is None or self.args[0].accepts(value)
        if k == "any":
            return True
        if k == "never":
            return False
        if k == "record":
            return isinstance(value, dict) and all(name in value and t.accepts(value[name]) for name, t in self.args)
        return any(value == v and type(value) is type(v) for v in self.args)

    def assignable_to(self, target: TypeExpr) -> bool:
        """Whether every value of this type is a valid value of ``target`` (producer -> consumer)."""
        if self.kind in ("any", "never") or target.kind == "any":
            return True
        if target.kind == "never":
            return False
        if self.kind == "record":
            if target.kind == "record":
                mine = dict(self.args)
                return all(name in mine and mine[name].assignable_to(t) for name, t in target.args)
            if target.kind == "dict":
                return all(t.assignable_to(target.args[0]) for _, t in self.args)
            return False
        if target.kind == "optional":
            inner = target.args[0]
            return (_is_none(self) or self.assignable_to(inner)
                    or (self.kind == "optional" and self.args[0].assignable_to(inner)))
        if self.kind == "optional":
            return False
        if self.kind == "literal":
            return all(target.accepts(v) for v in self.args)
        if target.kind == "float" and self.kind == "int":
            return True
        if target.kind == "str" and self.kind in SCALARS:
            # DSPy renders any scalar as text in a str field; treat as compatible.
            return True
        if self.kind != target.kind:
            return False
        if self.kind in ("list", "dict"):
            return bool(self.args[0].assignable_to(target.args[0]))
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
        if a.kind == b.kind == "list" or a.kind == b.kind == "dict":
            inner = a.args[0].join(b.args[0])
            return TypeExpr(a.kind, (inner,)) if inner is not None else None
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


def _literal_repr(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


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

    def _expect(self, punct: str) -> None:
        start = self.pos
        kind, value = self._next()
        if kind != "punct" or value != punct:
            raise SignatureSyntaxError(f"expected {punct!r}, found {value!r}", self.text, start)

    def parse(self) -> TypeExpr:
        result = self._type(0)
        if self._peek() is not None:
            raise SignatureSyntaxError("unexpected trailing text", self.text, self.pos)
        return result

    def _type(self, depth: int) -> TypeExpr:
        if depth > MAX_TYPE_DEPTH:
            raise SignatureSyntaxError(f"type nested deeper than {MAX_TYPE_DEPTH}", self.text, self.pos)
        start = self.pos
        kind, name = self._next()
        if kind != "name":
            raise SignatureSyntaxError(f"expected a type name, found {name!r}", self.text, start)
        name = name.removeprefix("typing.")
        result: TypeExpr
        if name in SCALARS:
            result = TypeExpr(name)
        elif name in ("list", "List"):
            self._expect("[")
            inner = self._type(depth + 1)
            self._expect("]")
            result = TypeExpr("list", (inner,))
        elif name in ("dict", "Dict"):
            self._expect("[")
            key = self._type(depth + 1)
            if key.kind != "str":
                raise SignatureSyntaxError("dict keys must be str", self.text, start)
            self._expect(",")
            inner = self._type(depth + 1)
            self._expect("]")
            result = TypeExpr("dict", (inner,))
        elif name == "Optional":
            self._expect("[")
            inner = self._type(depth + 1)
            self._expect("]")
            result = inner if inner.kind == "optional" else TypeExpr("optional", (inner,))
        elif name == "Literal":
            self._expect("[")
            values: list[Any] = [self._literal()]
            while True:
                tok = self._peek()
                if tok and tok[1] == ",":
                    self._next()
                    values.append(self._literal())
                    continue
                break
            self._expect("]")
            if len(set(map(repr, values))) != len(values):
                raise SignatureSyntaxError("duplicate Literal value", self.text, start)
            result = TypeExpr("literal", tuple(values))
        else:
            raise SignatureSyntaxError(
                f"unknown type {name!r} (use str, int, float, bool, list[T], dict[str, T], "
                "Literal[...], Optional[T])", self.text, start)
        tok = self._peek()
        if tok and tok[1] == "|":  # ``T | None``
            self._next()
            none_start = self.pos
            kind, value = self._next()
            if value != "None":
                raise SignatureSyntaxError("only 'T | None' unions are supported", self.text, none_start)
            result = result if result.kind == "optional" else TypeExpr("optional", (result,))
        return result

    def _literal(self) -> Any:
        start = self.pos
        kind, value = self._next()
        if kind == "str":
            body = value[1:-1]
            return re.sub(r"\\(.)", r"\1", body)
        if kind == "num":
            return float(value) if any(c in value for c in ".eE") else int(value)
        if kind == "name" and value in ("True", "False"):
            return value == "True"
        raise SignatureSyntaxError(f"Literal values must be strings, numbers or booleans, found {value!r}",
                                   self.text, start)


_type_cache: dict[str, TypeExpr] = {}


def parse_type(text: str) -> TypeExpr:
    """Parse a type string such as ``list[str]`` or ``Literal['yes', 'no']``."""
    cached = _type_cache.get(text)
    if cached is None:
        if len(text) > 2000:
            raise SignatureSyntaxError("type string too long", text[:40] + "...")
        cached = _TypeParser(text).parse()
        if len(_type_cache) < 4096:
            _type_cache[text] = cached
    return cached


class FieldSpec(BaseModel):
    """One input or output field: a type and an optional description."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = "str"
    desc: str | None = Field(default=None, max_length=20_000)

    @field_validator("type")
    @classmethod
    def _check_type(cls, value: str) -> str:
        return str(parse_type(value))

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
            f.desc is None for f in (*self.inputs.values(), *self.outputs.values())
        ):
            return self.to_string()
        return handler(self)

    def to_string(self) -> str:
        def side(fields: dict[str, FieldSpec]) -> str:
            return ", ".join(name if f.type == "str" else f"{name}: {f.type}" for name, f in fields.items())

        return f"{side(self.inputs)} -> {side(self.outputs)}"

    def canonical(self) -> dict[str, Any]:
        """The long form with every default spelled out: what the content hash sees."""
        return {
            "instructions": self.instructions,
            "inputs": {k: {"type": f.type, "desc": f.desc} for k, f in self.inputs.items()},
            "outputs": {k: {"type": f.type, "desc": f.desc} for k, f in self.outputs.items()},
        }

    def with_instructions(self, instructions: str | None) -> Signature:
        return self.model_copy(update={"instructions": instructions})
