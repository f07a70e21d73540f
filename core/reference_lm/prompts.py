"""Reading DSPy-formatted requests: the signature a ChatAdapter/JSONAdapter/XMLAdapter system message
describes (:func:`parse_system_message` -> :class:`PromptSpec`) and the input values a user message
carries (:func:`input_values`).

This is the only module that knows DSPy's prompt layout; :mod:`.answers` and :mod:`.model` work on
the parsed :class:`PromptSpec`. A new field type DSPy prints (object types, enums, unions...) is
taught here, as a JSON schema on :attr:`PromptField.schema`, so the answer side needs no parsing.
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["PromptField", "PromptSpec", "input_values", "message_text", "parse_system_message"]

_INPUT_HDR = "Your input fields are:\n"
_OUTPUT_HDR = "\nYour output fields are:\n"
_STRUCT_HDR = "\nAll interactions will be structured in the following way, with the appropriate values filled in."
_TASK_HDR = "\nIn adhering to this structure, your objective is: "
_JSON_OUTPUTS_HDR = "Outputs will be a JSON object with the following fields.\n\n"
_NOTE = "        # note: the value you produce "
_CHAT_REMINDER = "\n\nRespond with the corresponding output fields, starting with the field "
_JSON_REMINDER = "\n\nRespond with a JSON object in the following order of fields: "
_XML_REMINDER = "\n\nRespond with the corresponding output fields wrapped in XML tags "
_CHAT_COMPLETED = "[[ ## completed ## ]]"
#: Largest XML skeleton (DSPy's nested-output structure) read into a schema.
_MAX_SKELETON = 20_000
_FIELD_LINE = re.compile(r"^\d+\. `([^`\n]+)` \(", re.MULTILINE)


@dataclass(frozen=True)
class PromptField:
    """One input or output field of the prompt: its name and a JSON schema of its type.

    ``nested`` (XML format only): the field is written as nested XML elements (a list, dict or object);
    its schema then comes from the XML skeleton DSPy prints, whose leaves carry no type."""

    name: str
    schema: Mapping[str, Any]
    nested: bool = False


@dataclass(frozen=True)
class PromptSpec:
    """The signature a DSPy-formatted system message describes, and which format it asks for."""

    format: str  # "chat" | "json" | "xml"
    inputs: tuple[PromptField, ...]
    outputs: tuple[PromptField, ...]


def _scan_annotation(text: str, start: int, escapes: bool = True) -> int:
    """Index of the ``)`` closing the annotation that starts at ``start`` (quote and bracket aware).

    DSPy escapes a quote inside a Literal value only when the value holds both kinds of quote, and never
    a backslash: ``escapes=False`` reads ``Literal['\\']`` (a lone backslash) as DSPy printed it."""
    depth = 0
    quote = ""
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == "\\" and escapes:
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "[(":
            depth += 1
        elif c in "])":
            if depth == 0:
                return i
            depth -= 1
        elif c == "\n":
            return -1
        i += 1
    return -1


def _field_list(section: str) -> list[tuple[str, str]]:
    """``[(name, annotation text)]`` from a "1. `name` (type): desc" list."""
    out: list[tuple[str, str]] = []
    for m in _FIELD_LINE.finditer(section):
        end = _scan_annotation(section, m.end())
        if end < 0:
            end = _scan_annotation(section, m.end(), escapes=False)
        if end < 0:
            continue
        out.append((m.group(1), section[m.end():end]))
    return out


class _UnknownType(Exception):
    pass


_SCALAR_SCHEMAS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
    "bool": {"type": "boolean"}, "NoneType": {"type": "null"}, "None": {"type": "null"},
    "Any": {}, "Reasoning": {"type": "string"}, "object": {},
}
_LIST_NAMES = {"list", "List", "set", "Set", "frozenset", "tuple", "Tuple", "Sequence"}


def _annotation_schema(node: ast.expr, lenient: bool = False) -> dict[str, Any]:
    """A JSON schema for a type annotation *text* DSPy printed; parsed with ``ast``, never evaluated.

    ``lenient``: an unknown name (a model, an enum) is ``{}`` instead of an error (used only to learn
    what pydantic's schema does not say: the key types of dicts)."""
    if isinstance(node, ast.Constant) and node.value is None:
        return {"type": "null"}
    if isinstance(node, ast.Attribute):
        node = ast.Name(id=node.attr)
    if isinstance(node, ast.Name):
        if node.id in _SCALAR_SCHEMAS:
            return dict(_SCALAR_SCHEMAS[node.id])
        if node.id in _LIST_NAMES:
            return {"type": "array", "items": {}}
        if node.id in ("dict", "Dict"):
            return {"type": "object"}
        if lenient:
            return {}
        raise _UnknownType(node.id)
    if isinstance(node, ast.Subscript):
        base = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Literal":
            return {"enum": [ast.literal_eval(a) for a in args]}
        if base in ("tuple", "Tuple") and not any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in args):
            return {"type": "array", "prefixItems": [_annotation_schema(a, lenient) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        if base in _LIST_NAMES:
            return {"type": "array", "items": _annotation_schema(args[0], lenient)}
        if base in ("dict", "Dict") and len(args) == 2:
            schema = {"type": "object", "additionalProperties": _annotation_schema(args[1], lenient)}
            key = _key_schema(args[0], lenient)
            if key is not None:
                schema["propertyNames"] = key
            return schema
        if base == "Optional":
            return {"anyOf": [_annotation_schema(args[0], lenient), {"type": "null"}]}
        if base == "Union":
            return {"anyOf": [_annotation_schema(a, lenient) for a in args]}
    if lenient:
        return {}
    raise _UnknownType(ast.dump(node))


def _key_schema(node: ast.expr, lenient: bool = False) -> dict[str, Any] | None:
    """What a dict's keys must look like when the annotation says more than pydantic's schema does."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
    if name in ("int", "float", "bool"):
        return {"type": {"int": "integer", "float": "number", "bool": "boolean"}[name]}
    if name == "str":
        return None
    return _annotation_schema(node, lenient)  # a Literal's values; an unknown name (an enum): _UnknownType


def _note_schema(note: str) -> dict[str, Any] | None:
    """The schema a ``# note: the value you produce ...`` comment states, when it states one."""
    if note.startswith("must adhere to the JSON schema: "):
        with contextlib.suppress(ValueError):
            value, _ = json.JSONDecoder().raw_decode(note, len("must adhere to the JSON schema: "))
            if isinstance(value, dict):
                return value
    elif note.startswith("must be one of: "):  # an Enum: its values, "; "-joined
        return {"enum": note[len("must be one of: "):].split("; ")}
    elif note.startswith("must be True or False"):
        return {"type": "boolean"}
    elif note.startswith("must be a single int value"):
        return {"type": "integer"}
    elif note.startswith("must be a single float value"):
        return {"type": "number"}
    return None


def _with_key_types(schema: Any, annotation: Any, depth: int = 0) -> Any:
    """``schema`` with the dict key types the annotation states (``dict[int, ...]`` at any depth)."""
    if depth > 16 or not isinstance(schema, dict) or not isinstance(annotation, dict):
        return schema
    out = dict(schema)
    if "propertyNames" in annotation and out.get("type") == "object" and "propertyNames" not in out:
        out["propertyNames"] = annotation["propertyNames"]
    for key in ("items", "additionalProperties"):
        if key in out and key in annotation:
            out[key] = _with_key_types(out[key], annotation[key], depth + 1)
    for key in ("anyOf", "prefixItems"):
        mine, theirs = out.get(key), annotation.get(key)
        if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
            out[key] = [_with_key_types(a, b, depth + 1) for a, b in zip(mine, theirs, strict=True)]
    return out


def _notes(fmt: str, structure: str, names: Sequence[str]) -> dict[str, str]:
    notes: dict[str, str] = {}
    if fmt == "xml":
        for name in names:
            marker = f"<{name}>\n{{{name}}}"
            i = structure.find(marker)
            if i >= 0 and structure.startswith(_NOTE, i + len(marker)):
                j = i + len(marker) + len(_NOTE)
                end = structure.find(f"\n</{name}>", j)
                notes[name] = structure[j: end if end >= 0 else len(structure)]
        return notes
    if fmt == "json":
        start = structure.find(_JSON_OUTPUTS_HDR)
        if start >= 0:
            try:
                obj, _ = json.JSONDecoder().raw_decode(structure, start + len(_JSON_OUTPUTS_HDR))
            except ValueError:
                obj = {}
            if isinstance(obj, dict):
                for name in names:
                    text = obj.get(name)
                    if isinstance(text, str):
                        _, sep, rest = text.partition(_NOTE)
                        if sep:
                            notes[name] = rest
        return notes
    for name in names:
        marker = f"[[ ## {name} ## ]]\n{{{name}}}"
        i = structure.find(marker)
        if i < 0:
            continue
        j = i + len(marker)
        if structure.startswith(_NOTE, j):
            end = structure.find("\n", j)
            notes[name] = structure[j + len(_NOTE): end if end >= 0 else len(structure)]
    return notes


@lru_cache(maxsize=2048)
def parse_system_message(text: str) -> PromptSpec | None:
    """The signature described by a DSPy ChatAdapter/JSONAdapter system message, or None.

    Cached by the message text: a program sends the same system message on every call.
    """
    start = text.find(_INPUT_HDR)
    if start < 0:
        return None
    mid = text.find(_OUTPUT_HDR, start)
    if mid < 0:
        return None
    end = text.find(_STRUCT_HDR, mid)
    if end < 0:
        return None
    task = text.rfind(_TASK_HDR)
    structure = text[end: task if task > end else len(text)]
    if ("\n" + _JSON_OUTPUTS_HDR) in structure:
        fmt = "json"
    elif _CHAT_COMPLETED in structure:
        fmt = "chat"
    else:
        fmt = "xml"
    inputs = _field_list(text[start + len(_INPUT_HDR): mid + 1])
    outputs = _field_list(text[mid + len(_OUTPUT_HDR): end + 1])
    if not outputs:
        return None
    notes = _notes(fmt, structure, [n for n, _ in outputs])
    skeletons = _xml_skeletons(structure, [n for n, _ in outputs]) if fmt == "xml" else {}

    def schema_for(name: str, annotation: str) -> dict[str, Any]:
        from_note = _note_schema(notes[name]) if name in notes else None
        from_annotation = lenient = None
        with contextlib.suppress(_UnknownType, SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
            # a Literal value may hold a line break or a control character, which DSPy prints as is
            text = re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], annotation.strip())
            try:
                tree = ast.parse(text, mode="eval").body
            except SyntaxError:  # a backslash DSPy printed unescaped
                tree = ast.parse(text.replace("\\", "\\\\"), mode="eval").body
            lenient = _annotation_schema(tree, lenient=True)
            from_annotation = _annotation_schema(tree)
        if name in skeletons:  # XML prints no schema for these: the annotation if it says it all, else the tags
            return from_annotation or skeletons[name]
        if from_note is not None and "enum" not in from_note:
            # pydantic's own schema: authoritative for nested and custom types; the annotation still
            # knows what a dict's keys are (pydantic's schema does not say it for int, float, bool)
            return _with_key_types(from_note, lenient) if lenient is not None else from_note
        return from_annotation or from_note or {"type": "string"}

    return PromptSpec(
        format=fmt,
        inputs=tuple(PromptField(n, {"type": "string"}) for n, _ in inputs),
        outputs=tuple(PromptField(n, schema_for(n, a), n in skeletons) for n, a in outputs),
    )


def _xml_skeletons(structure: str, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The outputs XMLAdapter writes as nested XML, each with a schema read from its skeleton
    (``<people><item><name>...</name></item></people>``): elements with children are objects, a lone
    ``item`` child is a list, leaves (``...``) are text, which the adapter's parser converts."""
    import xml.etree.ElementTree as ET

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        m = re.search(rf"(?:^|\n\n)(<{re.escape(name)}>(?:<|\.\.\.</))", structure)
        if m is None:
            continue
        start = m.start(1)
        end = structure.find(f"</{name}>", start)
        if end < 0 or end - start > _MAX_SKELETON:
            continue
        try:
            root = ET.fromstring(structure[start: end + len(name) + 3])
        except (ET.ParseError, RecursionError):
            continue
        out[name] = _skeleton_schema(root, 0)
    return out


def _skeleton_schema(element: Any, depth: int) -> dict[str, Any]:
    children = list(element)
    if depth > 16 or not children:
        return {"type": "object"} if depth == 0 else {}  # the field itself is a list, dict or object
    if len(children) == 1 and children[0].tag == "item":
        return {"type": "array", "items": _skeleton_schema(children[0], depth + 1)}
    return {"type": "object", "properties": {c.tag: _skeleton_schema(c, depth + 1) for c in children}}


def input_values(content: str, names: Sequence[str], fmt: str = "chat") -> dict[str, str]:
    """The input sections of a user message (``[[ ## name ## ]]``, or ``<name>...</name>`` in the XML
    format), for the given input names, in order."""
    if fmt == "xml":
        return _xml_input_values(content, names)
    found: list[tuple[str, int, int]] = []
    pos = 0
    for name in names:
        header = f"[[ ## {name} ## ]]"
        i = content.find(header + "\n", pos)
        if i < 0:
            i = content.find(header, pos)
            if i < 0 or i + len(header) != len(content.rstrip()):
                continue
        found.append((name, i, i + len(header)))
        pos = i + len(header)
    tail = len(content)
    for reminder in (_CHAT_REMINDER, _JSON_REMINDER):
        k = content.rfind(reminder, found[-1][2] if found else 0)
        if k >= 0:
            tail = min(tail, k)
    values: dict[str, str] = {}
    for idx, (name, _, vstart) in enumerate(found):
        vend = found[idx + 1][1] if idx + 1 < len(found) else tail
        values[name] = content[vstart:max(vstart, vend)].strip()
    return values



def _xml_input_values(content: str, names: Sequence[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    pos = 0
    tail = content.rfind(_XML_REMINDER)
    limit = tail if tail >= 0 else len(content)
    for name in names:
        opening, closing = f"<{name}>\n", f"\n</{name}>"
        i = content.find(opening, pos, limit)
        if i < 0:
            continue
        j = content.find(closing, i + len(opening), limit)
        if j < 0:
            continue
        values[name] = content[i + len(opening): j].strip()
        pos = j + len(closing)
    return values


def message_text(content: Any) -> str:
    """The text of an OpenAI message ``content`` (a string or a list of content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return "" if content is None else str(content)
