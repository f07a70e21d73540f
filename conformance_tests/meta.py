"""What each suite test certifies: its capability, its column in the matrix, and whose check it is.

A suite test is tagged with :func:`capability`. ``scope`` says who can fail it: ``adapter`` (the
default: the adapter's behaviour decides) or ``core`` (stepbridge itself decides before the adapter
is called -- input validation, capability checks in the Runner, program validation). Core-scope
tests run and are reported in their own section; they never count for or against an adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["Meta", "capability", "meta_of"]


class Meta(NamedTuple):
    capability: str  # a capability name, "core", or a placeholder resolved per test item
    category: str    # case | equivalence | behaviour | negative
    scope: str       # adapter | core


def capability(name: str, category: str = "behaviour", scope: str = "adapter"
               ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Tag a suite test with the capability it certifies (``core`` for what every adapter must do).

    ``<case>``: the capability of the test's case; ``<param>``: its ``capability`` parameter."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__conformance__ = Meta(name, category, scope)  # type: ignore[attr-defined]
        return fn

    return decorate


def meta_of(fn: Any) -> Meta | None:
    meta = getattr(fn, "__conformance__", None)
    return meta if isinstance(meta, Meta) else None
