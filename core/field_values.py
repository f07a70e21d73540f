"""Field values as DSPy 3.4.1 writes them into prompts and reads them back from LM replies.

The pieces of ``dspy/adapters/utils.py`` every adapter format shares, reproduced without importing
dspy: how a type is named in a prompt (``get_annotation_name``), the type note of an output field
(``translate_field_type``), how a value is rendered (``format_field_value``) and how a reply's text
becomes a typed value (``parse_value``). They work on Python annotations, so declared object types
and enums go through pydantic exactly as a hand-written DSPy signature's models would.

stepbridge moves plain JSON between steps; :class:`FieldType` converts at the module boundary: a
typed input becomes the Python value a DSPy user would pass (a model instance, an ``Enum`` member, a
tuple) before it is rendered, and a parsed output becomes JSON data again (pydantic's JSON mode).
"""

from __future__ import annotations

import ast
import enum
import json
import math
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import TypeAdapter

from .signature import TypeExpr

__all__ = [
    "FieldType",
    "annotation_name",
    "find_enum_member",
    "format_value",
    "jsonable",
    "output_type_note",
]

#: Kinds whose parsed Python values are not JSON data as they are (models, members, tuples, typed keys).
_CONVERTED_KINDS = frozenset({"object", "enum", "tuple", "history"})


# ------------------------------------------------------------------------------------------------
# Names and notes
# ------------------------------------------------------------------------------------------------
def annotation_name(annotation: Any) -> str:
    """``get_annotation_name``: how DSPy spells a type in prompts (``Union[int, NoneType]``)."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is types.UnionType:
        origin = Union
    if origin is None:
        if hasattr(annotation, "__name__"):
            return str(annotation.__name__)
        return str(annotation)
    if origin is Literal:
        args_str = ", ".join(
            _quoted_literal(a) if isinstance(a, str) else annotation_name(a) for a in args
        )
    else:
        args_str = ", ".join(annotation_name(a) for a in args)
    return f"{annotation_name(origin)}[{args_str}]"


def _quoted_literal(s: str) -> str:
    has_single, has_double = "'" in s, '"' in s
    if has_single and not has_double:
        return f'"{s}"'
    if has_double and not has_single:
        return f"'{s}'"
    if has_single and has_double:
        escaped = s.replace("'", "\\'")
        return f"'{escaped}'"
    return f"'{s}'"


def _move_type_to_front(d: Any) -> Any:
    if isinstance(d, Mapping):
        items = sorted(d.items(), key=lambda it: (it[0] != "type", it[0]))
        return {k: _move_type_to_front(v) for k, v in items}
    if isinstance(d, list):
        return [_move_type_to_front(item) for item in d]
    return d


def _is_enum_class(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, enum.Enum)


def output_type_note(name: str, annotation: Any) -> str:
    """``translate_field_type`` for an output field: ``{name}`` plus the type note."""
    if annotation is str:
        desc = ""
    elif annotation is bool:
        desc = "must be True or False"
    elif annotation in (int, float):
        desc = f"must be a single {annotation.__name__} value"
    elif _is_enum_class(annotation):
        desc = f"must be one of: {'; '.join(str(member.value) for member in annotation)}"
    elif get_origin(annotation) is Literal:
        choices = "; ".join(str(x) for x in get_args(annotation))
        desc = f"must exactly match (no extra characters) one of: {choices}"
    else:
        schema = _move_type_to_front(TypeAdapter(annotation).json_schema())
        desc = f"must adhere to the JSON schema: {json.dumps(schema, ensure_ascii=False)}"
    note = (" " * 8) + f"# note: the value you produce {desc}" if desc else ""
    return f"{{{name}}}{note}"


def allows_none(annotation: Any) -> bool:
    """``annotation_allows_none``: a missing output of such a field is ``None``."""
    if annotation is None or annotation is type(None):
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return any(allows_none(a) for a in get_args(annotation))
    return False


# ------------------------------------------------------------------------------------------------
# Values -> text (format_field_value)
# ------------------------------------------------------------------------------------------------
_dump_adapters: dict[type, TypeAdapter[Any]] = {}


def _is_plain(value: Any) -> bool:
    """JSON-shaped data that pydantic's ``dump_python(mode="json")`` returns unchanged.

    Non-finite floats are not: pydantic turns them into ``None`` inside containers.
    """
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return True
    if t is float:
        return math.isfinite(value)
    if t is list:
        return all(_is_plain(v) for v in value)
    if t is dict:
        return all(type(k) is str and _is_plain(v) for k, v in value.items())
    return False


def jsonable(value: Any) -> Any:
    """``serialize_for_json``, with a fast path for plain JSON data."""
    if type(value) is float or _is_plain(value):  # a bare float (even inf/nan) is kept as is
        return value
    try:
        adapter = _dump_adapters.get(type(value))
        if adapter is None:
            adapter = TypeAdapter(type(value))
            if len(_dump_adapters) < 512:
                _dump_adapters[type(value)] = adapter
        return adapter.dump_python(value, mode="json", fallback=str)
    except Exception:
        return str(value)


def format_blob(blob: Any) -> str:
    if "\n" not in blob and "«" not in blob and "»" not in blob:
        return f"«{blob}»"
    modified = blob.replace("\n", "\n    ")
    return f"«««\n    {modified}\n»»»"


def format_value(value: Any, str_field: bool) -> str:
    """How DSPy renders a field value; ``str_field`` when the field's type is ``str``."""
    if type(value) is str:
        return value
    if isinstance(value, list) and str_field:
        if len(value) == 0:
            return "N/A"
        if len(value) == 1:
            return format_blob(value[0])
        return "\n".join(f"[{i + 1}] {format_blob(v)}" for i, v in enumerate(value))
    value = jsonable(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# ------------------------------------------------------------------------------------------------
# Text -> values (parse_value)
# ------------------------------------------------------------------------------------------------
#: The longest invalid-JSON text handed to ``json_repair``. LM replies are untrusted and json_repair is
#: quadratic on some texts (32 KB of ``["`` take ~20 s of CPU, blocking the event loop); a longer text
#: is treated as unrepairable (``""``, what json_repair answers for prose), where DSPy would repair it.
MAX_REPAIR_CHARS = 4096


def json_repair_loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError, ValueError, RecursionError):
        pass
    if len(text) > MAX_REPAIR_CHARS:
        return ""
    import json_repair  # DSPy's exact leniency; only reached for invalid JSON

    try:
        return json_repair.loads(text, skip_json_loads=True)
    except RecursionError:  # nesting deeper than the interpreter allows: nothing to repair
        return ""


