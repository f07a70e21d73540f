"""The ``pool`` adapter: run programs in out-of-process workers over ZeroMQ.

Two modes, one class:

- **local** (default): ``PoolAdapter(workers=4, backend="native")`` binds a ROUTER on a fresh
  user-only ipc socket in this process and spawns the workers as child processes
  (``python -m stepbridge.bridge.worker``). They exit when this process dies.
- **client**: ``PoolAdapter(address="ipc://...|tcp://...")`` talks to a standalone broker
  (``stepbridge pool start``) that several client processes share.

Either way it is an ordinary adapter: the core :class:`stepbridge.Runner` checks capabilities,
validates inputs and records runs around it. ``capabilities`` is the union of what the workers
declare, plus ``out_of_process``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from stepbridge.adapter import RunOptions
from stepbridge.errors import (
    RunCancelledError,
    RunTimeoutError,
    StepbridgeError,
    WorkerLostError,
    error_from_dict,
)
from stepbridge.program import Program
from stepbridge.result import RunResult, StepTrace

from . import protocol as p
from .net import CurveKeys, configure_dealer
from .router import Router, wire_options

__all__ = ["PoolAdapter", "query_status"]

log = logging.getLogger("stepbridge.bridge.pool")


def declared_capabilities(backend: str) -> frozenset[str]:
    """What an adapter declares, read from its factory without starting it when possible."""
    from stepbridge.registry import adapters, load_adapter

    try:
        factory: Any = adapters.get(backend) if ":" not in backend else None
    except KeyError:
        factory = None
    caps = getattr(factory, "capabilities", None)
    if isinstance(caps, frozenset | set):
        return frozenset(caps)
    adapter = load_adapter(backend)
    return frozenset(adapter.capabilities)


class PoolAdapter:
    """Adapter that runs programs on a pool of worker processes (local, or a broker's)."""

    name = "pool"

    def __init__(
        self,
        *,
        address: str | None = None,
        workers: int = 2,
        backend: str = "native",
        capacity: int = 16,
        queue_size: int = 1000,
        saturation_wait: float = 1.0,
        heartbeat: float = 1.0,
        liveness: int = 3,
        max_attempts: int = 3,
        cancel_grace: float = 2.0,
        bind: str | None = None,
        start_timeout: float = 60.0,
        curve_secret: str | Path | None = None,
        curve_server: str | Path | None = None,
        store: Any = None,
        store_url: str | None = None,
        warm: bool | None = None,
        **router_options: Any,
    ):
        self.address = address
        self.backend = backend
        self.saturation_wait = saturation_wait
        self.start_timeout = start_timeout
        self._router: Router | None = None
        self._client: _BrokerClient | None = None
        self._start_lock: asyncio.Lock | None = None
        # client mode: this client's key pair and the broker's public key; local mode: the router's key pair
        self._curve = CurveKeys.from_files(curve_secret, curve_server) if curve_secret and address else None
        self._remote_caps: frozenset[str] | None = None
        if address is None:
            if curve_secret is not None:
                router_options["curve_secret"] = curve_secret
            self._declared = declared_capabilities(backend)
            self._router_kwargs: dict[str, Any] = dict(
                workers=workers, backend=backend, capacity=capacity, queue_size=queue_size,
                saturation_wait=saturation_wait, heartbeat=heartbeat, liveness=liveness, max_attempts=max_attempts,
                cancel_grace=cancel_grace, expected_capabilities=self._declared, store=store, store_url=store_url,
                warm=warm, **router_options)
            self._bind = bind

    # -- the adapter protocol ----------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[str]:
        if self.address is None:
            caps = set(self._declared)
            if self._router is not None:
                caps |= self._router.capabilities()
            return frozenset(caps | {"out_of_process"})
        if self._remote_caps is None:
            status = query_status(self.address, curve=self._curve)
            self._remote_caps = frozenset(status.get("capabilities", [])) | {"out_of_process"}
        return self._remote_caps

    @property
    def router(self) -> Router | None:
        return self._router

    async def start(self) -> None:
        """Bind and spawn (local) or connect (client); idempotent. ``prepare`` and ``run`` call it."""
        if self._router is not None or self._client is not None:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._router is not None or self._client is not None:
                return
            if self.address is None:
                router = Router(self._bind, **self._router_kwargs)
                await router.start()
                self._router = router
                if router.n_workers:
                    await router.wait_ready(1, self.start_timeout)
            else:
                client = _BrokerClient(self.address, curve=self._curve)
                await client.start()
                self._client = client

    async def prepare(self, program: Program) -> None:
        await self.start()
        if self._router is not None:
            self._router.remember_program(program.content_hash, program.to_dict(), str(program.base_dir))

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions | None = None) -> RunResult:
        options = options or RunOptions()
        await self.start()
        if self._router is not None:
            return await self._router.submit(program, inputs, options)
        assert self._client is not None
        return await self._client.submit(program, inputs, options, wait=self.saturation_wait)

    async def aclose(self) -> None:
        if self._router is not None:
            router, self._router = self._router, None
            await router.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def status(self) -> dict[str, Any]:
        if self._router is not None:
            return self._router.status()
        if self.address is not None:
            return query_status(self.address, curve=self._curve)
        return {}


