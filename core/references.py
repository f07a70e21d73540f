"""Format 1's name for the reference helpers; they live in :mod:`stepbridge.values` now."""

from __future__ import annotations

from typing import Any

from .values import Ref, ValueSyntaxError, compile_value, find_refs, has_refs, parse_value

__all__ = ["Ref", "ReferenceSyntaxError", "find_refs", "has_refs", "parse_value", "resolve"]

ReferenceSyntaxError = ValueSyntaxError


def resolve(parsed: Any, scope: dict[str, Any]) -> Any:
    """Evaluate a parsed value against ``scope`` (name -> value). Compiles on every call: hot paths
    use :func:`stepbridge.values.compile_value` once instead."""
    return compile_value(parsed)(scope)
