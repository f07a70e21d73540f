"""The reference LM as an ASGI app (:func:`create_app`): ``POST /v1/chat/completions`` and
``GET /v1/models`` (also without ``/v1``), fault injection (:mod:`.faults`), the request log
(:mod:`.request_log`, ``GET/DELETE /_stepbridge/requests``), cassettes (:mod:`.cassettes`) and
``GET /_stepbridge/health``.

The completion endpoint is served directly by :class:`ReferenceApp` (no router or middleware): it
is the hot path of the I/O-bound benchmark. What a request is answered with is decided in one
place, ``complete`` inside :func:`create_app`: validate, log, faults, cassette, model.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..secrets import register_secret, scrub
from .cassettes import Cassette, CassetteMiss, request_hash
from .codec import dumps, loads
from .faults import GARBAGE_TEXT, context_error, parse_faults, prompt_chars
from .model import ReferenceModel
from .request_log import RequestLog
from .responses import error, json_response, reply, reply_recorded, usage_of

__all__ = ["MAX_BODY_BYTES", "MAX_CHOICES", "MODEL_NAME", "ReferenceApp", "create_app", "request_problem"]

#: Name the server reports in ``/v1/models`` and answers with when a request names none.
MODEL_NAME = "reference"
#: The largest request body accepted (HTTP 413 beyond, before more is read). DSPy prompts are far smaller.
MAX_BODY_BYTES = 8 * 2**20
#: The most choices (``n``) a request may ask for.
MAX_CHOICES = 128

@dataclass
class _ServerState:
    model: ReferenceModel
    log: RequestLog
    latency_ms: float = 0.0
    fault: str | None = None
    cassette: Cassette | None = None
    record: bool = False
    upstream: str | None = None
    upstream_key_env: str | None = None
    model_name: str = MODEL_NAME
    attempts: dict[str, int] = field(default_factory=dict)
    client: Any = None  # httpx.AsyncClient, created on first use in the serving loop


def create_app(
    *,
    model: ReferenceModel | None = None,
    latency_ms: float = 0.0,
    fault: str | None = None,
    log_limit: int = 100_000,
    log_path: str | os.PathLike[str] | None = None,
    cassette: str | os.PathLike[str] | None = None,
    record: bool = False,
    upstream: str | None = None,
    upstream_key_env: str | None = "OPENAI_API_KEY",
    model_name: str = MODEL_NAME,
    max_body_bytes: int = MAX_BODY_BYTES,
    log_bytes: int = 64 * 2**20,
    log_body_bytes: int = 2**20,
) -> Starlette:
    """The reference LM as a Starlette app.

    * ``latency_ms`` — sleep this long (asyncio) before every completion, for I/O-bound benchmarks.
    * ``fault`` — fault segments applied to every request (see the module docstring).
    * ``cassette`` alone — replay only; a request not in the cassette gets HTTP 404 naming its hash.
    * ``cassette`` + ``record=True`` + ``upstream`` (an OpenAI-compatible base URL such as
      ``http://host/v1``) — answer from the cassette when it has the request, otherwise forward it
      upstream and record a successful answer. The upstream key is read from the environment
      variable *named* ``upstream_key_env`` at request time and never logged.

    * ``max_body_bytes`` — a larger request body is answered 413 (and the connection closed) as soon as
      its ``Content-Length`` or the bytes read so far say so; the rest is never read.

    The request log is ``app.state.log`` (a :class:`RequestLog`, bounded by ``log_limit`` entries and
    ``log_bytes`` of bodies, each body kept up to ``log_body_bytes``) and ``GET/DELETE /_stepbridge/requests``.
    Every request the server cannot answer gets a typed JSON error (4xx for the client's mistakes).
    """
    if record and (not upstream or cassette is None):
        raise ValueError("record mode needs both upstream=URL and cassette=FILE")
    if upstream and not record:
        raise ValueError("upstream=URL is only used with record=True")
    state = _ServerState(
        model=model or ReferenceModel(),
        log=RequestLog(log_limit, log_path, max_bytes=log_bytes, max_body_bytes=log_body_bytes),
        latency_ms=latency_ms,
        fault=fault,
        cassette=Cassette(cassette) if cassette is not None else None,
        record=record,
        upstream=upstream.rstrip("/") if upstream else None,
        upstream_key_env=upstream_key_env,
        model_name=model_name,
    )

    async def chat_completions(request: Request) -> Response:
        raw = await _read_body(request.receive, max_body_bytes)
        return raw if isinstance(raw, Response) else await complete(request.url.path, raw or b"")

    async def complete(path: str, raw: bytes) -> Response:
        try:
            body = loads(raw)
        except ValueError:
            bad = state.log.append(path, {"_invalid_json": raw[:10_000].decode("utf-8", "replace")}, size=len(raw))
            state.log.answered(bad, status=400)
            return error(400, "request body is not valid JSON (UTF-8)", "invalid_request_error")
        entry = state.log.append(path, body, size=len(raw))
        try:
            response, content, usage = await answer(body)
        except Exception as exc:  # a bug, not the client's mistake: still a JSON error, never a bare 500
            response, content, usage = error(500, scrub(f"reference server failed: {type(exc).__name__}: {exc}"),
                                             "server_error"), None, None
        state.log.answered(entry, status=response.status_code, usage=usage, reply=content)
        return response

    async def answer(body: Any) -> tuple[Response, str | None, Any]:
        """The response to a logged request, and (for a completion) its text and reported usage."""
        problem = request_problem(body)
        if problem is not None:
            message, param = problem
            return error(400, message, "invalid_request_error", param=param), None, None
        model_id = str(body.get("model") or state.model_name)
        faults = parse_faults(model_id, state.fault)
        if faults.slow_ms:
            await asyncio.sleep(faults.slow_ms / 1000)
        if faults.jitter_ms:
            await asyncio.sleep(_jitter(body, faults.jitter_ms) / 1000)
        if state.latency_ms:
            await asyncio.sleep(state.latency_ms / 1000)
        if faults.flaky or faults.ratelimit:
            key = request_hash(body)
            seen = state.attempts.get(key, 0)
            state.attempts[key] = seen + 1
            if seen < faults.flaky:
                return error(503, f"injected flaky failure {seen + 1} of {faults.flaky}", "server_error",
                             "flaky"), None, None
            if seen < faults.ratelimit:
                return error(429, f"injected rate limit {seen + 1} of {faults.ratelimit}", "rate_limit_error",
                             "rate_limited", retry_after="0"), None, None
        if faults.error is not None:
            kind = "rate_limit_error" if faults.error == 429 else (
                "server_error" if faults.error >= 500 else "invalid_request_error")
            return error(faults.error, f"injected error {faults.error} (model {model_id!r})", kind,
                         "injected_error"), None, None
        if faults.context and (used := prompt_chars(body["messages"])) > faults.context:
            return error(400, context_error(faults.context, used), "invalid_request_error",
                         "context_length_exceeded"), None, None

        if state.cassette is not None:
            key = request_hash(body)
            if key in state.cassette or not state.record:
                try:
                    data = state.cassette.get(key)
                except CassetteMiss as miss:
                    return error(404, str(miss), "cassette_miss", hash=key, cassette=str(miss.path)), None, None
            else:
                upstream = await _forward(state, body)
                if isinstance(upstream, Response):
                    return upstream, None, None
                data = upstream
                state.cassette.record(key, body, data)
            return reply_recorded(body, data), None, data.get("usage") if isinstance(data, dict) else None

        messages = body["messages"]
        if faults.garbage or (faults.chat_garbage and state.model.prompt_format(messages) == "chat"):
            content = GARBAGE_TEXT
        elif faults.empty:
            content = ""
        else:
            try:
                if faults.off_type is not None:
                    content = state.model.complete_off_type(messages, off=faults.off_type,
                                                            response_format=body.get("response_format"))
                else:
                    content = state.model.complete(messages, response_format=body.get("response_format"))
            except Exception as exc:  # the model must never take the server down
                return error(500, f"reference model failed: {type(exc).__name__}: {exc}", "server_error"), None, None
        usage = usage_of(body, content)
        return reply(body, model_id, content, usage), content, usage

    async def list_models(request: Request) -> Response:
        return json_response({"object": "list", "data": [
            {"id": state.model_name, "object": "model", "created": 0, "owned_by": "stepbridge"}]})

    async def requests_log(request: Request) -> Response:
        if request.method == "DELETE":
            state.log.clear()
            return json_response({"cleared": True})
        try:
            since = int(request.query_params.get("since", "0")[:20] or 0)
        except ValueError:
            return error(400, "'since' must be an integer (a sequence number)", "invalid_request_error",
                         param="since")
        entries = state.log.entries(since)
        return json_response({"object": "list", "count": len(entries), "requests": entries})

    async def health(request: Request) -> Response:
        return json_response({"status": "ok", "model": state.model_name})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if state.client is not None:
                await state.client.aclose()
                state.client = None
            state.log.close()

    routes = []
    for prefix in ("/v1", ""):
        routes.append(Route(f"{prefix}/chat/completions", chat_completions, methods=["POST"]))
        routes.append(Route(f"{prefix}/models", list_models, methods=["GET"]))
    routes.append(Route("/_stepbridge/requests", requests_log, methods=["GET", "DELETE"]))
    routes.append(Route("/_stepbridge/health", health, methods=["GET"]))
    app = ReferenceApp(routes=routes, lifespan=lifespan)
    app.completion_handler = complete
    app.max_body_bytes = max_body_bytes
    app.state.reference = state
    app.state.log = state.log
    app.state.model = state.model
    return app


def _jitter(body: dict[str, Any], most_ms: int) -> int:
    """0..``most_ms``: the same for the same last user message (the ``jitter-<ms>`` fault)."""
    last = next((m.get("content") for m in reversed(body["messages"])
                 if isinstance(m, dict) and m.get("role") == "user"), "")
    digest = hashlib.sha256(str(last).encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:4], "big") % (most_ms + 1)


_COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})


def request_problem(body: Any) -> tuple[str, str | None] | None:
    """What is wrong with a completion request's shape (message, param), or None: checked before
    anything reads it, so a malformed request is a 400 naming the field, never a server error."""
    if not isinstance(body, dict):
        return "request body must be a JSON object with a 'messages' list", "messages"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "request body must be a JSON object with a 'messages' list", "messages"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object with 'role' and 'content'", "messages"
        if not isinstance(message.get("role"), str):
            return f"messages[{i}].role must be a string", "messages"
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            return f"messages[{i}].content must be a string, a list of content parts or null", "messages"
        if isinstance(content, list) and not all(isinstance(part, dict) for part in content):
            return f"messages[{i}].content parts must be objects", "messages"
    for name, types, what in (("model", (str,), "a string"), ("stream", (bool,), "a boolean"),
                              ("stream_options", (dict,), "an object"), ("response_format", (dict,), "an object")):
        if body.get(name) is not None and not isinstance(body[name], types):
            return f"{name!r} must be {what}", name
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES):
        return f"'n' must be an integer from 1 to {MAX_CHOICES}", "n"
    return None


async def _read_body(receive: Any, limit: int) -> bytes | Response | None:
    """The request body, read in chunks and abandoned as soon as it exceeds ``limit`` (then a 413
    that closes the connection: the unread rest is never buffered); None if the client went away."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> Response:
    response = error(413, f"request body exceeds {limit} bytes", "invalid_request_error", "request_too_large")
    response.headers["connection"] = "close"
    return response


def _declared_length(scope: Any) -> int | None:
    """The request's Content-Length (None: not given or not a number; the body is counted as read)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() and len(value) <= 20 else None
    return None


class ReferenceApp(Starlette):
    """Starlette, with the completion endpoint served directly (no middleware or router): it is the
    hot path of the I/O-bound benchmark, and this roughly halves its per-request cost. Every request
    with a declared body over ``max_body_bytes`` is refused here, whatever its path."""

    completion_handler: Any = None
    max_body_bytes: int = MAX_BODY_BYTES

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            declared = _declared_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                await _too_large(self.max_body_bytes)(scope, receive, send)
                return
            if (scope["method"] == "POST" and scope["path"] in _COMPLETION_PATHS
                    and self.completion_handler is not None):
                raw = await _read_body(receive, self.max_body_bytes)
                if raw is None:
                    return
                response = raw if isinstance(raw, Response) else await self.completion_handler(scope["path"], raw)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _forward(state: _ServerState, body: dict[str, Any]) -> Any:
    """Send a request upstream (non-streaming); the JSON answer, or an error Response to pass back."""
    import httpx

    if state.client is None:
        state.client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0))
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(state.upstream_key_env) if state.upstream_key_env else None
    if key:
        register_secret(key, source=f"${state.upstream_key_env}")
        headers["Authorization"] = f"Bearer {key}"
    upstream_body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    try:
        resp = await state.client.post(f"{state.upstream}/chat/completions", content=dumps(upstream_body),
                                       headers=headers)
    except httpx.HTTPError as exc:
        return error(502, f"upstream request failed: {type(exc).__name__}", "upstream_error")
    # the upstream may echo the key: never pass it on to clients, logs or cassettes
    if resp.status_code != 200:
        passthrough = {k: v for k, v in resp.headers.items() if k.lower() == "retry-after"}
        return Response(scrub(resp.text), status_code=resp.status_code, headers=passthrough,
                        media_type=resp.headers.get("content-type", "application/json"))
    try:
        return scrub(resp.json())
    except ValueError:
        return error(502, "upstream answered with invalid JSON", "upstream_error")
