"""Fault injection by model name (any ``/``-separated segment of the request's ``model``, or the
server-wide ``fault`` option).

``error-<status>`` (``error-429`` carries ``Retry-After``), ``garbage`` (text no adapter can parse,
:data:`GARBAGE_TEXT`), ``empty``, ``slow-<ms>``, ``flaky-<n>`` (the first ``n`` attempts of each
distinct request get a 503, then it succeeds), ``ratelimit-<n>`` (the same with 429 and
``Retry-After: 0``), ``context-<n>`` (a request whose messages hold more than ``n`` characters gets
HTTP 400 with the OpenAI error code ``context_length_exceeded``, as a model with a small context
window answers). Example: ``dspy.LM("openai/reference/error-500", api_base=url)``.

Faults an adapter's *parsing* must catch (the conformance suite's lenient-parsing checks): answers in
the requested format whose values are off their type -- ``off-literal`` (a Literal/enum value outside
its set) and ``off-number`` (words where an int or float belongs) -- and ``chat-garbage`` (garbage for
a chat-format prompt only: the JSON-format retry DSPy's ChatAdapter makes then succeeds).
``jitter-<ms>`` delays each request by 0 to ``ms`` milliseconds, the same for the same last user
message, so concurrent requests finish in another order than they arrived.

The HTTP app acts on every fault; the in-process client (``stepbridge.lm``) on ``error``, ``slow``
and ``garbage``.

A new fault is a field of :class:`Faults`, a pattern in ``_FAULT`` and a branch of
:func:`parse_faults`; the app (:mod:`.app`) and the in-process client (``stepbridge.lm``) act on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["GARBAGE_TEXT", "Faults", "context_error", "parse_faults", "prompt_chars"]

GARBAGE_TEXT = "Lorem ipsum dolor sit amet: this reply deliberately ignores the requested format."
_FAULT = re.compile(r"^(error|slow|flaky|ratelimit|jitter|context)-(\d{1,9})$"
                    r"|^(garbage|empty|off-literal|off-number|chat-garbage)$")


@dataclass(frozen=True)
class Faults:
    """Faults to inject into one request (from its model name and the server's ``fault`` option)."""

    error: int | None = None
    slow_ms: int = 0
    flaky: int = 0
    ratelimit: int = 0
    garbage: bool = False
    empty: bool = False
    jitter_ms: int = 0
    #: "literal" / "number": answer values off their type (see the module docstring)
    off_type: str | None = None
    chat_garbage: bool = False
    context: int = 0


def prompt_chars(messages: object) -> int:
    """Characters of text in chat messages (what ``context-<n>`` compares with ``n``)."""
    if not isinstance(messages, list):
        return 0
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return total


def context_error(limit: int, used: int) -> str:
    return (f"This model's maximum context length is {limit} characters, but the messages have {used} "
            "characters (injected by the reference model name).")


@lru_cache(maxsize=1024)
def parse_faults(*names: str | None) -> Faults:
    """Faults named by ``/``-separated segments, e.g. ``reference/error-429`` or ``slow-200/garbage``."""
    error, slow, flaky, ratelimit, garbage, empty, context = None, 0, 0, 0, False, False, 0
    jitter, off_type, chat_garbage = 0, None, False
    for name in names:
        for seg in (name or "").split("/"):
            m = _FAULT.match(seg.strip().lower())
            if not m:
                continue
            kind, num, flag = m.group(1), m.group(2), m.group(3)
            if kind == "error" and 100 <= int(num) <= 599:
                error = int(num)
            elif kind == "slow":
                slow = int(num)
            elif kind == "flaky":
                flaky = int(num)
            elif kind == "ratelimit":
                ratelimit = int(num)
            elif kind == "context":
                context = int(num)
            elif flag == "garbage":
                garbage = True
            elif flag == "empty":
                empty = True
            elif kind == "jitter":
                jitter = int(num)
            elif flag in ("off-literal", "off-number"):
                off_type = flag.removeprefix("off-")
            elif flag == "chat-garbage":
                chat_garbage = True
    return Faults(error=error, slow_ms=slow, flaky=flaky, ratelimit=ratelimit, garbage=garbage, empty=empty,
                  jitter_ms=jitter, off_type=off_type, chat_garbage=chat_garbage, context=context)
