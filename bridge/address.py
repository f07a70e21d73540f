"""Where a standalone pool lives: one default address per user, ``STEPBRIDGE_POOL``, and a fast check.

``stepbridge pool start`` binds the default client and worker sockets in the user's runtime folder
(``$XDG_RUNTIME_DIR/stepbridge``, else ``/run/user/UID/stepbridge``, else a user-only folder in the
temporary directory), so ``stepbridge run --backend pool``, ``pool status`` and ``worker`` find it
without an address being pasted around. ``STEPBRIDGE_POOL`` (or ``--pool``) names another broker.

A wrong address fails in about a second with what was tried, instead of a client waiting for a
broker that is not there: :func:`check_reachable` connects a plain socket first (ipc: the socket
file must exist and accept; tcp: the port must accept).
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from pathlib import Path

from stepbridge.errors import ConfigurationError

__all__ = ["POOL_ENV", "check_reachable", "client_address", "default_addresses", "runtime_dir"]

POOL_ENV = "STEPBRIDGE_POOL"
CLIENT_SOCKET, WORKER_SOCKET = "pool.sock", "pool-workers.sock"


def runtime_dir(*, create: bool = False) -> Path:
    """This user's private folder for sockets (0700; refused if another user owns it)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir():
        folder = Path(base) / "stepbridge"
    elif Path(f"/run/user/{os.getuid()}").is_dir():
        folder = Path(f"/run/user/{os.getuid()}") / "stepbridge"
    else:
        folder = Path(tempfile.gettempdir()) / f"stepbridge-{os.getuid()}"
    if create:
        folder.mkdir(mode=stat.S_IRWXU, exist_ok=True)
    if folder.exists():
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ConfigurationError(f"{folder} must be a folder only you can use (mode 0700, owned by you): "
                                     "remove it or set XDG_RUNTIME_DIR", where=str(folder))
    return folder


def default_addresses(*, create: bool = False) -> tuple[str, str]:
    """The default (client, worker) ``ipc://`` addresses of this user's standalone pool."""
    folder = runtime_dir(create=create)
    return f"ipc://{folder / CLIENT_SOCKET}", f"ipc://{folder / WORKER_SOCKET}"


def client_address(explicit: str | None) -> tuple[str, str]:
    """The broker address a client should use and where it came from (``--pool``, ``$STEPBRIDGE_POOL``
    or ``default``)."""
    if explicit:
        return explicit, "--pool"
    if env := os.environ.get(POOL_ENV):
        return env, f"${POOL_ENV}"
    return default_addresses()[0], "default"


def default_running() -> bool:
    """Whether a broker is listening on this user's default address."""
    try:
        check_reachable(default_addresses()[0])
    except ConfigurationError:
        return False
    return True


def check_reachable(address: str, *, timeout: float = 1.0, origin: str = "--pool") -> None:
    """Raise :class:`ConfigurationError` unless something accepts connections at ``address``."""
    start_hint = "start one with `stepbridge pool start`" if origin == "default" else \
        f"check {origin} (`stepbridge pool start` prints its address)"
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("ipc", "tcp"):
        raise ConfigurationError(f"pool address {address!r} is not ipc://PATH or tcp://HOST:PORT", where=origin)
    if scheme == "ipc":
        path = Path(rest)
        if not path.exists():
            raise ConfigurationError(f"no pool is running at {address} (no socket file there): {start_hint}",
                                     where=origin)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = str(path)
    else:
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(f"pool address {address!r}: expected tcp://HOST:PORT", where=origin)
        target = (host.strip("[]"), int(port))
        sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        stale = " (a stale socket file of a pool that is gone)" if scheme == "ipc" else ""
        raise ConfigurationError(f"no pool is running at {address}{stale}: {reason}; {start_hint}",
                                 where=origin) from None
    finally:
        sock.close()
