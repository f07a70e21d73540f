"""DSPy 3.4.1's XMLAdapter format, reproduced without importing dspy.

Fields are wrapped in tags (``<answer>\\n...\\n</answer>``); outputs whose type is a list, a dict or an
object type are written and read as nested XML (``<person><name>...</name></person>``), guided by
the field's JSON schema; a ``str`` output has ``&`` and ``<`` escaped. Replies are parsed with the
standard library's ElementTree inside a ``<dspy_root>`` element, as DSPy does (a reply cannot carry a
DTD there, so no entity can expand). Where DSPy lets a ``RecursionError`` escape (XML nested deeper
than Python's stack), :meth:`Prompt.parse <stepbridge.formats.Prompt.parse>` raises ``LMParseError``.
"""

from __future__ import annotations

import types
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin
from xml.sax.saxutils import quoteattr

import pydantic
from pydantic import TypeAdapter

from .field_values import FieldType, format_value, jsonable, output_type_note

__all__ = ["XMLParseError", "field_structure", "field_with_value", "output_requirements", "parse_fields"]

_STRUCTURE_INTRO = (
    "All interactions will be structured in the following way, with the appropriate values filled in."
)


class XMLParseError(ValueError):
    """A reply that is not XML, or a field that does not convert; ``message`` is DSPy's wording."""


