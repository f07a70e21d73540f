"""Socket set-up shared by the router, the workers and clients: options, endpoints, CURVE keys.

Every option is set on purpose:

- ``ROUTER_MANDATORY``: sending to an identity that is gone raises instead of dropping silently,
  so the router notices and reroutes.
- ``IMMEDIATE`` (DEALER side): queue messages only on completed connections; with no router, a
  send fails at once (``zmq.Again``) rather than piling up for a router that may never come.
- ``MAXMSGSIZE``: a peer sending a bigger message is disconnected by libzmq before we allocate it.
- ``LINGER``: the router drops unsent messages at close (its callers were already answered or
  failed); a worker lingers briefly so its last replies and DISCONNECT get out.
- high-water marks are raised above the most messages in flight a pool allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from .protocol import MAX_BODY_BYTES

__all__ = [
    "CurveKeys",
    "Pump",
    "configure_dealer",
    "configure_router",
    "default_ipc_endpoint",
    "generate_keypair",
    "is_loopback_or_ipc",
    "load_keypair",
    "secure_ipc",
]

HWM = 100_000
log = logging.getLogger("stepbridge.bridge.net")


def configure_router(sock: zmq.Socket[Any], *, max_msg: int = MAX_BODY_BYTES + 4096) -> None:
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)


def configure_dealer(sock: zmq.Socket[Any], identity: bytes, *, max_msg: int = MAX_BODY_BYTES + 4096,
                     linger_ms: int = 1000) -> None:
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)


def default_ipc_endpoint() -> tuple[str, Path]:
    """A fresh ``ipc://`` endpoint inside a new user-only (0700) temporary directory."""
    directory = Path(tempfile.mkdtemp(prefix="stepbridge-pool-"))
    os.chmod(directory, stat.S_IRWXU)
    return f"ipc://{directory / 'router.sock'}", directory


def secure_ipc(endpoint: str) -> None:
    """Make a bound ipc socket file user-only (its directory should already be 0700)."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if os.path.exists(path):
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)


def is_loopback_or_ipc(endpoint: str) -> bool:
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


class CurveKeys:
    """This side's key pair and, for a client, the server's public key (all Z85 bytes)."""

    def __init__(self, public: bytes, secret: bytes, server_public: bytes | None = None):
        self.public = public
        self.secret = secret
        self.server_public = server_public

    @classmethod
    def from_files(cls, secret_file: str | Path, server_public_file: str | Path | None = None) -> CurveKeys:
        public, secret = load_keypair(secret_file)
        if secret is None:
            raise ValueError(f"{secret_file} holds no secret key (pass the .key_secret file)")
        server = load_keypair(server_public_file)[0] if server_public_file else None
        return cls(public, secret, server)

    def apply_server(self, sock: zmq.Socket[Any]) -> None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)

    def apply_client(self, sock: zmq.Socket[Any]) -> None:
        if self.server_public is None:
            raise ValueError("a CURVE client needs the server's public key")
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


def generate_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (0600) into ``directory``."""
    import zmq.auth

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(directory, name)
    os.chmod(secret_file, stat.S_IRUSR | stat.S_IWUSR)
    return Path(public_file), Path(secret_file)


def load_keypair(path: str | Path) -> tuple[bytes, bytes | None]:
    import zmq.auth

    public, secret = zmq.auth.load_certificate(str(path))
    return public, secret


_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_LAST = int(zmq.NOBLOCK)


_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)


def _backend(sock: zmq.Socket[Any], name: str) -> Callable[..., Any]:
    """The unbound method ``name`` of the socket's backend class (below pyzmq's pure-Python sugar
    layer, which costs more than the call itself for small messages: enum flags, an option lookup
    per frame)."""
    for klass in type(sock).__mro__:
        if klass.__module__.startswith("zmq.backend") and name in vars(klass):
            method: Callable[..., Any] = vars(klass)[name]
            return method
    method = getattr(type(sock), name)  # pragma: no cover - other backends
    return method