def find_enum_member(enum_cls: Any, identifier: Any) -> Any:
    """DSPy's ``find_enum_member``: by value first, then by member name."""
    for member in enum_cls:
        if member.value == identifier:
            return member
    if isinstance(identifier, str) and identifier in enum_cls.__members__:
        return enum_cls[identifier]
    raise ValueError(f"{identifier} is not a valid name or value for the enum {enum_cls.__name__}")


_MISSING = object()
_MEMO_TEXT, _MEMO_SIZE = 64, 512  # per field: bounded, whatever an LM answers
_IMMUTABLE = frozenset({bool, int, float, str, type(None)})


class FieldType:
    """A field's resolved type with what formatting and parsing need, computed once per prompt."""

    __slots__ = ("_parsed", "adapter", "allowed", "annotation", "converted", "expr", "is_enum", "is_literal",
                 "is_str", "optional_str")

    def __init__(self, expr: TypeExpr):
        self.expr = expr
        self.annotation: Any = expr.annotation()
        self.is_str = self.annotation is str
        self.is_enum = _is_enum_class(self.annotation)
        self.is_literal = get_origin(self.annotation) is Literal
        self.allowed: tuple[Any, ...] = get_args(self.annotation) if self.is_literal else ()
        args = get_args(self.annotation)
        self.optional_str = (
            get_origin(self.annotation) in (Union, types.UnionType) and type(None) in args and str in args
        )
        self.adapter: TypeAdapter[Any] | None = None if self.is_str else TypeAdapter(self.annotation)
        #: whether values need converting between JSON data and Python values (models, enums, tuples, keys)
        self.converted = any(
            t.kind in _CONVERTED_KINDS or (t.kind == "dict" and t.key.kind != "str") for t in expr.walk())
        #: short texts already parsed to an immutable scalar: ``True`` as a bool costs a failed json.loads,
        #: json_repair and ast.literal_eval, and an LM answers the same few texts over and over
        self._parsed: dict[str, Any] = {}

    def parse(self, value: Any) -> Any:
        """``dspy.adapters.utils.parse_value``: the Python value (raises ``ValueError``)."""
        if self.is_str:
            return str(value)
        if type(value) is str and len(value) <= _MEMO_TEXT:
            known = self._parsed.get(value, _MISSING)
            if known is not _MISSING:
                return known
            parsed = self._parse(value)
            if type(parsed) in _IMMUTABLE and len(self._parsed) < _MEMO_SIZE:
                self._parsed[value] = parsed
            return parsed
        return self._parse(value)

    def _parse(self, value: Any) -> Any:
        assert self.adapter is not None
        if self.is_enum:
            return find_enum_member(self.annotation, value)
        if self.is_literal:
            allowed = self.allowed
            if value in allowed:
                return value
            if isinstance(value, str):
                v = value.strip()
                if v.startswith(("Literal[", "str[")) and v.endswith("]"):
                    v = v[v.find("[") + 1 : -1]
                if len(v) > 1 and v[0] == v[-1] and v[0] in "\"'":
                    v = v[1:-1]
                if v in allowed:
                    return v
                value = v
        if not isinstance(value, str):
            return self.adapter.validate_python(value)
        if self.optional_str:
            return self.adapter.validate_python(value)
        candidate = json_repair_loads(value)
        if candidate == "" and value != "":
            try:
                candidate = ast.literal_eval(value)
            except (ValueError, SyntaxError, RecursionError, MemoryError):
                candidate = value
        return self.adapter.validate_python(candidate)

    def to_json(self, value: Any) -> Any:
        """A parsed (Python) value as JSON data: what stepbridge passes on and records."""
        if not self.converted or self.adapter is None:
            return value
        return self.adapter.dump_python(value, mode="json")

    def to_python(self, value: Any) -> Any:
        """JSON data as the Python value a DSPy user would pass for this field (raises ``ValueError``)."""
        if not self.converted or self.adapter is None or self.expr.kind == "history":
            return value
        return self.adapter.validate_python(value)
