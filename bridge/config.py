"""One object for every setting of a pool, a broker and the workers they spawn.

Like httpx's ``Limits`` and ``Timeout``: build it once, pass it around, change it with
:meth:`PoolConfig.replace`. ``PoolAdapter(workers=4)`` is shorthand for
``PoolAdapter(config=PoolConfig(workers=4))``; an unknown setting is a ``TypeError`` at once.

Endpoints and keys (roles are separate):

- ``worker_bind`` is where workers connect (default: a fresh user-only ipc socket). Over TCP it
  requires CURVE: the router's key pair (``curve_secret``) and the operator-authorised worker public
  keys (``curve_workers``, a directory of ``.key`` files). Local workers use the router's own pair.
- ``client_bind`` (standalone broker only) is where clients connect, on another socket with its
  own key set (``curve_clients``). A client key never lets a peer act as a worker: the client socket
  refuses worker commands, and the worker socket admits only worker keys.

Data files (retrieval corpora) never resolve against a path a client sends: the client ships them
by content (sha256) and each worker caches them under ``data_cache``; or, when the client did not
ship a corpus, the worker resolves it under ``data_root``, a folder its operator chose.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from .protocol import MAX_BODY_BYTES
from .scheduler import Rules

__all__ = ["PoolConfig", "with_settings"]

C = TypeVar("C")


def with_settings(base: C, kind: str, settings: dict[str, Any]) -> C:
    """The dataclass ``base`` with ``settings`` applied; ``TypeError`` naming any unknown one."""
    names = {f.name for f in dataclasses.fields(cast(Any, base))}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"unknown {kind} setting(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    return cast(C, dataclasses.replace(cast(Any, base), **settings)) if settings else base


@dataclass(frozen=True, kw_only=True)
class PoolConfig:
    """Settings of a pool (local or client of a broker), a standalone broker, and their local workers."""

    # -- local workers -----------------------------------------------------------------------------
    workers: int = 2  #: local worker processes to spawn (0: only remote workers)
    backend: str = "native"  #: adapter the local workers host: native, dspy, or package.module:factory
    capacity: int = 16  #: runs at once per local worker
    #: environment of local workers (default: this process's); never printed (it may hold keys)
    worker_env: dict[str, str] | None = field(default=None, repr=False)
    worker_args: tuple[str, ...] = ()  #: extra ``stepbridge worker`` arguments for local workers
    worker_log_level: str = "WARNING"
    store_url: str | None = None  #: store local workers look programs up in (read-only) and warm from
    warm: bool | None = None  #: local workers build aliased stored programs at start (default: with a store)
    data_cache: Path | None = None  #: where local workers cache shipped data files (default: private temp)
    data_root: Path | None = None  #: operator folder for corpora a client did not ship (default: none)

    # -- queue and timing --------------------------------------------------------------------------
    queue_size: int = 1000  #: waiting requests before submitters wait, then get PoolSaturatedError
    saturation_wait: float = 1.0  #: seconds a submitter waits for queue room
    heartbeat: float = 1.0  #: seconds between heartbeats
    liveness: int = 3  #: missed heartbeats before a worker counts as dead
    max_attempts: int = 3  #: attempts per request when workers die (never more than 1 with side effects)
    retry_backoff: float = 0.02  #: first retry delay (doubles per attempt)
    cancel_grace: float = 2.0  #: seconds a worker gets to honour a cancel or its deadline
    quarantine_after: int = 5  #: consecutive exits before READY that quarantine a local slot
    quarantine_time: float = 60.0  #: seconds a quarantined slot waits before the next spawn
    start_timeout: float = 60.0  #: seconds ``start()`` waits for the first local worker
    max_message: int = MAX_BODY_BYTES + 4096  #: largest frame accepted (libzmq drops the peer beyond)
    broker_data_bytes: int = 512 * 2**20  #: memory a broker keeps for data files clients shipped
    data_cache_bytes: int = 4 * 2**30  #: disk each local worker's data cache may use

    # -- endpoints and keys ------------------------------------------------------------------------
    worker_bind: str | None = None  #: where workers connect (default: a user-only ipc socket)
    client_bind: str | None = None  #: where clients connect to a broker (default: a user-only ipc socket)
    curve_secret: Path | None = None  #: this side's CURVE ``.key_secret`` (router, client or worker)
    curve_server: Path | None = None  #: the broker's public ``.key`` (clients and remote workers)
    curve_clients: Path | None = None  #: directory of allowed client public keys (broker client socket)
    curve_workers: Path | None = None  #: directory of authorised worker public keys (worker socket)
    allow_insecure_tcp: bool = False  #: loopback TCP without CURVE (tests only)

    def __post_init__(self) -> None:
        for name in ("workers", "quarantine_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("capacity", "queue_size", "liveness", "max_message", "broker_data_bytes", "data_cache_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("saturation_wait", "retry_backoff", "cancel_grace", "quarantine_time", "start_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.heartbeat <= 0:
            raise ValueError("heartbeat must be > 0")
        for name in ("curve_secret", "curve_server", "curve_clients", "curve_workers", "data_cache", "data_root"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if not isinstance(self.worker_args, tuple):
            object.__setattr__(self, "worker_args", tuple(self.worker_args))

    @classmethod
    def from_settings(cls, config: PoolConfig | None = None, **settings: Any) -> PoolConfig:
        """``config`` with ``settings`` applied (``TypeError`` naming an unknown one)."""
        return with_settings(config or cls(), "pool", settings)

    def replace(self, **changes: Any) -> PoolConfig:
        """A copy with ``changes`` (checked like :meth:`from_settings`)."""
        return self.from_settings(self, **changes)

    def rules(self, expected_capabilities: frozenset[str] = frozenset()) -> Rules:
        """The scheduler's share of these settings."""
        return Rules(queue_size=self.queue_size, heartbeat=self.heartbeat, liveness=self.liveness,
                     max_attempts=self.max_attempts, retry_backoff=self.retry_backoff, cancel_grace=self.cancel_grace,
                     quarantine_after=self.quarantine_after, quarantine_time=self.quarantine_time,
                     expected_capabilities=expected_capabilities)
