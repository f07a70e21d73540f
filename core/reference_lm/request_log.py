"""The request log: every completion request body the server received, so tests can compare what
different backends sent (``app.state.log``, ``GET/DELETE /_stepbridge/requests``)."""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path
from typing import Any

from .codec import dumps

__all__ = ["RequestLog"]

class RequestLog:
    """The latest completion request bodies the server received, in order, optionally mirrored to JSONL.

    Tests read it to compare exactly what different backends sent. Headers (and so API keys) are
    never recorded. A ring buffer: at most ``limit`` entries and ``max_bytes`` of bodies (oldest out
    first); a body over ``max_body_bytes`` is kept as ``{"_truncated": true, "bytes": N, "head": ...}``.
    """

    def __init__(self, limit: int = 100_000, path: str | os.PathLike[str] | None = None, *,
                 max_bytes: int = 64 * 2**20, max_body_bytes: int = 2**20):
        self._entries: collections.deque[dict[str, Any]] = collections.deque()
        self.limit = max(1, limit)
        self.max_bytes = max_bytes
        self.max_body_bytes = max_body_bytes
        self._sizes: collections.deque[int] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._seq = 0
        self.path = Path(path) if path is not None else None
        self._file = open(self.path, "ab") if self.path is not None else None  # noqa: SIM115

    def append(self, path: str, body: Any, *, size: int | None = None) -> dict[str, Any]:
        """Log ``body`` (``size``: its encoded length, if the caller knows it)."""
        if size is None:
            size = len(dumps(body))
        if size > self.max_body_bytes:
            head = dumps(body)[:4096].decode("utf-8", "replace")
            body, size = {"_truncated": True, "bytes": size, "head": head}, len(head) + 64
        with self._lock:
            self._seq += 1
            entry = {"seq": self._seq, "time": time.time(), "path": path, "body": body}
            self._entries.append(entry)
            self._sizes.append(size)
            self._bytes += size
            while len(self._entries) > self.limit or (self._bytes > self.max_bytes and len(self._entries) > 1):
                self._entries.popleft()
                self._bytes -= self._sizes.popleft()
            if self._file is not None:
                self._file.write(dumps(entry) + b"\n")
                self._file.flush()
        return entry

    def answered(self, entry: dict[str, Any], *, status: int, usage: Any = None, reply: str | None = None) -> None:
        """Note how the server answered a logged request (``entry`` from :meth:`append`): its HTTP
        ``status``, and for a completion the ``usage`` it reported and the ``reply`` text. Tests compare
        them with what an adapter says it received."""
        with self._lock:
            entry["status"] = status
            if usage is not None:
                entry["usage"] = usage
            if reply is not None:
                entry["reply"] = reply

    def entries(self, since: int = 0) -> list[dict[str, Any]]:
        """Log entries (``seq``, ``time``, ``path``, ``body``; once answered ``status``, ``usage``, ``reply``)
        with ``seq > since``."""
        with self._lock:
            return [e for e in self._entries if e["seq"] > since]

    def bodies(self) -> list[Any]:
        """Just the request bodies, oldest first."""
        return [e["body"] for e in self.entries()]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
