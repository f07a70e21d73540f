"""LM profiles and the chat-completions client.

Where prompts go is the operator's decision, never a program's: endpoints and keys come from
profiles (a TOML file and/or ``STEPBRIDGE_LM_*`` environment variables). A profile names the
*environment variable* that holds its key (``api_key_env``), so keys never sit in files, traces
or storage. With no profile configured, the built-in reference LM answers in-process.

Clients are transports: :class:`HTTPLMClient` speaks OpenAI-compatible chat completions over
aiohttp (connection reuse, timeouts, retries with jittered backoff on 429/5xx/connection errors, a
concurrency limit, an optional response cache); :class:`InProcessLMClient` calls the reference
model directly with no socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import time
import tomllib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigurationError, ContextWindowExceededError, LMError, did_you_mean
from .program import LMConfig
from .secrets import register_secret, register_url, scrub

if TYPE_CHECKING:  # aiohttp is imported by the HTTP client itself: commands that never call an LM skip its cost
    import aiohttp

log = logging.getLogger("stepbridge.lm")

__all__ = [
    "REFERENCE_PROFILE",
    "ChatRequest",
    "ChatResponse",
    "HTTPLMClient",
    "InProcessLMClient",
    "LMClient",
    "LMPool",
    "LMProfile",
    "load_profiles",
    "resolve_profile",
]


class LMProfile(BaseModel):
    """Where and how to reach an LM. Lives in operator config, never in program files."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    model: str | None = None
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(default=None, description="NAME of the environment variable holding the key")
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float = 60.0
    max_retries: int = 3
    concurrency: int = 256
    cache: bool = False

    @property
    def in_process(self) -> bool:
        return self.base_url is None

    def api_key(self) -> str | None:
        """The key from the environment variable ``api_key_env`` names (registered as a secret, so no
        trace, log or row ever shows it); None without one. Raises :class:`LMError` if it is unset."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise LMError(f"LM profile {self.name!r}: environment variable {self.api_key_env} is not set")
        register_secret(key, source=f"${self.api_key_env}")
        return key


#: The largest LM response read (an upstream is not trusted to stay small); beyond: LMError.
MAX_RESPONSE_BYTES = 64 * 2**20


async def _read_bounded(resp: aiohttp.ClientResponse, profile: str) -> bytes:
    if resp.content_length is not None and resp.content_length > MAX_RESPONSE_BYTES:
        raise LMError(f"LM response of {resp.content_length} bytes exceeds {MAX_RESPONSE_BYTES} ({profile}); "
                      "refused unread")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise LMError(f"LM response exceeds {MAX_RESPONSE_BYTES} bytes ({profile}); refused")
        chunks.append(chunk)
    return b"".join(chunks)


REFERENCE_PROFILE = LMProfile(name="reference", model="reference/deterministic")
_REFERENCE_MODEL = "reference/deterministic"


def config_path() -> Path:
    if env := os.environ.get("STEPBRIDGE_CONFIG"):
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "stepbridge" / "config.toml"


def load_profiles() -> dict[str, LMProfile]:
    """Profiles from the config file (``[lm.profiles.NAME]`` tables) and ``STEPBRIDGE_LM_*`` env vars.

    ``STEPBRIDGE_LM_BASE_URL`` / ``_MODEL`` / ``_API_KEY_ENV`` define (or override) the ``default`` profile.
    """
    profiles: dict[str, LMProfile] = {}
    path = config_path()
    if path.is_file():
        for name, raw in _profile_tables(path).items():
            try:
                profiles[name] = LMProfile(name=name, **raw)
            except (TypeError, ValidationError) as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()) \
                    if isinstance(exc, ValidationError) else str(exc)
                raise ConfigurationError(f"{path}: [lm.profiles.{name}]: {problems}",
                                         where=f"{path} [lm.profiles.{name}]") from None
    env = {k: os.environ.get(f"STEPBRIDGE_LM_{k.upper()}") for k in ("base_url", "model", "api_key_env")}
    if any(env.values()):
        base = profiles.get("default", LMProfile(name="default"))
        profiles["default"] = base.model_copy(update={k: v for k, v in env.items() if v})
    for profile in profiles.values():  # every key the operator configured is scrubbed from then on
        register_url(profile.base_url, source=f"the base_url of LM profile {profile.name!r}")
        if profile.api_key_env:
            register_secret(os.environ.get(profile.api_key_env), source=f"${profile.api_key_env}")
    return profiles


def _profile_tables(path: Path) -> dict[str, Any]:
    """The ``[lm.profiles.*]`` tables of a config file; a syntax error names the file and its line."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}", where=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}", where=str(path)) from None
    tables = data.get("lm", {}).get("profiles", {}) if isinstance(data.get("lm", {}), dict) else None
    if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
        raise ConfigurationError(f"{path}: [lm.profiles.NAME] must be tables of settings", where=str(path))
    return tables


