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
from typing import Any

import zmq
import zmq.asyncio
from stepbridge.adapter import RunOptions
from stepbridge.errors import (
    RunCancelledError,
    RunTimeoutError,
    StepbridgeError,
    WorkerLostError,
)
from stepbridge.program import Program
from stepbridge.recorder import ProgramSource
from stepbridge.result import RunResult

from . import protocol as p
from .config import PoolConfig
from .data import LocalFiles
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
    """Adapter that runs programs on a pool of worker processes (local, or a broker's).

    ``PoolAdapter(config=PoolConfig(...))``, or the same settings as keywords:
    ``PoolAdapter(workers=4, backend="dspy")``; ``address=`` makes it a client of a standalone broker.
    """

    name = "pool"

    def __init__(self, config: PoolConfig | None = None, *, address: str | None = None,
                 store: ProgramSource | None = None, **settings: Any):
        self.config = PoolConfig.from_settings(config, **settings)
        self.address = address
        self.backend = self.config.backend
        self.store = store
        self._router: Router | None = None
        self._client: _BrokerClient | None = None
        self._start_lock: asyncio.Lock | None = None
        # client mode: this client's key pair and the broker's public key
        c = self.config
        self._curve = (CurveKeys.from_files(c.curve_secret, c.curve_server)
                       if address is not None and c.curve_secret is not None else None)
        self._remote_caps: frozenset[str] | None = None
        self._declared = declared_capabilities(self.backend) if address is None else frozenset()

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
                router = Router(self.config, store=self.store, expected_capabilities=self._declared)
                await router.start()
                self._router = router
                if self.config.workers:
                    await router.wait_ready(1, self.config.start_timeout)
            else:
                client = _BrokerClient(self.address, curve=self._curve)
                await client.start()
                self._client = client

    async def prepare(self, program: Program) -> None:
        """Start the pool (or connect to the broker); a local pool keeps ``program`` for workers that ask for it."""
        await self.start()
        if self._router is not None:
            self._router.remember_program(program.content_hash, program.to_dict())

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions | None = None) -> RunResult:
        """Run once on a worker; a run whose worker died is retried on another, up to the configured retries."""
        options = options or RunOptions.default()
        await self.start()
        if self._router is not None:
            return await self._router.submit(program, inputs, options)
        assert self._client is not None
        return await self._client.submit(program, inputs, options, wait=self.config.saturation_wait)

    async def aclose(self) -> None:
        """Stop the local pool's workers, or disconnect from the broker (which keeps running)."""
        if self._router is not None:
            router, self._router = self._router, None
            await router.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    def status(self) -> dict[str, Any]:
        """Workers, queue and counters, as ``stepbridge pool status --json`` prints them."""
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
        self._programs: dict[str, dict[str, Any]] = {}
        self._files = LocalFiles()
        self._shipped: set[str] = set()  # data files this connection has sent
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
                self._shipped.clear()  # a restarted broker has none of them
        finally:
            mon.close(linger=0)

    async def submit(self, program: Program, inputs: dict[str, Any], options: RunOptions,
                     wait: float | None) -> RunResult:
        assert self.sock is not None
        known = self._programs.get(program.content_hash)
        if known is None:
            known = self._programs[program.content_hash] = program.to_dict()
        data = self._files.manifest(program)  # our own corpora, by content: the broker never sees a path
        body = p.Request(execution_id=options.execution_id, program_hash=program.content_hash, inputs=inputs,
                         attempt=options.attempt, budget=options.timeout, options=wire_options(options),
                         program=known, data=data, wait=wait)
        await self._ship(d for d in data.values() if d not in self._shipped)
        reply = await self._ask(body, options)
        if reply.missing:  # the broker let them go (restarted, or its data cache is full): once more
            self._shipped.difference_update(reply.missing)
            await self._ship(reply.missing)
            reply = await self._ask(body, options)
        if reply.error is not None:
            raise p.error_from_reply(reply)
        if reply.result is None:
            raise StepbridgeError("the broker sent an empty reply")
        result: RunResult = p.result_from_wire(reply.result, backend="pool", attempts=reply.attempt)
        return result

    async def _ship(self, digests: Any) -> None:
        """Send data files the broker has not had from us (before the request that names them)."""
        assert self.sock is not None
        for digest in list(digests):
            if digest in self._shipped:
                continue
            content = await asyncio.to_thread(self._files.read, digest)
            if content is None:
                raise StepbridgeError(f"data file {digest[:12]} changed while it was being sent; run again")
            await self.sock.send_multipart(p.encode(p.Data(data_hash=digest, content=content)))
            self._shipped.add(digest)

    async def _ask(self, body: p.Request, options: RunOptions) -> p.Reply:
        assert self.sock is not None
        rid = uuid.uuid4().bytes
        fut: asyncio.Future[p.Reply] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.sock.send_multipart(p.encode(body, rid))
        try:
            if options.timeout is not None:
                # the broker enforces the deadline; this is the backstop if the broker itself is gone
                return await asyncio.wait_for(asyncio.shield(fut), options.timeout + 30.0)
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            self._pending.pop(rid, None)
            with contextlib.suppress(Exception):
                self.sock.send_multipart(p.encode(p.Cancel(attempt=options.attempt), rid), flags=zmq.NOBLOCK)
            raise
        except TimeoutError:
            self._pending.pop(rid, None)
            raise RunTimeoutError(f"no answer from the broker within {options.timeout}s",
                                  timeout=options.timeout) from None

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
