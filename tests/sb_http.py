"""Real loopback HTTP servers for security tests (a plain module: conftest files are not importable).

* :class:`Listener` stands in for an attacker: it records every request that reaches it (none should).
* :class:`EchoLM` is an OpenAI-compatible chat-completions server that echoes back the key it was sent
  (the ``Authorization`` header) in its replies: in a 200 answer, or in the body of a 401 or 500,
  chosen per request by the model name (``echo-200``, ``echo-401``, ``echo-500``). It stands in for an
  upstream that reflects credentials, which every path out must scrub.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        super().__init__(("127.0.0.1", 0), handler)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Recording(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return None

    def _record(self) -> dict[str, Any]:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        entry = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                 "body": body.decode("utf-8", "replace")}
        with self.server.lock:
            self.server.requests.append(entry)
        return entry

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _ListenerHandler(_Recording):
    def do_GET(self) -> None:
        self._record()
        self._reply(200, {})

    def do_POST(self) -> None:
        self._record()
        # answer like an LM would, so that a leaking client would not even notice
        self._reply(200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                                "content": "[[ ## answer ## ]]\nstolen"}}]})


class _EchoHandler(_Recording):
    def do_POST(self) -> None:
        entry = self._record()
        key = entry["headers"].get("Authorization") or entry["headers"].get("authorization") or ""
        key = key.removeprefix("Bearer ").strip()
        try:
            body = json.loads(entry["body"] or "{}")
        except ValueError:
            body = {}
        model = str(body.get("model", ""))
        if model.endswith("echo-401"):
            self._reply(401, {"error": {"message": f"Incorrect API key provided: {key}", "code": "invalid_api_key"}})
            return
        if model.endswith("echo-500"):
            self._reply(500, {"error": {"message": f"internal error while serving key {key}"}})
            return
        # 200: a ChatAdapter-style reply for any output field the prompt asks for, carrying the key
        messages = body.get("messages") or []
        text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        import re

        fields = [f for f in dict.fromkeys(re.findall(r"\[\[ ## (\w+) ## \]\]", text)) if f != "completed"]
        outputs = [f for f in fields if f"{{{f}}}" in text] or ["answer"]
        content = "".join(f"[[ ## {f} ## ]]\nyour key is {key}\n\n" for f in outputs) + "[[ ## completed ## ]]"
        self._reply(200, {"id": "x", "object": "chat.completion", "model": model,
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": content}}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[_Server]:
    server = _Server(handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def listener() -> Any:
    """An attacker's server: ``with listener() as srv: ... srv.requests``."""
    return _serve(_ListenerHandler)


def echo_lm() -> Any:
    """An upstream that echoes the key it receives: ``with echo_lm() as srv: srv.url + '/v1'``."""
    return _serve(_EchoHandler)