def uses_nested_xml(annotation: Any) -> bool:
    """``XMLAdapter._uses_nested_xml``: lists, dicts and models are written as nested elements."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if len(args) == 1 and get_origin(annotation) in (Union, types.UnionType):
        annotation = args[0]
    origin = get_origin(annotation)
    item = get_args(annotation)[0] if origin is list and get_args(annotation) else annotation
    is_dspy_model = (
        isinstance(item, type) and issubclass(item, pydantic.BaseModel) and item.__module__.startswith("dspy.")
    )
    return not is_dspy_model and (
        origin in (list, dict) or (isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel))
    )


def field_with_value(name: str, field: FieldType, value: Any, is_output: bool) -> str:
    """One field of ``format_field_with_value``."""
    serialized = jsonable(value)
    if is_output and uses_nested_xml(field.annotation) and isinstance(serialized, dict | list):
        return value_to_xml(serialized, name)
    formatted = format_value(value, field.is_str)
    if is_output and field.is_str:
        formatted = formatted.replace("&", "&amp;").replace("<", "&lt;")
    return f"<{name}>\n{formatted}\n</{name}>"


def fields_with_values(fields: Mapping[str, FieldType], values: Mapping[str, Any], is_output: bool) -> str:
    return "\n\n".join(field_with_value(n, fields[n], v, is_output) for n, v in values.items()).strip()


def field_structure(inputs: Mapping[str, FieldType], outputs: Mapping[str, FieldType]) -> str:
    """``XMLAdapter.format_field_structure`` (the middle of the system message)."""

    def one(name: str, field: FieldType, is_output: bool) -> str:
        if is_output and uses_nested_xml(field.annotation):
            return xml_schema(name, field.annotation)
        note = output_type_note(name, field.annotation) if is_output else f"{{{name}}}"
        return field_with_value(name, field, note, is_output)

    blocks = ("\n\n".join(one(n, f, is_output) for n, f in group.items())
              for group, is_output in ((inputs, False), (outputs, True)))
    return "\n\n".join((_STRUCTURE_INTRO, *blocks))


def output_requirements(outputs: Mapping[str, FieldType]) -> str:
    """``XMLAdapter.user_message_output_requirements``."""
    names = ", then ".join(f"`<{name}>`" for name in outputs)
    schemas = [xml_schema(name, f.annotation) for name, f in outputs.items() if uses_nested_xml(f.annotation)]
    return f"Respond with the corresponding output fields wrapped in XML tags {names}." + (
        f" Use this nested XML structure: {' '.join(schemas)}" if schemas else ""
    )


# -- values as XML ---------------------------------------------------------------------------------
def value_to_xml(value: Any, tag: str, key: str | None = None) -> str:
    attrs = f" key={quoteattr(key)}" if key is not None else ""
    if isinstance(value, list):
        children = "".join(value_to_xml(item, "item") for item in value)
        return f"<{tag}{attrs}>{children}</{tag}>" if children else f"<{tag}{attrs} />"
    if isinstance(value, dict):
        parts = []
        for name, child in value.items():
            name = str(name)
            valid_name = (name[:1] + name[1:].replace("-", "_").replace(".", "_")).isidentifier()
            parts.append(value_to_xml(child, name) if valid_name else value_to_xml(child, "entry", name))
        return f"<{tag}{attrs}>{''.join(parts)}</{tag}>"
    return (
        f"<{tag}{attrs}>{str(value).replace('&', '&amp;').replace('<', '&lt;')}</{tag}>"
        if value is not None
        else f"<{tag}{attrs} />"
    )


def xml_schema(tag: str, annotation: Any) -> str:
    schema = TypeAdapter(annotation).json_schema(by_alias=False)
    return _schema_to_xml(tag, schema, schema.get("$defs", {}), frozenset())


def _schema_to_xml(tag: str, schema: dict[str, Any], definitions: dict[str, Any], seen: frozenset[str]) -> str:
    if ref := schema.get("$ref"):
        name = ref.rsplit("/", 1)[-1]
        return (
            f"<{tag}>...</{tag}>"
            if name in seen
            else _schema_to_xml(tag, definitions[name], definitions, seen | {name})
        )
    if choices := schema.get("anyOf"):
        return _schema_to_xml(
            tag, next((s for s in choices if s.get("type") != "null"), choices[0]), definitions, seen
        )
    if schema.get("type") == "array":
        item = _schema_to_xml("item", schema.get("items", {}), definitions, seen)
        return f"<{tag}>{item}</{tag}>"
    children = "".join(
        _schema_to_xml(name, child, definitions, seen) for name, child in schema.get("properties", {}).items()
    )
    return f"<{tag}>{children}</{tag}>" if children else f"<{tag}>...</{tag}>"


# -- XML -> values ---------------------------------------------------------------------------------
def parse_fields(completion: str, outputs: Mapping[str, FieldType]) -> dict[str, Any]:
    """``XMLAdapter.parse`` up to the field values (Python values; raises :class:`XMLParseError`)."""
    try:
        root = ET.fromstring(f"<dspy_root>{completion}</dspy_root>")
    except ET.ParseError as exc:
        raise XMLParseError(f"Failed to parse XML: {exc}") from exc
    elements = _group_children(root)
    fields: dict[str, Any] = {}
    for name, field in outputs.items():
        if name not in elements:
            continue
        adapter = field.adapter or TypeAdapter(str)
        schema = adapter.json_schema(by_alias=False)
        value = None
        error: Exception | None = None
        for candidate in [schema, *schema.get("anyOf", [])]:
            try:
                value = _elements_to_value(elements[name], candidate, schema.get("$defs", {}))
                try:
                    fields[name] = field.parse(value)
                except pydantic.ValidationError:
                    fields[name] = adapter.validate_python(value, by_name=True)
                break
            except ValueError as exc:
                error = exc
        else:
            raise XMLParseError(f"Failed to parse field {name} with value {value}: {error}") from error
    return fields


def _elements_to_value(elements: list[ET.Element], schema: dict[str, Any], definitions: dict[str, Any]) -> Any:
    schema = definitions.get(schema.get("$ref", "").rsplit("/", 1)[-1], schema)
    if choices := schema.get("anyOf"):
        if {"type": "null"} in choices and not list(elements[0]) and not (elements[0].text or "").strip():
            return None
        choices = [choice for choice in choices if choice.get("type") != "null"]
        schema = choices[0]
        if list(elements[0]):
            schema = next((choice for choice in choices if choice.get("type") != "string"), schema)
    if schema.get("type") == "array":
        if len(elements) == 1 and not list(elements[0]):
            text = (elements[0].text or "").strip()
            if not text or text.startswith("["):
                return text if text else []
        if len(elements) == 1 and (items := _group_children(elements[0]).get("item")):
            elements = items
        return [_elements_to_value([element], schema.get("items", {}), definitions) for element in elements]
    element = elements[0]
    if schema.get("type") == "string" and list(element):
        return (element.text or "") + "".join(ET.tostring(child, encoding="unicode") for child in element)
    children = _group_children(element)
    if not children:
        if schema.get("type") == "object" and not (element.text or "").strip():
            return {}
        values = [(element.text or "").strip() for element in elements]
        return values[0] if len(values) == 1 else values
    properties = schema.get("properties", {})
    child_schema = schema.get("additionalProperties", {})
    if not isinstance(child_schema, dict):
        child_schema = {}
    return {
        name: _elements_to_value(items, properties.get(name, child_schema), definitions)
        for name, items in children.items()
    }


def _group_children(element: ET.Element) -> dict[str, list[ET.Element]]:
    children: dict[str, list[ET.Element]] = defaultdict(list)
    for child in element:
        children[child.attrib.get("key", child.tag) if child.tag == "entry" else child.tag].append(child)
    return children