class _BrokerClient:
    """A DEALER connection to a standalone broker; requests carry their program inline."""

    def __init__(self, address: str, *, curve: CurveKeys | None = None):
        self.address = address
        self.curve = curve
        self.ctx = zmq.asyncio.Context()
        self.sock: zmq.asyncio.Socket | None = None
        self._pending: dict[bytes, asyncio.Future[p.Reply]] = {}
        self._programs: dict[str, tuple[dict[str, Any], str]] = {}
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        configure_dealer(sock, f"client-{uuid.uuid4().hex}".encode(), linger_ms=0)
        sock.setsockopt(zmq.IMMEDIATE, 0)  # let the first requests wait for the connection
        if self.curve is not None:
            self.curve.apply_client(sock)
        sock.connect(self.address)
        self.sock = sock
        self._tasks.append(asyncio.ensure_future(self._reader()))
        self._tasks.append(asyncio.ensure_future(self._monitor()))

    async def _reader(self) -> None:
        assert self.sock is not None
        while True:
            frames = await self.sock.recv_multipart()
            try:
                msg = p.decode(frames)
            except p.ProtocolError as exc:
                log.warning("dropped a bad frame from the broker: %s", exc)
                continue
            if isinstance(msg.body, p.Reply):
                fut = self._pending.pop(msg.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg.body)

    async def _monitor(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        assert self.sock is not None
        mon = self.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            while True:
                await recv_monitor_message(mon)
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(WorkerLostError(f"lost the connection to the broker at {self.address}"))
                self._pending.clear()
        finally:
            mon.close(linger=0)

    async def submit(self, program: Program, inputs: dict[str, Any], options: RunOptions,
                     wait: float | None) -> RunResult:
        assert self.sock is not None
        known = self._programs.get(program.content_hash)
        if known is None:
            known = self._programs[program.content_hash] = (program.to_dict(), str(program.base_dir))
        opts = wire_options(options)
        body = p.Request(execution_id=options.execution_id, program_hash=program.content_hash, inputs=inputs,
                         attempt=options.attempt, budget=options.timeout, options=opts, program=known[0],
                         base_dir=known[1], wait=wait)
        rid = uuid.uuid4().bytes
        fut: asyncio.Future[p.Reply] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.sock.send_multipart(p.encode(body, rid))
        try:
            if options.timeout is not None:
                # the broker enforces the deadline; this is the backstop if the broker itself is gone
                reply = await asyncio.wait_for(asyncio.shield(fut), options.timeout + 30.0)
            else:
                reply = await asyncio.shield(fut)
        except asyncio.CancelledError:
            self._pending.pop(rid, None)
            with contextlib.suppress(Exception):
                self.sock.send_multipart(p.encode(p.Cancel(attempt=options.attempt), rid), flags=zmq.NOBLOCK)
            raise
        except TimeoutError:
            self._pending.pop(rid, None)
            raise RunTimeoutError(f"no answer from the broker within {options.timeout}s",
                                  timeout=options.timeout) from None
        if reply.error is not None:
            exc = error_from_dict(reply.error)
            if reply.trace:
                with contextlib.suppress(Exception):
                    exc.trace = [StepTrace.model_validate(t) for t in reply.trace]
            raise exc
        if reply.result is None:
            raise StepbridgeError("the broker sent an empty reply")
        result: RunResult = p.result_from_wire(reply.result, backend="pool", attempts=reply.attempt)
        return result

    async def close(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RunCancelledError("the pool client was closed"))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.sock is not None:
            self.sock.close(linger=0)
        self.ctx.term()


def query_status(address: str, *, curve: CurveKeys | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a broker for its status (blocking). Raises :class:`WorkerLostError` if it does not answer."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        configure_dealer(sock, f"status-{uuid.uuid4().hex}".encode(), linger_ms=0)
        sock.setsockopt(zmq.IMMEDIATE, 0)
        if curve is not None:
            curve.apply_client(sock)
        sock.connect(address)
        rid = uuid.uuid4().bytes
        sock.send_multipart(p.encode(p.Status(), rid))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000)):
                raise WorkerLostError(f"no pool broker answered at {address} within {timeout:.0f}s")
            try:
                msg = p.decode(sock.recv_multipart())
            except p.ProtocolError:
                continue
            if isinstance(msg.body, p.Status) and msg.request_id == rid and msg.body.status is not None:
                return msg.body.status
    finally:
        sock.close(linger=0)
        ctx.term()
