"""The suite's own reference LM: the core's deterministic server on a loopback port.

It is observed independently of the adapter under test: the suite compares the request bodies the
server received, not what an adapter says it sent. Faults come from the reference LM itself
(``reference/error-500``, ``garbage``, ``slow-<ms>``, ``flaky-<n>``, ``ratelimit-<n>``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stepbridge.reference_lm import RequestLog, running_server

__all__ = ["SuiteLM", "running_suite_lm"]


@dataclass
class SuiteLM:
    """A running suite reference LM: ``url`` (``http://127.0.0.1:PORT/v1``) and its request ``log``."""

    url: str
    log: RequestLog
    app: Any = None

    def reset_faults(self) -> None:
        """Forget how often each request was answered with an injected transient failure
        (``ratelimit-<n>``, ``flaky-<n>``), so the next run sees the failures again."""
        if self.app is not None:
            self.app.state.reference.attempts.clear()

    def mark(self) -> int:
        """A position in the log; :meth:`since` returns what arrived after it."""
        entries = self.log.entries()
        return int(entries[-1]["seq"]) if entries else 0

    def since(self, mark: int) -> list[dict[str, Any]]:
        """Completion request bodies received after ``mark``, oldest first."""
        return [e["body"] for e in self.log.entries(mark)]


@contextlib.contextmanager
def running_suite_lm() -> Iterator[SuiteLM]:
    """Serve the reference LM on a free loopback port in a background thread."""
    with running_server() as url:
        assert url.log is not None and url.app is not None
        yield SuiteLM(str(url), url.log, url.app)
