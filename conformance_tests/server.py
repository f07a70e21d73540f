"""The suite's own reference LM: the core's deterministic server on a loopback port, plus a request log.

It is observed independently of the adapter under test: the suite compares the request bodies
the server received, not what an adapter says it sent. On top of the core's fault injection
(``reference/error-500``, ``reference/garbage``, ``reference/slow-<ms>``, ``reference/flaky-<n>``)
the suite adds ``ratelimit-<n>``: the first ``n`` attempts of each distinct request get HTTP 429
(with ``Retry-After: 0``), then it answers normally.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from stepbridge.reference_lm import RequestLog, create_app, request_hash

__all__ = ["SuiteLM", "running_suite_lm"]

_RATELIMIT = re.compile(r"^ratelimit-(\d{1,3})$")
_COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})


class _RateLimitFront:
    """ASGI wrapper answering 429 to the first ``n`` attempts of requests whose model says ``ratelimit-<n>``."""

    def __init__(self, app: Any):
        self.app = app
        self.log: RequestLog = app.state.log
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in _COMPLETION_PATHS):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        limit = 0
        body: Any = None
        try:
            body = json.loads(raw)
            for seg in str(body.get("model", "")).split("/"):
                m = _RATELIMIT.match(seg.strip().lower())
                if m:
                    limit = int(m.group(1))
        except (ValueError, AttributeError):
            limit = 0
        if limit:
            key = request_hash(body)
            with self.lock:
                seen = self.attempts.get(key, 0)
                self.attempts[key] = seen + 1
            if seen < limit:
                self.log.append(scope["path"], body)
                payload = json.dumps({"error": {"message": f"injected rate limit {seen + 1} of {limit}",
                                                "type": "rate_limit_error", "code": "rate_limited"}}).encode()
                await send({"type": "http.response.start", "status": 429,
                            "headers": [(b"content-type", b"application/json"), (b"retry-after", b"0"),
                                        (b"content-length", str(len(payload)).encode())]})
                await send({"type": "http.response.body", "body": payload})
                return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.app(scope, replay, send)


@dataclass
class SuiteLM:
    """A running suite reference LM: ``url`` (``http://127.0.0.1:PORT/v1``) and its request ``log``."""

    url: str
    log: RequestLog
    front: Any = None

    def reset_faults(self) -> None:
        """Forget how often each request was answered with an injected transient failure
        (``ratelimit-<n>``, ``flaky-<n>``), so the next run sees the failures again."""
        if self.front is not None:
            with self.front.lock:
                self.front.attempts.clear()
            self.front.app.state.reference.attempts.clear()

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
    import socket

    import uvicorn

    inner = create_app()
    app = _RateLimitFront(inner)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", loop="asyncio",
                            timeout_graceful_shutdown=1, timeout_keep_alive=60)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="conformance-reference-lm",
                              daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the conformance suite's reference LM failed to start")
            time.sleep(0.005)
        port = sock.getsockname()[1]
        yield SuiteLM(f"http://127.0.0.1:{port}/v1", app.log, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