def unknown_profile_message(name: str, profiles: dict[str, LMProfile]) -> str:
    """What to say about a profile name that is not configured (with the closest one, if any)."""
    known = ", ".join(sorted(profiles)) or "none configured"
    close = did_you_mean(name, [*profiles, "reference"])
    hint = f"did you mean {close!r}? " if close else ""
    return (f"unknown LM profile {name!r} ({hint}profiles: {known}, and the built-in 'reference'; "
            f"see {config_path()}; a model is written provider/model)")


def resolve_profile(config: LMConfig, profiles: dict[str, LMProfile] | None = None) -> tuple[LMProfile, str]:
    """The profile and model for an effective LM config. Unknown profile names are errors; with no
    profile at all, the reference LM."""
    profiles = load_profiles() if profiles is None else profiles
    if config.profile:
        if config.profile == "reference":
            profile = REFERENCE_PROFILE
        elif config.profile not in profiles:
            raise LMError(unknown_profile_message(config.profile, profiles))
        else:
            profile = profiles[config.profile]
    else:
        profile = profiles.get("default", REFERENCE_PROFILE)
    model = config.model or profile.model or REFERENCE_PROFILE.model
    assert model is not None
    return profile, model


@dataclass
class ChatRequest:
    """One chat-completions request body (OpenAI shape)."""

    model: str
    messages: list[dict[str, Any]]
    temperature: float | None = None
    max_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    #: best_of_n / refine attempts: part of the cache key only, never sent (as DSPy's ``rollout_id``)
    rollout_id: int | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": _wire_model(self.model), "messages": self.messages}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.response_format is not None:
            body["response_format"] = self.response_format
        return body

    def cache_key(self) -> str:
        body = self.body()
        if self.rollout_id is not None:
            body["rollout_id"] = self.rollout_id
        raw = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()


def _wire_model(model: str) -> str:
    # DSPy (litellm) strips the provider prefix for OpenAI-compatible endpoints; so do we.
    return model.split("/", 1)[1] if model.startswith("openai/") else model


@dataclass
class ChatResponse:
    text: str
    usage: dict[str, Any] = field(default_factory=dict)
    latency_ms: float = 0.0
    cached: bool = False


class LMClient(Protocol):
    async def complete(self, request: ChatRequest) -> ChatResponse: ...

    async def aclose(self) -> None: ...


class _Cache:
    def __init__(self, size: int = 10_000):
        self.size = size
        self._data: OrderedDict[str, ChatResponse] = OrderedDict()

    def get(self, key: str) -> ChatResponse | None:
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
        return hit

    def put(self, key: str, value: ChatResponse) -> None:
        self._data[key] = value
        if len(self._data) > self.size:
            self._data.popitem(last=False)


_WORDS: dict[str, int] = {}  # message text -> words: a system message is counted once, not per call


def _words(content: Any) -> int:
    if type(content) is not str:
        return len(str(content).split())
    n = _WORDS.get(content)
    if n is None:
        if len(_WORDS) >= 1024:
            _WORDS.clear()
        n = _WORDS[content] = len(content.split())
    return n


