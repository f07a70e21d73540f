"""The ``response_format`` DSPy 3.4.1's JSONAdapter asks for: OpenAI structured outputs.

``_get_structured_outputs_response_format`` builds a ``DSPyProgramOutputs`` pydantic model of the
output fields (declared object types and enums land in ``$defs``), marks every property required and
forbids extra ones; the request builder then shapes the schema for OpenAI's strict mode
(``dspy.clients.legacy_requests._strict_json_schema``: ``$ref`` with siblings inlined, ``allOf`` of
one unwrapped, ``default: null`` dropped). Reproduced here on the same pydantic models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, get_origin

import pydantic

__all__ = ["json_mode", "structured_response_format"]


def json_mode(annotations: Mapping[str, Any]) -> bool:
    """Whether DSPy falls back to ``{"type": "json_object"}``: an output field is an open-ended ``dict``."""
    return any(get_origin(a) is dict for a in annotations.values())


def structured_response_format(annotations: Mapping[str, Any]) -> dict[str, Any]:
    """The strict ``json_schema`` response format for output fields ``name -> annotation``."""
    model = pydantic.create_model(  # type: ignore[call-overload]
        "DSPyProgramOutputs",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **{name: (annotation, ...) for name, annotation in annotations.items()},
    )
    schema: dict[str, Any] = model.model_json_schema()
    for prop in schema.get("properties", {}).values():
        prop.pop("json_schema_extra", None)
    _enforce_required(schema)
    return {
        "type": "json_schema",
        "json_schema": {"name": "DSPyProgramOutputs", "schema": _strict_json_schema(schema), "strict": True},
    }


def _enforce_required(part: dict[str, Any]) -> None:
    if part.get("type") == "object":
        props = part.get("properties")
        if props is not None:
            part["required"] = list(props.keys())
            part["additionalProperties"] = False
            for sub in props.values():
                if isinstance(sub, dict):
                    _enforce_required(sub)
        else:
            part["properties"] = {}
            part["required"] = []
            part["additionalProperties"] = False
    if part.get("type") == "array" and isinstance(part.get("items"), dict):
        _enforce_required(part["items"])
    for key in ("$defs", "definitions"):
        if key in part:
            for sub in part[key].values():
                _enforce_required(sub)


def _strict_json_schema(schema: Any, root: dict[str, Any] | None = None) -> Any:
    """OpenAI strict-mode shaping, as ``dspy.clients.legacy_requests._strict_json_schema``."""
    if not isinstance(schema, dict):
        return schema
    root = schema if root is None else root
    out = dict(schema)
    for key in ("$defs", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {n: _strict_json_schema(s, root) for n, s in out[key].items()}
    if out.get("type") == "object" and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if isinstance(out.get("properties"), dict):
        out["required"] = list(out["properties"])
        out["properties"] = {n: _strict_json_schema(s, root) for n, s in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _strict_json_schema(out["items"], root)
    if isinstance(out.get("anyOf"), list):
        out["anyOf"] = [_strict_json_schema(item, root) for item in out["anyOf"]]
    if isinstance(out.get("allOf"), list):
        if len(out["allOf"]) == 1:
            out.update(_strict_json_schema(out.pop("allOf")[0], root))
        else:
            out["allOf"] = [_strict_json_schema(item, root) for item in out["allOf"]]
    if "default" in out and out["default"] is None:
        del out["default"]
    ref = out.get("$ref")
    if isinstance(ref, str) and len(out) > 1:
        node: Any = root
        for part in ref.removeprefix("#/").split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            out = {**_strict_json_schema(node, root), **{k: v for k, v in out.items() if k != "$ref"}}
    return out
