"""Program references: ``<hash>``, ``<hash prefix (>= 12 hex)>``, ``name``, ``name@3``, ``name@alias``.

Parsing is pure (no database) so it can be property-tested. A hex string that is also a valid name
(``cafebabe1234``) parses as a prefix that remembers the name; the store tries the prefix first,
then the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from stepbridge.errors import StorageError

__all__ = ["ALIAS_PATTERN", "MIN_PREFIX", "ProgramRef", "RefSyntaxError", "parse_ref", "validate_alias"]

MIN_PREFIX = 12
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.]{0,199}$")
ALIAS_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-.]{0,99}$"
ALIAS_RE = re.compile(ALIAS_PATTERN)
HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
MAX_VERSION = 2**31 - 1  # what an INTEGER column holds on every database
#: alias names with a fixed meaning
RESERVED_ALIASES = frozenset({"latest"})


class RefSyntaxError(StorageError):
    """The reference is not a hash, a hash prefix, ``name``, ``name@N`` or ``name@alias``."""


RefKind = Literal["hash", "prefix", "name", "version", "alias"]


@dataclass(frozen=True)
class ProgramRef:
    """A parsed reference: which of the five forms it is and its parts (:func:`parse_ref` builds one)."""

    kind: RefKind
    name: str | None = None
    hash: str | None = None  # full hash or prefix, lower case
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.kind in ("hash", "prefix"):
            return str(self.hash)
        if self.kind == "version":
            return f"{self.name}@{self.version}"
        if self.kind == "alias":
            return f"{self.name}@{self.alias}"
        return str(self.name)


def _bad(ref: str, why: str) -> RefSyntaxError:
    return RefSyntaxError(
        f"invalid program reference {ref!r}: {why} "
        "(expected a content hash, a hash prefix of at least 12 hex digits, NAME, NAME@VERSION or NAME@ALIAS)"
    )


def validate_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias) or alias.isdigit():
        raise RefSyntaxError(
            f"invalid alias {alias!r}: letters, digits, '_', '-', '.'; starting with a letter or '_'"
        )
    if alias in RESERVED_ALIASES:
        raise RefSyntaxError(f"alias {alias!r} is reserved")
    return alias


def parse_ref(ref: str) -> ProgramRef:
    """Parse a reference string; raise :class:`RefSyntaxError` (a StorageError) if it is none of the forms."""
    if not isinstance(ref, str):
        raise _bad(repr(ref), "not a string")
    text = ref.strip()
    if not text:
        raise _bad(ref, "empty")
    if "@" in text:
        name, _, tail = text.partition("@")
        if not NAME_RE.match(name):
            raise _bad(ref, f"{name!r} is not a program name")
        if not tail:
            raise _bad(ref, "nothing after '@'")
        if tail.isdigit() and tail.isascii():
            version = int(tail) if len(tail) <= 18 else MAX_VERSION + 1  # never a huge int (or a bind overflow)
            if version < 1:
                raise _bad(ref, "versions start at 1")
            if version > MAX_VERSION:
                raise _bad(ref, f"version numbers stop at {MAX_VERSION}")
            return ProgramRef("version", name=name, version=version)
        if tail == "latest":
            return ProgramRef("name", name=name)
        if not ALIAS_RE.match(tail):
            raise _bad(ref, f"{tail!r} is neither a version number nor an alias")
        return ProgramRef("alias", name=name, alias=tail)
    if HEX_RE.match(text) and len(text) >= MIN_PREFIX:
        if len(text) > 64:
            raise _bad(ref, "longer than a sha256 hash")
        kind: RefKind = "hash" if len(text) == 64 else "prefix"
        return ProgramRef(kind, hash=text.lower(), name=text if NAME_RE.match(text) else None)
    if NAME_RE.match(text):
        return ProgramRef("name", name=text)
    raise _bad(ref, "not a program name")