def _word_usage(messages: list[dict[str, Any]], text: str) -> dict[str, int]:
    prompt = 0
    for m in messages:
        content = m.get("content", "")
        known = _WORDS.get(content) if type(content) is str else None
        prompt += known if known is not None else _words(content)
    completion = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class InProcessLMClient:
    """The reference model called directly: no socket, no serialisation. The default LM."""

    def __init__(self, model: Any = None):
        if model is None:
            from .reference_lm import ReferenceModel

            model = ReferenceModel()
        self.model = model

    async def complete(self, request: ChatRequest) -> ChatResponse:
        start = time.perf_counter()
        garbage = request.model != _REFERENCE_MODEL and "/" in request.model and await self._inject_faults(request)
        try:
            text = self.model.complete(request.messages, response_format=request.response_format)
        except LMError:
            raise
        except Exception as exc:  # the model is ours, but it must never crash a run untyped
            raise LMError(f"reference model failed: {exc}") from exc
        if garbage:
            from .reference_lm import GARBAGE_TEXT

            text = GARBAGE_TEXT
        return ChatResponse(text, _word_usage(request.messages, text), (time.perf_counter() - start) * 1000)

    async def _inject_faults(self, request: ChatRequest) -> bool:
        """The reference server's fault names (``reference/error-500``, ``/slow-200``, ``/garbage``) work
        in-process too, so failure behaviour can be exercised without a socket."""
        from .reference_lm import parse_faults

        faults = parse_faults(request.model)
        if faults.slow_ms:
            await asyncio.sleep(faults.slow_ms / 1000)
        if faults.error is not None:
            retriable = faults.error == 429 or faults.error >= 500
            raise LMError(f"LM returned HTTP {faults.error} (injected by the reference model name)",
                          status=faults.error, retriable=retriable)
        if faults.context:
            from .reference_lm.faults import context_error, prompt_chars

            used = prompt_chars(request.messages)
            if used > faults.context:
                raise ContextWindowExceededError(f"LM returned HTTP 400: {context_error(faults.context, used)}")
        return faults.garbage

    async def aclose(self) -> None:
        return None


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, LMError) and exc.retriable


class HTTPLMClient:
    """OpenAI-compatible chat completions over one pooled :class:`aiohttp.ClientSession`.

    aiohttp directly, not httpx over an aiohttp transport: at 200 concurrent runs the httpx layer
    (its Request/Response/Headers models) cost about as much CPU per request as everything else the
    native executor does (bench/bench_io.py, CPU per run). The session is opened on first use, inside
    the event loop that uses it."""

    def __init__(self, profile: LMProfile):
        if profile.base_url is None:
            raise LMError(f"LM profile {profile.name!r} has no base_url")
        import aiohttp
        import yarl

        self.profile = profile
        headers = {"content-type": "application/json"}
        if (key := profile.api_key()) is not None:
            headers["authorization"] = f"Bearer {key}"
        register_url(profile.base_url, source=f"the base_url of LM profile {profile.name!r}")
        self._headers = headers
        # Built once: per-request URL parsing is a visible share of a request's cost.
        self._url = yarl.URL(profile.base_url.rstrip("/") + "/chat/completions")
        self._timeout = aiohttp.ClientTimeout(total=profile.timeout, connect=min(10.0, profile.timeout))
        self._http: aiohttp.ClientSession | None = None
        self._limit = asyncio.Semaphore(profile.concurrency)
        self._cache = _Cache() if profile.cache else None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.profile.concurrency, limit_per_host=self.profile.concurrency)
            # no proxy from the environment: where prompts go is the profile's base_url, nothing else
            self._http = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout,
                                               trust_env=False, skip_auto_headers=("User-Agent",))
        return self._http

    async def complete(self, request: ChatRequest) -> ChatResponse:
        key = request.cache_key() if self._cache is not None else ""
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            return ChatResponse(hit.text, hit.usage, 0.0, cached=True)
        content = _dumps(request.body())
        try:
            response = await self._send(content)
        except LMError as exc:
            if not exc.retriable or self.profile.max_retries < 1:
                raise
            # Only failed calls pay for the retry machinery: backoff with jitter, then the remaining tries.
            from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

            retrying = AsyncRetrying(
                stop=stop_after_attempt(self.profile.max_retries),
                wait=wait_exponential_jitter(initial=0.2, max=10.0),
                retry=retry_if_exception(_retriable),
                reraise=True,
            )
            await asyncio.sleep(0.2 + random.uniform(0, 0.2))
            async for attempt in retrying:
                with attempt:
                    response = await self._send(content)
        if self._cache is not None:
            self._cache.put(key, response)
        return response

    async def _send(self, content: bytes) -> ChatResponse:
        import aiohttp  # loaded by __init__; here only for the exception types (a dict look-up)

        start = time.perf_counter()
        async with self._limit:
            try:
                async with self._session().post(self._url, data=content) as resp:
                    status = resp.status
                    length = resp.content_length
                    if length is not None and length <= MAX_RESPONSE_BYTES:
                        raw = await resp.read()
                    else:  # too big, or of unknown length: read no further than the limit
                        raw = await _read_bounded(resp, self.profile.name)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                raise LMError(f"cannot reach LM at {self.profile.base_url}: {scrub(str(exc))}",
                              retriable=True) from exc
            except TimeoutError as exc:
                raise LMError(f"LM request timed out after {self.profile.timeout}s ({self.profile.name})",
                              retriable=True) from exc
            except aiohttp.ClientError as exc:
                raise LMError(f"cannot reach LM at {self.profile.base_url}: {scrub(str(exc))}",
                              retriable=True) from exc
        latency = (time.perf_counter() - start) * 1000
        if status != 200:
            detail = scrub(raw[:500].decode("utf-8", "replace"))
            if _error_code(raw) == "context_length_exceeded":  # as DSPy's OpenAI client classifies it
                raise ContextWindowExceededError(f"LM returned HTTP {status}: {detail}", status=status)
            retriable = status == 429 or status >= 500
            raise LMError(f"LM returned HTTP {status}: {detail}", status=status, retriable=retriable)
        try:
            data = orjson.loads(raw)
            text = data["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not text")
            usage = data.get("usage")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise LMError(f"LM returned a malformed chat completion: "
                          f"{scrub(raw[:200].decode('utf-8', 'replace'))!r}", status=status) from exc
        # an upstream may echo the key back: it never reaches outputs, traces or the next prompt
        return ChatResponse(scrub(text), dict(usage) if isinstance(usage, dict) else {}, latency)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def _dumps(body: dict[str, Any]) -> bytes:
    """The request body as compact UTF-8 JSON (what ``json.dumps(..., ensure_ascii=False)`` writes)."""
    try:
        return orjson.dumps(body)
    except TypeError:  # what orjson does not take (integers past 64 bits, say): the standard library
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _error_code(raw: bytes) -> str | None:
    """The OpenAI error ``code`` of a failed response, if it has one."""
    try:
        data = orjson.loads(raw)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