class Pump:
    """Reads a ZeroMQ socket from the asyncio loop without a future per message.

    The socket's FD is edge-triggered: it signals when libzmq's state changes, not while messages
    are waiting. So a readable FD drains the socket until ``EAGAIN``, and every send is followed by
    a look at ``EVENTS`` (a send can consume the edge), except a send made by a handler while the
    socket drains: the drain goes on reading until ``EAGAIN`` anyway, which re-arms the edge just the
    same (a router answering a burst of replies with requests saves a system call per request).
    Sends never block: a full or unroutable peer is reported as ``False`` and handled by the caller,
    never silently queued.
    """

    def __init__(self, sock: zmq.Socket[Any], handler: Callable[[list[bytes]], None],
                 loop: asyncio.AbstractEventLoop, *, budget: int = 500):
        self.sock = sock
        self.handler = handler
        self.loop = loop
        self.budget = budget
        self.fd = int(sock.getsockopt(zmq.FD))
        self._scheduled = False
        self._closed = False
        self._draining = False  # inside a drain, which reads until EAGAIN: sends need no EVENTS look
        self._outbox: list[list[bytes]] = []
        self._flush_scheduled = False
        self._raw_send = _backend(sock, "send")
        self._raw_recv = _backend(sock, "recv")
        self._raw_get = _backend(sock, "get")
        loop.add_reader(self.fd, self._drain)
        self.kick()

    def _drain(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        if self._read(self.budget):
            self._schedule()  # more waiting: continue after other callbacks had their turn

    def _read(self, budget: int) -> bool:
        """Handle up to ``budget`` messages; True if that many were handled (more may wait). Ends at
        ``EAGAIN``, which leaves the edge re-armed; any other way out looks at ``EVENTS`` afterwards,
        as a handler's sends skipped it."""
        self._draining = True
        try:
            for _ in range(budget):
                try:
                    frames = self._recv()
                except zmq.Again:
                    return False
                except zmq.ZMQError as exc:
                    log.warning("receive failed: %s", exc)
                    self._draining = False
                    self.kick()
                    return False
                try:
                    self.handler(frames)
                except Exception:  # a bug in a handler must not stop the pump
                    log.exception("error handling a message")
                if self._closed:
                    return False
            return True
        finally:
            self._draining = False

    def _recv(self) -> list[bytes]:
        """One whole message (``zmq.Again`` if none is waiting). Each frame says itself whether more
        follow; pyzmq's ``recv_multipart`` asks the socket instead, an option lookup per frame."""
        recv, sock = self._raw_recv, self.sock
        frame = recv(sock, _NOBLOCK, False)
        frames = [frame.bytes]
        while frame.more:  # the rest of a multipart message has arrived with its first frame
            frame = recv(sock, _NOBLOCK, False)
            frames.append(frame.bytes)
        return frames

    def drain_all(self) -> None:
        """Handle the messages waiting now (a large budget): callers about to judge by what has arrived."""
        if self._closed:
            return
        if self._read(100 * self.budget):
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self.loop.call_soon(self._drain)

    def kick(self) -> None:
        if self._closed:
            return
        try:
            if self._raw_get(self.sock, zmq.EVENTS) & _POLLIN:
                self._schedule()
        except zmq.ZMQError:
            pass

    def send(self, frames: list[bytes]) -> bool:
        if self._closed:
            return False
        try:
            self._send_frames(frames)
            return True
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EAGAIN, errno.EHOSTUNREACH):
                log.warning("send failed: %s", exc)
            return False
        finally:
            if not self._draining:
                self.kick()

    def _send_frames(self, frames: list[bytes]) -> None:
        # the backend's send with plain int flags: pyzmq's send_multipart combines IntFlag enums per
        # frame, which costs more than the send itself for small messages. A multipart message is
        # atomic in libzmq: if the first frame is accepted, the rest are too.
        send = self._raw_send
        sock = self.sock
        for frame in frames[:-1]:
            send(sock, frame, _MORE)
        send(sock, frames[-1], _LAST)

    @property
    def queued(self) -> bool:
        """Messages wait for the end of this loop turn (:meth:`send_soon`): a direct send would overtake them."""
        return bool(self._outbox)

    def send_soon(self, frames: list[bytes]) -> bool:
        """Send at the end of this loop turn, together with anything else queued meanwhile (fewer
        wake-ups of the I/O thread under load). A failure is logged; use :meth:`send` to be told."""
        if self._closed:
            return False
        self._outbox.append(frames)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, []
        if self._closed:
            return
        failed = 0
        for frames in outbox:
            try:
                self._send_frames(frames)
            except zmq.ZMQError as exc:
                failed += 1
                if failed == 1:
                    log.warning("send failed: %s", exc)
        if failed:
            log.warning("%d queued message(s) could not be sent", failed)
        self.kick()

    def close(self, linger: int = 0) -> None:
        if self._closed:
            return
        if self._outbox:  # replies queued this turn still go out (a draining worker's last answers)
            self._flush()
        self._closed = True
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.fd)
        self.sock.close(linger=linger)
