"""The tools and DSPy modules the suite's programs use, registered under exact names.

Programs name tools and DSPy modules; they are never imported by path. The suite registers its
own under names starting with ``conformance_``. :func:`register` is idempotent and cheap (DSPy is
imported only when a DSPy module is instantiated). Out-of-process adapters must run it in their
worker processes too: host :func:`stepbridge.conformance.hosted.native` (or ``.dspy``) there,
or call ``stepbridge.conformance.fixtures.register()`` from the worker's adapter factory.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

from stepbridge.errors import StepbridgeError, error_from_dict
from stepbridge.registry import dspy_modules, tools

__all__ = ["DSPY_MODULES", "TOOLS", "register", "unregister"]


def conformance_upper(text: str) -> str:
    """Upper-case a text (a synchronous tool with a single ``result`` output)."""
    return text.upper()


async def conformance_count_words(text: str) -> int:
    """Count the words of a text (an async tool)."""
    await asyncio.sleep(0)
    return len(text.split())


class WordStats(TypedDict):
    count: int
    longest: str


def conformance_word_stats(words: list[str]) -> WordStats:
    """Several typed outputs from a TypedDict return annotation."""
    return {"count": len(words), "longest": max(words, key=len) if words else ""}


def conformance_raise(kind: str, message: str) -> str:
    """Raise the stepbridge error named ``kind`` (or a plain ``ValueError``): the adapter must keep its type."""
    if kind == "ValueError":
        raise ValueError(message)
    all_details: dict[str, dict[str, Any]] = {
        "LMError": {"status": 503, "retriable": True},
        "RunTimeoutError": {"timeout": 1.5},
        "WorkerLostError": {"worker": "w-1", "attempts": 2},
        "PoolSaturatedError": {"queue_size": 7},
        "UnsupportedCapabilityError": {"capability": "tools", "adapter": "x"},
        "InputValidationError": {"field": "text"},
        "ProgramValidationError": {"issues": [{"pointer": "/steps/0", "message": message}]},
    }
    error = error_from_dict({"type": kind, "message": message, "details": all_details.get(kind, {})})
    if type(error) is StepbridgeError and kind != "StepbridgeError":
        raise ValueError(f"unknown error type {kind!r}")
    raise error


TOOLS: dict[str, Any] = {
    "conformance_upper": conformance_upper,
    "conformance_count_words": conformance_count_words,
    "conformance_word_stats": conformance_word_stats,
    "conformance_raise": conformance_raise,
}


def conformance_qa() -> Any:
    """A registered DSPy module: ``dspy.Predict("question -> answer")``."""
    import dspy

    return dspy.Predict("question -> answer")


DSPY_MODULES: dict[str, Any] = {"conformance_qa": conformance_qa}


def register() -> None:
    """Register the suite's tools and DSPy modules (idempotent)."""
    for name, func in TOOLS.items():
        if name not in tools._items:
            tools.register(name, func)
    for name, factory in DSPY_MODULES.items():
        if name not in dspy_modules._items:
            dspy_modules.register(name, factory)


def unregister() -> None:
    for name in TOOLS:
        tools.unregister(name)
    for name in DSPY_MODULES:
        dspy_modules.unregister(name)