class LMPool:
    """One client per profile, shared by every run of an adapter (connection reuse)."""

    def __init__(self, profiles: dict[str, LMProfile] | None = None, *, cache: bool | None = None):
        self.profiles = load_profiles() if profiles is None else profiles
        self.cache = cache
        self._clients: dict[tuple[str, int], LMClient] = {}
        self._mounted: dict[str, LMClient] = {}
        self._warned: set[str] = set()

    def mount(self, profile_name: str, client: LMClient) -> None:
        """Serve a profile with this client (like an httpx transport), e.g. an in-process model for tests."""
        self._mounted[profile_name] = client

    def resolve(self, config: LMConfig) -> tuple[LMClient, str, LMProfile]:
        """The client, model and profile serving ``config`` (profiles come from the operator, never the program)."""
        profile, model = resolve_profile(config, self.profiles)
        if self.cache is not None and profile.cache != self.cache:
            profile = profile.model_copy(update={"cache": self.cache})
        # HTTP connections belong to one event loop: an adapter used from several loops gets one client each.
        if profile.name in self._mounted:
            return self._mounted[profile.name], model, profile
        if profile.in_process and not model.startswith("reference"):
            # No endpoint is configured for this model: say so, and never let the trace claim it answered.
            if model not in self._warned:
                self._warned.add(model)
                log.warning("no LM profile with a base_url is configured: model %r is answered by the built-in "
                            "reference LM (configure a profile, see `stepbridge run --help`)", model)
            model = _REFERENCE_MODEL
        key = (profile.name, id(asyncio.get_running_loop()) if not profile.in_process else 0)
        client = self._clients.get(key)
        if client is None:
            client = InProcessLMClient() if profile.in_process else HTTPLMClient(profile)
            self._clients[key] = client
        return client, model, profile

    async def aclose(self) -> None:
        """Close every client (HTTP connections), mounted ones included."""
        clients, self._clients = self._clients, {}
        for client in [*clients.values(), *self._mounted.values()]:
            await client.aclose()
