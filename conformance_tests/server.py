"""The suite's own reference LM: the core's deterministic server on a loopback port, observed from outside.

The suite judges an adapter by what reached the server, not by what the adapter says it did: the
request bodies it received (with arrival times), the connections open to it, and -- on a ledger
beside it -- the side effects the suite's tools performed (tools may run in other processes, so
the ledger is an HTTP endpoint too). Faults come from the reference LM itself (model names such as
``reference/error-500``, ``garbage``, ``slow-<ms>``, ``flaky-<n>``, ``ratelimit-<n>``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from stepbridge.reference_lm import RequestLog, running_server

__all__ = ["LEDGER_PATH", "Ledger", "SuiteLM", "open_connections", "running_suite_lm"]

#: Where the side-effect ledger listens, under the server's root URL.
LEDGER_PATH = "/_conformance/ledger"


@dataclass
class Ledger:
    """Side effects the suite's tools performed: ``(time, key, item)`` in arrival order."""

    entries: list[tuple[float, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, key: str, item: str) -> int:
        """Record one effect; how many effects ``key`` has now (1 for the first)."""
        with self.lock:
            self.entries.append((time.time(), key, item))
            return sum(1 for _, k, _ in self.entries if k == key)

    def of(self, key: str) -> list[tuple[float, str]]:
        """``(time, item)`` of every effect recorded under ``key``."""
        with self.lock:
            return [(t, item) for t, k, item in self.entries if k == key]


@dataclass
class SuiteLM:
    """A running suite reference LM: ``url`` (``http://127.0.0.1:PORT/v1``), its request ``log``, the
    side-effect ``ledger`` and the ``port`` to count connections on."""

    url: str
    log: RequestLog
    app: Any = None
    port: int = 0
    ledger: Ledger = field(default_factory=Ledger)

    @property
    def ledger_url(self) -> str:
        return self.url.removesuffix("/v1") + LEDGER_PATH

    def reset_faults(self) -> None:
        """Forget how often each request was answered with an injected transient failure
        (``ratelimit-<n>``, ``flaky-<n>``), so the next run sees the failures again."""
        if self.app is not None:
            self.app.state.reference.attempts.clear()

    def mark(self) -> int:
        """A position in the log; :meth:`since` returns what arrived after it."""
        entries = self.log.entries()
        return int(entries[-1]["seq"]) if entries else 0

    def entries(self, mark: int) -> list[dict[str, Any]]:
        """Log entries (``seq``, ``time``, ``body``) received after ``mark``, oldest first."""
        return self.log.entries(mark)

    def since(self, mark: int) -> list[dict[str, Any]]:
        """Completion request bodies received after ``mark``, oldest first."""
        return [e["body"] for e in self.log.entries(mark)]

    def connections(self) -> set[tuple[str, int]] | None:
        """The peers of the connections open to this server now (None where the OS does not tell)."""
        return open_connections(self.port)


def open_connections(port: int) -> set[tuple[str, int]] | None:
    """Remote ``(address, port)`` of every ESTABLISHED TCP connection whose local port is ``port``, read
    from ``/proc/net/tcp{,6}`` (the server's side of each connection); None where that does not exist."""
    found: set[tuple[str, int]] = set()
    seen_any = False
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        try:
            lines = path.read_text().splitlines()[1:]
        except OSError:
            continue
        seen_any = True
        for line in lines:
            parts = line.split()
            if len(parts) < 4 or parts[3] != "01":  # 01: ESTABLISHED
                continue
            local_port = int(parts[1].rsplit(":", 1)[1], 16)
            if local_port == port:
                address, remote_port = parts[2].rsplit(":", 1)
                found.add((address, int(remote_port, 16)))
    return found if seen_any else None


def _ledger_routes(ledger: Ledger) -> list[Route]:
    async def record(request: Request) -> Response:
        try:
            data = await request.json()
            key, item = str(data["key"])[:200], str(data.get("item", ""))[:200]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "expected {key, item}"}, status_code=400)
        return JSONResponse({"count": ledger.record(key, item)})

    return [Route(LEDGER_PATH, record, methods=["POST"])]


@contextlib.contextmanager
def running_suite_lm() -> Iterator[SuiteLM]:
    """Serve the reference LM (and the ledger) on a free loopback port in a background thread.

    The request log keeps whole bodies up to 4 MB (the 1 MB-input check compares them field by field; the
    server's default keeps 1 MB and truncates the rest)."""
    with running_server(log_body_bytes=4 * 2**20, log_bytes=256 * 2**20) as url:
        assert url.log is not None and url.app is not None
        suite = SuiteLM(str(url), url.log, url.app, url.port)
        url.app.router.routes.extend(_ledger_routes(suite.ledger))
        yield suite
