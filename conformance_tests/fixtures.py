"""The tools and DSPy modules the suite's programs use, registered under exact names.

Programs name tools and DSPy modules; they are never imported by path. The suite registers its
own under names starting with ``conformance_``. :func:`register` is idempotent and cheap (DSPy is
imported only when a DSPy module is instantiated). Out-of-process adapters must run it in their
worker processes too: host :func:`stepbridge.conformance.hosted.native` (or ``.dspy``) there,
or call ``stepbridge.conformance.fixtures.register()`` from the worker's adapter factory.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.parse
from typing import Any, TypedDict

from stepbridge.errors import StepbridgeError, error_from_dict
from stepbridge.registry import dspy_modules, tools

__all__ = ["DSPY_MODULES", "LEDGER_ENV", "TOOLS", "register", "unregister"]


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


class Parts(TypedDict):
    head: str
    tail: str


def conformance_split(text: str) -> Parts:
    """Split a text at its first space. The dict comes back in another key order than ``Parts`` declares:
    outputs are taken by name, never by position."""
    head, _, tail = text.partition(" ")
    return {"tail": tail, "head": head}


async def conformance_slow_echo(text: str) -> str:
    """Return ``text`` after as many milliseconds as its leading number says (``"250 first"``: 250 ms), so
    ``map`` elements finish in another order than they started."""
    await asyncio.sleep(_leading_ms(text) / 1000)
    return text


def _leading_ms(text: str) -> int:
    digits = ""
    for ch in text.strip():
        if not ch.isdigit():
            break
        digits += ch
    return min(int(digits or 0), 10_000)


#: The environment variable naming the suite's side-effect ledger (set by the suite for its processes).
LEDGER_ENV = "STEPBRIDGE_CONFORMANCE_LEDGER"


def _ledger() -> urllib.parse.SplitResult:
    url = urllib.parse.urlsplit(os.environ.get(LEDGER_ENV) or "")
    if url.scheme != "http" or not url.hostname or url.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise RuntimeError(f"{LEDGER_ENV} is not a loopback http URL: this tool only runs under the conformance suite")
    return url


def _count(response: bytes) -> int:
    head, _, payload = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"the suite's ledger refused the effect: {head[:100]!r}")
    return int(json.loads(payload)["count"])


def _request(url: urllib.parse.SplitResult, key: str, item: str) -> bytes:
    body = json.dumps({"key": key, "item": item}).encode()
    return (f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def _record_effect(key: str, item: str) -> int:
    """Record a side effect on the suite's ledger (a plain HTTP POST on loopback, no client set-up cost, so
    the effect is recorded when the tool performs it); how many effects ``key`` has now."""
    url = _ledger()
    reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
    try:
        writer.write(_request(url, key, item))
        await writer.drain()
        return _count(await reader.read())
    finally:
        writer.close()


def _record_effect_blocking(key: str, item: str) -> int:
    """:func:`_record_effect` for synchronous tools."""
    url = _ledger()
    with socket.create_connection((url.hostname or "", url.port or 80), timeout=30) as sock:
        sock.sendall(_request(url, key, item))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return _count(b"".join(chunks))


def conformance_sleep_sync(key: str, item: str) -> str:
    """A synchronous (blocking) tool: notes its start on the suite's ledger, sleeps as many milliseconds as
    ``item`` starts with, notes its end. Run off the event loop (as a thread), two calls overlap."""
    _record_effect_blocking(key, f"start {item}")
    time.sleep(_leading_ms(item) / 1000)
    _record_effect_blocking(key, f"end {item}")
    return item


async def conformance_effect(key: str, item: str) -> str:
    """Perform a side effect (recorded on the suite's ledger under ``key``) after as many milliseconds as
    ``item`` starts with; then fail if ``item`` ends with ``fail``. A cancelled call performs nothing."""
    await asyncio.sleep(_leading_ms(item) / 1000)
    await _record_effect(key, item)
    if item.endswith("fail"):
        raise ValueError(f"effect {item!r} failed on purpose")
    return item


async def conformance_charge(account: str, amount: int) -> str:
    """Charge an account (a side effect on the suite's ledger). The first charge of an account is declined
    *after* it was recorded, as a payment API that times out after charging would: retrying charges twice."""
    count = await _record_effect(account, str(amount))
    if count == 1:
        raise ValueError(f"charge of {amount} on {account!r} declined (attempt 1)")
    return f"charged {amount} ({count} charges)"


TOOLS: dict[str, Any] = {
    "conformance_upper": conformance_upper,
    "conformance_count_words": conformance_count_words,
    "conformance_word_stats": conformance_word_stats,
    "conformance_raise": conformance_raise,
    "conformance_split": conformance_split,
    "conformance_slow_echo": conformance_slow_echo,
    "conformance_effect": conformance_effect,
    "conformance_charge": conformance_charge,
    "conformance_sleep_sync": conformance_sleep_sync,
}


#: Tools whose calls change the world (a run using them is never retried elsewhere).
SIDE_EFFECTS = frozenset({"conformance_effect", "conformance_charge"})


def conformance_qa() -> Any:
    """A registered DSPy module: ``dspy.Predict("question -> answer")``."""
    import dspy

    return dspy.Predict("question -> answer")


DSPY_MODULES: dict[str, Any] = {"conformance_qa": conformance_qa}


def register() -> None:
    """Register the suite's tools and DSPy modules (idempotent)."""
    for name, func in TOOLS.items():
        if name not in tools._items:
            tools.register(name, func, side_effects=name in SIDE_EFFECTS)
    for name, factory in DSPY_MODULES.items():
        if name not in dspy_modules._items:
            dspy_modules.register(name, factory)


def unregister() -> None:
    for name in TOOLS:
        tools.unregister(name)
    for name in DSPY_MODULES:
        dspy_modules.unregister(name)
