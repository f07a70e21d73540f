"""Secrets, and the one function that removes them from everything that leaves a process.

Every path out goes through :func:`scrub`: storage rows, traces and outputs, error text, CLI output
(``--json`` too), logs and pool replies. It removes

* **known secrets**, by value: the value of every environment variable an LM profile names
  (``api_key_env``) and every password in a configured URL (a profile's ``base_url``, the database
  URL), registered when the profile or URL is loaded (:func:`register_secret`, :func:`register_url`).
  A process knows its own secrets, so a pool worker scrubs its replies before sending them: the
  process that records them may never have seen the workers' keys. URL-encoded and JSON-escaped
  spellings of a secret are removed too;
* **secret-shaped text**: provider keys (``sk-...``), bearer tokens, ``api_key=...``, and the
  password of credentials in a URL, with a scheme (``https://user:KEY@host``) or without one
  (``user:KEY@host:port``, as DSPy's engine and many HTTP libraries print them).

A known secret shorter than :data:`MIN_SECRET_LENGTH` characters is not scrubbed by value (a warning
says so once): such a value is likely to occur in ordinary text (words, numbers, ids), so removing it
everywhere would mangle outputs and, by where it cut, reveal the secret anyway. Keys that short are
not keys; use a real one.
"""

from __future__ import annotations

import html
import json
import logging
import re
import sys
import threading
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus, unquote, urlsplit

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "frame_might_hold_secret", "might_hold_secret", "register_secret",
           "register_url", "scrub", "scrub_process_output"]

log = logging.getLogger("stepbridge.secrets")

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 6

# Secret-shaped text. Each pattern keeps its ``pre`` group and replaces the rest of the match.
_PATTERNS = [
    re.compile(r"(?P<pre>\b)(?:sk|pk|rk)-[A-Za-z0-9_\-]{12,}"),
    re.compile(r"(?i)(?P<pre>bearer\s+)[A-Za-z0-9._\-~+/]{6,}=*"),
    re.compile(r"(?i)(?P<pre>api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{6,}"),
    # credentials in a URL: scheme://user:PASSWORD@host
    re.compile(r"(?P<pre>://[^/\s:@]*:)[^@/\s]+(?=@)"),
    # the same without the scheme: user:PASSWORD@host, where host is a name, an IPv4 or [IPv6] address
    re.compile(r"(?P<pre>(?<![\w:/@.%+-])[\w.%+-]+:)[^\s@/:]+(?=@(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)"
               r"(?:[:/\s'\",)]|$))"),
]
# Supersets of what the patterns can match, each with a literal to scan for first. They hold on the
# JSON encoding of a value too (JSON escapes only quotes, backslashes and control characters, which
# none of them depend on), so a store can test one encoded row instead of every string in it.
_KEY_SHAPED = re.compile(r"[spr]k-[A-Za-z0-9_\-]{12,}")
_AT_CREDENTIALS = re.compile(r":[^\s@/:]+@")
_API_KEY = re.compile(r"api[_-]?key")
_WORDS = re.compile(r"bearer|api[_-]?key", re.IGNORECASE)
# The same on bytes (frame_might_hold_secret): ASCII classes alike; bytes' \s is ASCII whitespace only,
# a subset of str's, so [^\s...] matches at least as much
_KEY_SHAPED_BYTES = re.compile(_KEY_SHAPED.pattern.encode())
_AT_CREDENTIALS_BYTES = re.compile(_AT_CREDENTIALS.pattern.encode())
_API_KEY_BYTES = re.compile(_API_KEY.pattern.encode())

_lock = threading.Lock()
_known: frozenset[str] = frozenset()
_order: list[str] = []  # the known spellings, longest first (a secret containing another goes whole)
_order_latin1: list[bytes] = []  # those that latin-1 text can hold, as its bytes
_warned: set[int] = set()

T = TypeVar("T")


def register_secret(value: str | None, *, source: str = "a secret") -> None:
    """Remember a secret value so that :func:`scrub` removes it everywhere in this process."""
    global _known
    if not value:
        return
    if len(value) < MIN_SECRET_LENGTH:
        if hash(value) not in _warned:
            _warned.add(hash(value))
            log.warning("%s is shorter than %d characters: it cannot be scrubbed from outputs, traces and logs "
                        "(too likely to occur in ordinary text); use a real key", source, MIN_SECRET_LENGTH)
        return
    # as written; URL-encoded (path, component and form style); JSON-escaped, once and twice (an error
    # wrapping an upstream's JSON body); in a Python repr (str and bytes: client library errors print
    # header values so); HTML-escaped (an error page); and as the bytes of its UTF-8 read one by one
    # (binary frames). Not covered: transformations such as base64 or changes of case.
    escaped = json.dumps(value)[1:-1]
    spellings = {value, quote(value, safe=""), quote(value), quote_plus(value), unquote(value), escaped,
                 json.dumps(escaped)[1:-1], repr(value)[1:-1], repr(value.encode("utf-8"))[2:-1],
                 html.escape(value), html.escape(value, quote=False), value.encode("utf-8").decode("latin-1")}
    spellings = {s for s in spellings if len(s) >= MIN_SECRET_LENGTH}
    if spellings <= _known:
        return
    with _lock:
        _known = frozenset(_known | spellings)
        _order[:] = sorted(_known, key=len, reverse=True)
        _order_latin1[:] = [spelling.encode("latin-1") for spelling in _order if spelling.isascii()
                            or max(map(ord, spelling)) < 256]


