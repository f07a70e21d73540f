"""The deterministic model (:class:`ReferenceModel`): parse the prompt (:mod:`.prompts`), digest the
inputs (:mod:`.facts`), build each output value (:mod:`.answers`), render in the requested format.

Callable in-process (``model.complete(messages)``) as the native adapter does when no endpoint is
configured, and behind the HTTP app (:mod:`.app`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .agents import agent_values
from .answers import ValueGenerator
from .facts import Facts
from .prompts import PromptField, input_values, message_text, parse_system_message

__all__ = ["ReferenceModel", "render_chat", "render_xml"]

_MARKER_FIX = re.compile(r"\[\[ ## (\w+) ## \]\]")


def render_chat(outputs: Sequence[PromptField], values: Mapping[str, Any]) -> str:
    """Output values as ChatAdapter sections (``[[ ## name ## ]]``), ending with ``completed``."""
    parts = []
    for spec in outputs:
        v = values[spec.name]
        if isinstance(v, str):
            text = _MARKER_FIX.sub(r"[ ## \1 ## ]", v)
        elif isinstance(v, bool) or v is None:
            text = str(v)
        else:
            text = json.dumps(v, ensure_ascii=False)
        parts.append(f"[[ ## {spec.name} ## ]]\n{text}")
    return "\n\n".join(parts) + "\n\n[[ ## completed ## ]]\n"


def _xml_text(value: Any) -> str:
    return str(value).replace("&", "&amp;").replace("<", "&lt;")


def _value_to_xml(value: Any, tag: str, key: str | None = None) -> str:
    """A value as DSPy's XMLAdapter writes nested outputs (``<item>`` per list element, ``<entry key=..>``
    for keys that are not XML names)."""
    from xml.sax.saxutils import quoteattr

    attrs = f" key={quoteattr(key)}" if key is not None else ""
    if isinstance(value, list):
        children = "".join(_value_to_xml(item, "item") for item in value)
        return f"<{tag}{attrs}>{children}</{tag}>" if children else f"<{tag}{attrs} />"
    if isinstance(value, dict):
        parts = []
        for name, child in value.items():
            name = str(name)
            valid = (name[:1] + name[1:].replace("-", "_").replace(".", "_")).isidentifier()
            parts.append(_value_to_xml(child, name) if valid else _value_to_xml(child, "entry", name))
        return f"<{tag}{attrs}>{''.join(parts)}</{tag}>"
    return f"<{tag}{attrs}>{_xml_text(value)}</{tag}>" if value is not None else f"<{tag}{attrs} />"


def render_xml(outputs: Sequence[PromptField], values: Mapping[str, Any]) -> str:
    """Output values as XMLAdapter fields: ``<name>\nvalue\n</name>``, nested elements for lists,
    dicts and objects."""
    parts = []
    for spec in outputs:
        v = values[spec.name]
        if spec.nested and isinstance(v, dict | list):
            parts.append(_value_to_xml(v, spec.name))
            continue
        if isinstance(v, str):
            text = _xml_text(v)
        elif v is None:
            text = ""  # an empty element is None to the XML parser
        elif isinstance(v, bool):
            text = str(v)
        else:
            text = _xml_text(json.dumps(v, ensure_ascii=False))
        parts.append(f"<{spec.name}>\n{text}\n</{spec.name}>")
    return "\n\n".join(parts)


class ReferenceModel:
    """The deterministic model: reads a DSPy-formatted prompt, answers in the requested format.

    ``complete`` is pure (same messages, same answer) and cheap: the system message parse is cached
    by its text and whole answers by (system, last user message, response format).
    """

    def __init__(self, cache_size: int = 4096):
        self._cache: dict[tuple[str, str, str], str] = {}
        self._cache_size = cache_size

    def complete(self, messages: Sequence[Mapping[str, Any]], *, response_format: Any = None) -> str:
        system, user = _system_and_user(messages)
        rf_key = "" if response_format is None else json.dumps(response_format, sort_keys=True, default=str)
        key = (system, user, rf_key)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        answer = self._answer(system, user, response_format)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = answer
        return answer

    __call__ = complete

    def complete_off_type(self, messages: Sequence[Mapping[str, Any]], *, off: str,
                          response_format: Any = None) -> str:
        """An answer in the requested format whose ``off`` values are off their type: ``"literal"`` puts a
        value outside each Literal/enum set, ``"number"`` words where an int or float belongs. What a careless
        LM answers; a conformant adapter refuses it (a parse error), never accepts or coerces it."""
        system, user = _system_and_user(messages)
        return self._answer(system, user, response_format, off=off)

    def prompt_format(self, messages: Sequence[Mapping[str, Any]]) -> str | None:
        """``"chat"`` or ``"json"``: the DSPy format the request's system message asks for (None: not DSPy's)."""
        system, _ = _system_and_user(messages)
        spec = parse_system_message(system) if system else None
        return spec.format if spec is not None else None

    def _answer(self, system: str, user: str, response_format: Any, off: str | None = None) -> str:
        spec = parse_system_message(system) if system else None
        rf_type = response_format.get("type") if isinstance(response_format, Mapping) else None
        if spec is None:
            facts = Facts.from_values({"input": user})
            schema = _response_schema(response_format)
            if schema is not None:
                return json.dumps(ValueGenerator(facts, schema).value(schema, "output"), ensure_ascii=False)
            if rf_type == "json_object":
                return json.dumps({"answer": facts.first_sentence()}, ensure_ascii=False)
            return facts.first_sentence()
        values = agent_values(spec, system, user)  # ReAct, MultiChainComparison, Refine's advice
        if values is None:
            facts = Facts.from_values(input_values(user, [f.name for f in spec.inputs], spec.format))
            values = {out.name: ValueGenerator(facts, out.schema).value(out.schema, out.name) for out in spec.outputs}
        if off is not None:
            values = {out.name: _off_type(out.schema, values[out.name], off) for out in spec.outputs}
        if spec.format == "json" or rf_type in ("json_object", "json_schema"):
            return json.dumps(values, indent=2, ensure_ascii=False)
        if spec.format == "xml":
            return render_xml(spec.outputs, values)
        return render_chat(spec.outputs, values)


def _system_and_user(messages: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """The first system (or developer) message and the last user message, as text."""
    system = ""
    user = ""
    for m in messages:
        role = m.get("role")
        if role in ("system", "developer") and not system:
            system = message_text(m.get("content"))
        elif role == "user":
            user = message_text(m.get("content"))
    return system, user


def _off_type(schema: Any, value: Any, off: str, depth: int = 0) -> Any:
    """``value`` with every ``off`` ("literal"/"number") part replaced by a value of the wrong kind."""
    if not isinstance(schema, Mapping) or depth > 8:
        return value
    if off == "literal" and isinstance(schema.get("enum"), list):
        return "none of " + " / ".join(str(option) for option in schema["enum"])
    if off == "number" and schema.get("type") in ("integer", "number"):
        return "several"
    for key in ("anyOf", "oneOf"):
        variants = [v for v in schema.get(key) or [] if isinstance(v, Mapping) and v.get("type") != "null"]
        if variants and value is not None:
            return _off_type(variants[0], value, off, depth + 1)
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_off_type(schema["items"], v, off, depth + 1) for v in value]
    return value


def _response_schema(response_format: Any) -> Mapping[str, Any] | None:
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        js = response_format.get("json_schema")
        if isinstance(js, Mapping) and isinstance(js.get("schema"), Mapping):
            schema: Mapping[str, Any] = js["schema"]
            return schema
    return None
