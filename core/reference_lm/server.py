"""Running the reference LM: :func:`running_server` (a background thread, for tests),
:func:`running_server_process` (a child process with its own GIL, for benchmarks), :func:`serve`
(blocking, behind ``stepbridge lm serve``) and :func:`main` (``python -m stepbridge.reference_lm``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from starlette.applications import Starlette

from .app import MAX_BODY_BYTES, create_app
from .request_log import RequestLog

__all__ = ["DEFAULT_PORT", "ServerURL", "main", "running_server", "running_server_process", "serve"]

#: The port ``stepbridge lm serve`` listens on when none is given.
DEFAULT_PORT = 8765

class ServerURL(str):
    """The base URL of a running reference server (``http://127.0.0.1:PORT/v1``), usable as a plain
    string (``dspy.LM(..., api_base=url)``), with ``root``, ``port`` and, in-process, ``app``/``log``."""

    root: str
    port: int
    app: Starlette | None
    log: RequestLog | None
    pid: int | None  # the server's process (running_server_process), else None

    def __new__(cls, root: str, port: int, app: Starlette | None = None) -> ServerURL:
        self = super().__new__(cls, root + "/v1")
        self.root = root
        self.port = port
        self.app = app
        self.log = app.state.log if app is not None else None
        self.pid = None
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # copies and pickles (DSPy deep-copies LM settings) become the plain URL string
        return (str, (str(self),))


#: Seconds a client has to send a whole request, head and body, from its first byte (or from connecting).
REQUEST_TIMEOUT = 30.0
#: Seconds an idle keep-alive connection stays open (above aiohttp's and httpx's client-side expiry).
KEEP_ALIVE_TIMEOUT = 20.0
#: The largest request line plus headers accepted.
MAX_HEAD_BYTES = 64 * 1024
_TIMEOUT_BODY = (b'{"error":{"message":"request not received in time","type":"invalid_request_error",'
                 b'"code":"request_timeout","param":null}}')


def _bounded_protocol(request_timeout: float, max_head_bytes: int) -> type[Any]:
    """uvicorn's httptools protocol with what a server facing the network needs and uvicorn lacks:
    a deadline for the whole request (a slowloris dripping its head or body gets a 408 and is
    closed) and a cap on the request head (uvicorn's httptools protocol keeps every header)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _head = 0

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(request_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                     % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            self._head = 0
            self._arm()
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value))
            super().on_header(name, value)

        def _count(self, size: int) -> None:
            self._head += size
            if self._head > max_head_bytes:  # the parser turns this into a 400 and closes the connection
                raise ValueError(f"request head exceeds {max_head_bytes} bytes")

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

    return BoundedHttpToolsProtocol


def _uvicorn_config(app: Starlette, *, request_timeout: float = REQUEST_TIMEOUT,
                    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT, max_head_bytes: int = MAX_HEAD_BYTES,
                    **kw: Any) -> Any:
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover
        loop = "asyncio"
    return uvicorn.Config(app, loop=loop, http=_bounded_protocol(request_timeout, max_head_bytes),
                          log_level="warning", access_log=False, lifespan="on", backlog=4096,
                          timeout_keep_alive=max(1, int(keep_alive_timeout)),
                          h11_max_incomplete_event_size=max_head_bytes, **kw)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def _url_root(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def running_server(host: str = "127.0.0.1", port: int = 0, **options: Any) -> Iterator[ServerURL]:
    """Run the reference server in a background thread (for tests); yields its :class:`ServerURL`.

    ``options`` go to :func:`create_app`, except ``request_timeout``, ``keep_alive_timeout`` and
    ``max_head_bytes`` (the connection limits of :func:`serve`). The port is free-picked when 0. The server shares this
    process's GIL: for throughput benchmarks use :func:`running_server_process`.
    """
    import uvicorn

    limits = {k: options.pop(k) for k in _SERVER_OPTIONS if k in options}
    app = create_app(**options)
    sock = _bind(host, port)
    server = uvicorn.Server(_uvicorn_config(app, **limits))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="stepbridge-reference-lm",
                              daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("reference LM server failed to start")
            time.sleep(0.005)
        yield ServerURL(_url_root(host, sock.getsockname()[1]), sock.getsockname()[1], app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


_SERVER_OPTIONS = ("request_timeout", "keep_alive_timeout", "max_head_bytes")


def _cli_args(options: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


@contextlib.contextmanager
def running_server_process(host: str = "127.0.0.1", port: int = 0, **options: Any) -> Iterator[ServerURL]:
    """Run the reference server in a child process (own GIL, for benchmarks); yields its URL.

    Accepts the options of :func:`serve`; read the request log over HTTP (``url.log`` is None).
    """
    cmd = [sys.executable, "-m", "stepbridge.reference_lm", "--host", host, "--port", str(port),
           *_cli_args(options)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://\S+)/v1\s*$", line)
        if not m:
            raise RuntimeError(f"reference LM process did not start (printed {line!r})")
        root = m.group(1)
        url = ServerURL(root, int(root.rsplit(":", 1)[1]))
        url.pid = proc.pid
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    cassette: str | os.PathLike[str] | None = None,
    record: bool = False,
    upstream: str | None = None,
    upstream_key_env: str | None = "OPENAI_API_KEY",
    latency_ms: float = 0.0,
    fault: str | None = None,
    log_path: str | os.PathLike[str] | None = None,
    log_limit: int = 100_000,
    log_bytes: int = 64 * 2**20,
    max_body_bytes: int = MAX_BODY_BYTES,
    request_timeout: float = REQUEST_TIMEOUT,
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
) -> None:
    """Serve until interrupted (``stepbridge lm serve``). Prints one line with the base URL first.

    Bounded like a server facing the network: request bodies up to ``max_body_bytes`` (413 beyond),
    a request head up to 64 KiB, ``request_timeout`` seconds to send a whole request, idle keep-alive
    connections closed after ``keep_alive_timeout``, the request log at most ``log_limit`` entries and
    ``log_bytes`` of bodies.

    ``record`` needs ``upstream`` and ``cassette``; ``cassette`` alone replays. Raises ValueError on
    an invalid combination before binding anything.
    """
    import uvicorn

    app = create_app(latency_ms=latency_ms, fault=fault, log_limit=log_limit, log_path=log_path,
                     cassette=cassette, record=record, upstream=upstream, upstream_key_env=upstream_key_env,
                     log_bytes=log_bytes, max_body_bytes=max_body_bytes)
    sock = _bind(host, port)
    mode = "record" if record else ("replay" if cassette is not None else "reference")
    print(f"stepbridge reference LM ({mode}) listening on {_url_root(host, sock.getsockname()[1])}/v1",
          flush=True)
    try:
        uvicorn.Server(_uvicorn_config(app, request_timeout=request_timeout,
                                       keep_alive_timeout=keep_alive_timeout)).run(sockets=[sock])
    finally:
        sock.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m stepbridge.reference_lm``: the same options as ``stepbridge lm serve``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m stepbridge.reference_lm", description=main.__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--cassette")
    p.add_argument("--record", action="store_true")
    p.add_argument("--upstream")
    p.add_argument("--upstream-key-env", default="OPENAI_API_KEY")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--fault")
    p.add_argument("--log-path")
    p.add_argument("--log-limit", type=int, default=100_000)
    p.add_argument("--log-bytes", type=int, default=64 * 2**20)
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    p.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT)
    p.add_argument("--keep-alive-timeout", type=float, default=KEEP_ALIVE_TIMEOUT)
    a = p.parse_args(argv)
    try:
        serve(a.host, a.port, cassette=a.cassette, record=a.record, upstream=a.upstream,
              upstream_key_env=a.upstream_key_env, latency_ms=a.latency_ms, fault=a.fault,
              log_path=a.log_path, log_limit=a.log_limit, log_bytes=a.log_bytes,
              max_body_bytes=a.max_body_bytes, request_timeout=a.request_timeout,
              keep_alive_timeout=a.keep_alive_timeout)
    except ValueError as exc:
        p.error(str(exc))
    except KeyboardInterrupt:  # pragma: no cover
        pass