def register_url(url: str | None, *, source: str = "a configured URL") -> None:
    """Remember the password of credentials inside ``url`` (``scheme://user:PASSWORD@host``)."""
    if not url or "@" not in url:
        return
    try:
        password = urlsplit(url.strip()).password
    except ValueError:
        password = None
    if password:
        register_secret(password, source=f"the password in {source}")


def scrub(value: T) -> T:
    """``value`` with every known secret and secret-shaped string replaced by ``[REDACTED]``.

    Text is scrubbed; dicts (keys and values), lists and tuples are scrubbed throughout (a new
    container is returned); anything else is returned as it is."""
    if isinstance(value, str):
        return _scrub_text(value)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {(_scrub_text(k) if isinstance(k, str) else k): scrub(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list):
        return [scrub(v) for v in value]  # type: ignore[return-value]
    if isinstance(value, tuple):
        return tuple(scrub(v) for v in value)  # type: ignore[return-value]
    return value


def might_hold_secret(text: str) -> bool:
    """False only if :func:`scrub` would leave ``text`` unchanged; cheap (plain substring scans first).

    Also false only if the JSON encoding of a value holds no secret that :func:`scrub` would remove
    from one of its strings (the JSON-escaped spelling of every known secret is registered too)."""
    if any(secret in text for secret in _order):
        return True
    if "k-" in text and _KEY_SHAPED.search(text):
        return True
    if "@" in text and _AT_CREDENTIALS.search(text):
        return True
    if "\u0130" in text or "\u0131" in text:  # the two letters whose lower case differs from re's IGNORECASE
        return _WORDS.search(text) is not None
    # otherwise lower-casing is exactly IGNORECASE for these words (and ~15x faster than the regex on
    # non-ASCII text, such as a msgpack frame read as latin-1)
    low = text.lower()
    return "bearer" in low or ("api" in low and _API_KEY.search(low) is not None)


def frame_might_hold_secret(data: bytes) -> bool:
    """:func:`might_hold_secret` of ``data.decode("latin-1")`` (a binary frame read byte for byte) without
    decoding or lower-casing text, ~3x faster on a msgpack frame. Never false where that is true: the
    patterns are the same on bytes (their ``\\s`` is a subset of str's, so they match at least as much),
    no latin-1 character lower-cases to an ASCII letter, and the two letters that need the regex
    (U+0130, U+0131) are not latin-1."""
    if any(secret in data for secret in _order_latin1):
        return True
    if b"k-" in data and _KEY_SHAPED_BYTES.search(data):
        return True
    if b"@" in data and _AT_CREDENTIALS_BYTES.search(data):
        return True
    low = data.lower()  # ASCII letters only: exactly str.lower() on latin-1 text, where it matters here
    return b"bearer" in low or (b"api" in low and _API_KEY_BYTES.search(low) is not None)


def _scrub_text(text: str) -> str:
    if not might_hold_secret(text):
        return text
    for secret in _order:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(r"\g<pre>" + REDACTED, text)
    return text


# -- the process's own output: stdout, stderr, log records ----------------------------------------
class _ScrubbingStream:
    """A text stream that scrubs what is written to it (everything else is the wrapped stream's)."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(scrub(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _ScrubbedRecord(logging.LogRecord):
    def getMessage(self) -> str:
        return scrub(super().getMessage())


def _scrubbed_records(factory: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if type(record) is logging.LogRecord:
            record.__class__ = _ScrubbedRecord
        return record

    make.scrubs = True  # type: ignore[attr-defined]
    return make


def scrub_process_output() -> None:
    """From now on this process's stdout, stderr and log messages are scrubbed (the command line and
    pool workers call this first; an application embedding stepbridge may too). Idempotent."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _ScrubbingStream):
            setattr(sys, name, _ScrubbingStream(stream))
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "scrubs", False):
        logging.setLogRecordFactory(_scrubbed_records(factory))
