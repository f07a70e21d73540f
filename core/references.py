"""References inside step arguments: ``$inputs.<field>``, ``$<name>.<field>`` and ``$<item>``.

A string that starts with ``$`` is a reference; ``$$`` escapes a literal dollar; anything else
is a literal. References may sit inside lists and dicts of an argument, never inside a string:
there are no expressions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Ref", "ReferenceSyntaxError", "find_refs", "parse_value", "resolve"]

_REF = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?\Z")


class ReferenceSyntaxError(ValueError):
    """A ``$...`` string that is not a well-formed reference."""


@dataclass(frozen=True, slots=True)
class Ref:
    """``$source.field`` (``field`` is None for a bare ``$source``)."""

    source: str
    field: str | None = None

    def __str__(self) -> str:
        return f"${self.source}" + (f".{self.field}" if self.field else "")


def parse_value(value: Any) -> Any:
    """Turn raw argument data into the same shape with :class:`Ref` in place of reference strings
    and escaped ``$$`` strings unescaped. Raises :class:`ReferenceSyntaxError`."""
    if isinstance(value, str):
        if not value.startswith("$"):
            return value
        if value.startswith("$$"):
            return value[1:]
        m = _REF.match(value)
        if m is None:
            raise ReferenceSyntaxError(
                f"malformed reference {value!r}: use $inputs.<field>, $<name>.<field> or $<item> "
                "(write $$ for a literal dollar)"
            )
        return Ref(m.group(1), m.group(2))
    if isinstance(value, list):
        return [parse_value(v) for v in value]
    if isinstance(value, dict):
        return {k: parse_value(v) for k, v in value.items()}
    return value


def find_refs(parsed: Any, pointer: str = "") -> Iterator[tuple[str, Ref]]:
    """Every :class:`Ref` in a parsed value, with its JSON pointer below ``pointer``."""
    if isinstance(parsed, Ref):
        yield pointer, parsed
    elif isinstance(parsed, list):
        for i, v in enumerate(parsed):
            yield from find_refs(v, f"{pointer}/{i}")
    elif isinstance(parsed, dict):
        for k, v in parsed.items():
            yield from find_refs(v, f"{pointer}/{k.replace('~', '~0').replace('/', '~1')}")


def has_refs(parsed: Any) -> bool:
    return next(find_refs(parsed), None) is not None


def resolve(parsed: Any, scope: dict[str, Any]) -> Any:
    """Substitute references from ``scope`` (name -> value). A ``$name.field`` on a list (a ``map``
    result) gives that field of every element, in order."""
    if isinstance(parsed, Ref):
        value = scope[parsed.source]
        if parsed.field is None:
            return value
        if isinstance(value, list):
            return [element[parsed.field] for element in value]
        return value[parsed.field]
    if isinstance(parsed, list):
        return [resolve(v, scope) for v in parsed]
    if isinstance(parsed, dict):
        return {k: resolve(v, scope) for k, v in parsed.items()}
    return parsed
