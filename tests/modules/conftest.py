"""Fixtures for the agent and ensemble modules: a scripted LM on loopback and runners for the same
program on the real DSPy, the native adapter and the DSPy adapter, each returning what the LM was sent."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class ScriptedLM:
    """An OpenAI-compatible chat server on loopback that answers with scripted texts, in order, and keeps
    every request body. An exhausted script answers HTTP 400, so a test sees an extra call."""

    def __init__(self) -> None:
        self.replies: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def script(self, replies: Sequence[str]) -> None:
        with self._lock:
            self.replies = list(replies)
            self.requests = []

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        lm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with lm._lock:
                    lm.requests.append(body)
                    text = lm.replies.pop(0) if lm.replies else None
                if text is None:
                    data = json.dumps({"error": {"message": "script exhausted", "type": "invalid_request_error",
                                                 "code": "script_exhausted"}}).encode()
                    status = 400
                elif text.startswith("!context"):
                    data = json.dumps({"error": {"message": "This model's maximum context length is exceeded.",
                                                 "type": "invalid_request_error",
                                                 "code": "context_length_exceeded"}}).encode()
                    status = 400
                else:
                    data = json.dumps({
                        "id": "chatcmpl-scripted", "object": "chat.completion", "created": 0,
                        "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }).encode()
                    status = 200
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def chat(**fields: Any) -> str:
    """A ChatAdapter-format reply with these output fields (dicts and lists as JSON)."""
    parts = []
    for name, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value)
        parts.append(f"[[ ## {name} ## ]]\n{text}")
    return "\n\n".join(parts) + "\n\n[[ ## completed ## ]]"


@pytest.fixture(scope="session")
def scripted() -> Iterator[ScriptedLM]:
    lm = ScriptedLM()
    yield lm
    lm.close()


@dataclass
class Sent:
    """What one run returned and what the LM was sent (request bodies, in order)."""

    outputs: Any
    requests: list[dict[str, Any]]

    @property
    def messages(self) -> list[list[dict[str, Any]]]:
        return [r["messages"] for r in self.requests]

    @property
    def temperatures(self) -> list[Any]:
        return [r.get("temperature") for r in self.requests]


def run_dspy(scripted: ScriptedLM, module: Any, inputs: dict[str, Any], replies: Sequence[str],
             **lm_kwargs: Any) -> Sent:
    """``module(**inputs)`` on the real DSPy with a ``dspy.LM`` pointed at the scripted server."""
    import dspy

    scripted.script(replies)
    lm = dspy.LM("openai/scripted", api_base=scripted.url, api_key="unused", cache=False, num_retries=0,
                 **{"temperature": 0.0, **lm_kwargs})
    # the async tools are called from DSPy's sync path as the dspy adapter calls them (converted)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(), allow_tool_async_sync_conversion=True):
        prediction = module(**inputs)
    return Sent(prediction, list(scripted.requests))


def run_adapter(scripted: ScriptedLM, adapter_name: str, program: Any, inputs: dict[str, Any],
                replies: Sequence[str]) -> Sent:
    """The program on the native or DSPy adapter with the scripted server as the default LM profile."""
    from stepbridge.adapter import RunOptions
    from stepbridge.lm import LMPool, LMProfile

    profiles = {"default": LMProfile(name="default", base_url=scripted.url, model="openai/scripted", max_retries=0)}
    scripted.script(replies)
    if adapter_name == "native":
        from stepbridge.adapters.native import NativeAdapter

        adapter: Any = NativeAdapter(lm=LMPool(profiles=profiles))
    else:
        from stepbridge.adapters.dspy import DSPyAdapter

        adapter = DSPyAdapter(profiles=profiles)

    async def go() -> Any:
        try:
            return await adapter.run(program, inputs, RunOptions())
        finally:
            await adapter.aclose()

    result = asyncio.run(go())
    return Sent(result, list(scripted.requests))
