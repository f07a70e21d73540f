"""OpenAI-shaped response bodies: a chat completion (:func:`reply`), its server-sent-events form for
``stream: true`` (:func:`stream`), and errors (:func:`error`: ``{"error": {message, type, code}}``)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Mapping
from functools import lru_cache
from typing import Any

from starlette.responses import Response, StreamingResponse

from .codec import dumps
from .prompts import message_text

__all__ = ["count_tokens", "error", "json_response", "reply", "reply_recorded", "stream", "usage_of"]

def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON response (orjson-encoded)."""
    return Response(dumps(data), status_code=status, headers=headers, media_type="application/json")


def error(status: int, message: str, kind: str, code: str | None = None, *, retry_after: str = "1",
          **extra: Any) -> Response:
    """An OpenAI-style error body; 429 and 503 carry ``Retry-After``."""
    headers = {"Retry-After": retry_after} if status in (429, 503) else None
    return json_response({"error": {"message": message, "type": kind, "code": code or kind, "param": None, **extra}},
                 status, headers)


@lru_cache(maxsize=4096)
def count_tokens(text: str) -> int:
    """Whitespace-split words: a deterministic token count (cached: system prompts repeat)."""
    return len(text.split())


def _choices(body: Mapping[str, Any]) -> int:
    n = body.get("n") or 1
    return n if isinstance(n, int) and 1 <= n <= 128 else 1


def usage_of(body: Mapping[str, Any], content: str) -> dict[str, int]:
    """The usage :func:`reply` reports: words of the messages, words of the reply times ``n``."""
    prompt_tokens = sum(count_tokens(message_text(m.get("content")))
                        for m in body["messages"] if isinstance(m, Mapping))
    completion_tokens = count_tokens(content) * _choices(body)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def reply(body: Mapping[str, Any], model_id: str, content: str, usage: dict[str, int] | None = None) -> Response:
    """A chat completion answering ``content`` (``n`` choices, word-count usage), streamed if asked."""
    n = _choices(body)
    data = {
        "id": "chatcmpl-ref-" + hashlib.sha256(content.encode()).hexdigest()[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "system_fingerprint": "stepbridge-reference",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": content}, "logprobs": None,
             "finish_reason": "stop"}
            for i in range(n)
        ],
        "usage": usage if usage is not None else usage_of(body, content),
    }
    if body.get("stream"):
        return stream(body, data)
    return json_response(data)


def reply_recorded(body: Mapping[str, Any], data: Any) -> Response:
    """A recorded (cassette or upstream) completion, streamed if the request asks for it."""
    return stream(body, data) if body.get("stream") and isinstance(data, dict) else json_response(data)


def stream(body: Mapping[str, Any], data: dict[str, Any]) -> Response:
    """Server-sent events for ``stream: true``: the whole answer in one chunk, then finish (and usage)."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        obj = {"id": data.get("id"), "object": "chat.completion.chunk", "created": data.get("created"),
               "model": data.get("model"), "choices": choices}
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + dumps(obj) + b"\n\n"

    async def events() -> AsyncIterator[bytes]:
        for c in data.get("choices", []):
            msg = c.get("message") or {}
            yield chunk([{"index": c.get("index", 0), "delta": {"role": "assistant",
                                                                  "content": msg.get("content") or ""},
                          "finish_reason": None}])
            yield chunk([{"index": c.get("index", 0), "delta": {}, "finish_reason": c.get("finish_reason")}])
        if include_usage:
            yield chunk([], data.get("usage"))
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
