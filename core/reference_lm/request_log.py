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
    """Every completion request body the server received, in order (bounded), optionally mirrored to JSONL.

    Tests read it to compare exactly what different backends sent. Headers (and so API keys) are
    never recorded.
    """

    def __init__(self, limit: int = 100_000, path: str | os.PathLike[str] | None = None):
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
        self._lock = threading.Lock()
        self._seq = 0
        self.path = Path(path) if path is not None else None
        self._file = open(self.path, "ab") if self.path is not None else None  # noqa: SIM115

    def append(self, path: str, body: Any) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            entry = {"seq": self._seq, "time": time.time(), "path": path, "body": body}
            self._entries.append(entry)
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

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
