"""The router: the pool's socket I/O, between callers, the scheduler and the workers.

It binds a **worker socket** (ROUTER; workers connect with DEALER) and, in a standalone broker, a
separate **client socket** (ROUTER; clients connect with DEALER). Each socket accepts only its
role's commands (:data:`stepbridge.bridge.protocol.WORKER_COMMANDS`,
:data:`~stepbridge.bridge.protocol.CLIENT_COMMANDS`); over TCP each has its own CURVE key set
(authorised worker keys, allowed client keys). Frames become events for the
:class:`~stepbridge.bridge.scheduler.Scheduler`, whose actions the router performs: send a request,
resolve a caller's future or answer a client, cancel, kill or spawn a local worker (through the
:class:`~stepbridge.bridge.supervisor.Supervisor`). All the rules (credit, retries, exactly once,
deadlines, routing, quarantine) live in the scheduler; this module is the plumbing.

What only the plumbing can guarantee:

- A REPLY counts only if it arrives on the worker socket, from the identity the request's current
  attempt was sent to, for a request still assigned to it (the scheduler checks the last two).
- A program definition (PROGRAM_GET) or data file (DATA_GET) goes only to a registered worker that
  is running a request naming it.
- Liveness is judged on what has arrived: before deciding that a worker went silent, the router
  reads everything waiting on the worker socket, so a stall of this process's own event loop (a
  caller flooding it with work) never makes a live worker look dead.
- Malformed, oversized, wrong-version and wrong-role frames are dropped and counted, and logged
  through a :class:`~stepbridge.bridge.logs.Throttle`, so a flood cannot become a flood of log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.asyncio
from stepbridge.adapter import RunOptions
from stepbridge.errors import (
    PoolSaturatedError,
    StepbridgeError,
    StorageError,
    error_from_dict,
)
from stepbridge.program import Program, ToolModule
from stepbridge.recorder import ProgramSource
from stepbridge.result import RunResult, StepTrace

from . import protocol as p
from .config import PoolConfig
from .data import BlobStore, LocalFiles, corpora, sha256_bytes
from .logs import Throttle
from .net import CurveKeys, Pump, configure_router, default_ipc_endpoint, is_loopback_or_ipc, load_keypair, secure_ipc
from .scheduler import (
    Action,
    Cancel,
    Deliver,
    Disconnect,
    Fail,
    Job,
    Kill,
    Scheduler,
    Send,
    Spawn,
    WorkerState,
)
from .supervisor import Supervisor

__all__ = ["PoolJob", "Router", "has_side_effects", "required_capabilities", "wire_options"]

log = logging.getLogger("stepbridge.bridge.router")

PROGRAM_CACHE_SIZE = 1024

def wire_options(options: RunOptions) -> dict[str, Any]:
    """The run options a REQUEST carries besides execution id, attempt and budget (non-defaults only)."""
    return options.extras()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def required_capabilities(program: Program) -> frozenset[str]:
    """The program's needs (a method in older cores, a cached property in newer ones)."""
    needs: Any = program.required_capabilities
    return frozenset(needs() if callable(needs) else needs)


def has_side_effects(program: Program) -> bool:
    """True if a tool step declares (or its registered tool declares) side effects, or an agent (``react``)
    may call such a tool: never retried."""
    from stepbridge.registry import tools

    for module in program.modules.values():
        if isinstance(module, ToolModule) and module.side_effects:
            return True
        names = [module.tool] if isinstance(module, ToolModule) else list(getattr(module, "tools", None) or [])
        for name in names:
            try:
                if tools.get(name).side_effects:
                    return True
            except Exception:
                pass
    return False


@dataclass(eq=False, kw_only=True)
class PoolJob(Job):
    """A scheduler job plus what goes on the wire and whom to answer."""

    execution_id: str
    program_hash: str
    inputs: dict[str, Any]
    options: dict[str, Any]
    data: dict[str, str]
    future: asyncio.Future[RunResult] | None = None
    client: tuple[bytes, bytes] | None = None  # (client identity, client request id) in broker mode


@dataclass
class _Endpoint:
    """One bound ROUTER socket and the commands it takes."""

    name: str
    address: str
    allowed: frozenset[p.Command]
    sock: zmq.Socket[Any] | None = None
    pump: Pump | None = None


class Router:
    """Binds the sockets, feeds the scheduler, performs its actions, supervises local workers."""

    def __init__(self, config: PoolConfig | None = None, *, store: ProgramSource | None = None,
                 serve_clients: bool = False, expected_capabilities: frozenset[str] = frozenset()):
        self.config = c = config or PoolConfig()
        self.store = store
        self.serve_clients = serve_clients
        self._tmpdirs: list[Path] = []
        self.curve = CurveKeys.from_files(c.curve_secret) if c.curve_secret is not None else None
        #: (secret file, public file) of the router's key pair, for local workers under CURVE
        self.curve_files = ((c.curve_secret, c.curve_secret.with_name(c.curve_secret.name.removesuffix("_secret")))
                            if c.curve_secret is not None else None)
        self.workers_end = _Endpoint("worker", self._endpoint(c.worker_bind), p.WORKER_COMMANDS)
        self.clients_end = (_Endpoint("client", self._endpoint(c.client_bind), p.CLIENT_COMMANDS)
                            if serve_clients else None)
        if self.curve is not None and serve_clients and c.curve_clients is None:
            raise ValueError("a CURVE broker needs the allowed client public keys (--curve-clients DIR)")
        self.scheduler = Scheduler(c.rules(expected_capabilities))
        self.stats = self.scheduler.stats
        self.stats.update(rejected_frames=0, programs_sent=0, data_sent=0)
        self.supervisor: Supervisor | None = None
        self.ctx = zmq.asyncio.Context()
        self._sync_ctx: zmq.Context[Any] = zmq.Context.shadow(self.ctx.underlying)
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._programs: OrderedDict[str, p.ProgramDef] = OrderedDict()
        self._program_meta: dict[str, tuple[frozenset[str], bool, bool]] = {}  # needs, side effects, has data
        self._client_jobs: dict[tuple[bytes, bytes], PoolJob] = {}
        self._files = LocalFiles()  # local mode: the callers' own corpora
        self._blobs = BlobStore(c.broker_data_bytes)  # broker mode: corpora clients shipped
        self._verifying: dict[str, asyncio.Future[bool]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rid_prefix = os.urandom(4)  # request ids: unique per router (a restarted broker is another)
        self._rid_seq = itertools.count(1)
        self._auth: Any = None
        self._closing = False
        self._started = False
        self._ready_event = asyncio.Event()
        self._completions: deque[float] = deque(maxlen=10_000)
        self._throttle = Throttle(log)
        self.started_at = time.time()
        self._handlers: dict[type, Callable[[Any], None]] = {
            Deliver: self._on_deliver, Fail: self._on_fail, Cancel: self._on_cancel, Kill: self._on_kill,
            Disconnect: self._on_disconnect, Spawn: self._on_spawn}

    def _endpoint(self, bind: str | None) -> str:
        c = self.config
        if bind is None:
            bind, tmpdir = default_ipc_endpoint()
            self._tmpdirs.append(tmpdir)
        if bind.startswith("tcp://") and self.curve is None and not c.allow_insecure_tcp:
            raise ValueError("TCP endpoints require CURVE keys (see `stepbridge pool keys`)")
        if bind.startswith("tcp://") and not is_loopback_or_ipc(bind) and self.curve is None:
            raise ValueError("refusing to bind a non-loopback TCP address without CURVE")
        return bind

    # -- addresses and views -----------------------------------------------------------------------
    @property
    def worker_address(self) -> str:
        """Where workers connect."""
        return self.workers_end.address

    @property
    def client_address(self) -> str | None:
        """Where clients connect (a standalone broker only)."""
        return self.clients_end.address if self.clients_end is not None else None

    @property
    def address(self) -> str:
        """The address this router is known by: the client socket of a broker, else the worker socket."""
        return self.client_address or self.worker_address

    @property
    def workers(self) -> dict[bytes, WorkerState]:
        return self.scheduler.workers

    @property
    def queue(self) -> deque[Job]:
        return self.scheduler.queue

    @property
    def n_workers(self) -> int:
        return self.config.workers

    def capabilities(self) -> frozenset[str]:
        return self.scheduler.capabilities()

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        if self.curve is not None:
            self._start_auth()
        for end in (self.workers_end, self.clients_end):
            if end is None:
                continue
            sock = self._sync_ctx.socket(zmq.ROUTER)
            configure_router(sock, max_msg=self.config.max_message)
            if self.curve is not None:
                sock.setsockopt(zmq.ZAP_DOMAIN, f"stepbridge-{end.name}s".encode())
                self.curve.apply_server(sock)
            sock.bind(end.address)
            if end.address.startswith("tcp://"):
                end.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            secure_ipc(end.address)
            end.sock = sock
            handler = self._on_worker_frames if end is self.workers_end else self._on_client_frames
            end.pump = Pump(sock, handler, loop)
            if self.curve is not None:
                self._spawn_task(self._monitor(end))
        self._spawn_task(self._housekeeping())
        data_cache = self.config.data_cache
        if data_cache is None and self.config.workers:
            data_cache = Path(default_ipc_endpoint()[1])  # a fresh user-only folder the local workers share
            self._tmpdirs.append(data_cache)
        self.supervisor = Supervisor(self.config, self.worker_address, data_cache=data_cache or Path("."),
                                     curve_files=self.curve_files, on_exit=self._on_exit)
        self._apply(self.scheduler.add_slots(self.config.workers))
        log.info("pool router: workers on %s%s; %d local %s workers", self.worker_address,
                 f", clients on {self.client_address}" if self.client_address else "", self.config.workers,
                 self.config.backend)

    def _start_auth(self) -> None:
        from zmq.auth.asyncio import AsyncioAuthenticator

        assert self.curve is not None
        auth = AsyncioAuthenticator(self.ctx, log=logging.getLogger("stepbridge.bridge.auth"))
        workers = self._load_keys(self.config.curve_workers) | {self.curve.public}  # local workers: our own pair
        clients = self._load_keys(self.config.curve_clients)

        class _Keys:
            def __init__(self, allowed: frozenset[bytes]):
                self.allowed = allowed

            def callback(self, domain: str, key: bytes) -> bool:
                return key in self.allowed

        auth.start()
        auth.configure_curve_callback(domain="stepbridge-workers", credentials_provider=_Keys(frozenset(workers)))
        auth.configure_curve_callback(domain="stepbridge-clients", credentials_provider=_Keys(frozenset(clients)))
        self._auth = auth

    @staticmethod
    def _load_keys(source: Path | None) -> set[bytes]:
        keys: set[bytes] = set()
        if source is None:
            return keys
        for path in sorted(Path(source).glob("*.key")):
            try:
                keys.add(load_keypair(path)[0])
            except Exception as exc:
                log.warning("skipping unreadable public key file %s: %s", path, exc)
        return keys

    async def wait_ready(self, n: int = 1, timeout: float = 30.0) -> None:
        """Wait until at least ``n`` workers have said READY."""
        from stepbridge.errors import WorkerLostError

        deadline = time.monotonic() + timeout
        while len([w for w in self.workers.values() if not w.draining]) < n:
            if time.monotonic() > deadline:
                raise WorkerLostError(f"the pool did not get {n} ready worker(s) within {timeout:.0f}s")
            self._ready_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready_event.wait(), 0.1)

    async def close(self, *, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop: fail queued work, let in-flight work finish (``drain``), stop the workers."""
        if self._closing:
            return
        self._closing = True
        self._apply(self.scheduler.close())
        for waiter in self._room_waiters:
            if not waiter.done():
                waiter.set_exception(PoolSaturatedError("the pool is shutting down",
                                                        queue_size=self.config.queue_size))
        deadline = time.monotonic() + timeout
        if drain:
            for worker in list(self.workers.values()):
                self._send_worker(worker.identity, p.Drain())
                worker.draining = True
            while any(w.inflight for w in self.workers.values()) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        for worker in list(self.workers.values()):
            self._send_worker(worker.identity, p.Disconnect(reason="shutdown"))
        self._apply(self.scheduler.abandon())
        if self.supervisor is not None:
            await self.supervisor.stop(deadline - time.monotonic())
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._auth is not None:
            self._auth.stop()
        for end in (self.workers_end, self.clients_end):
            if end is not None and end.pump is not None:
                end.pump.close(linger=0)
        self.ctx.term()
        for tmpdir in self._tmpdirs:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _spawn_task(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- local processes ---------------------------------------------------------------------------
    def _on_exit(self, slot: int, pid: int, killed_by_us: bool) -> None:
        before = self.scheduler.slots[slot].state
        for worker in self.workers.values():
            if worker.slot == slot:
                log.warning("worker %s (pid %d) lost: its process exited%s; %d request(s) in flight",
                            worker.worker_id, pid, " (killed)" if killed_by_us else "", len(worker.inflight))
        self._apply(self.scheduler.slot_exited(slot, pid, killed_by_us, time.monotonic()))
        state = self.scheduler.slots[slot]
        if state.state == "quarantined" and before != "quarantined":
            log.error("local worker slot %d died %d times before getting ready; quarantined for %.0fs",
                      slot, state.crashes, self.config.quarantine_time)

    async def _spawn(self, slot: int) -> None:
        assert self.supervisor is not None
        try:
            pid = await self.supervisor.spawn(slot)
        except Exception as exc:  # cannot even start a process: counts as a crash before READY
            log.error("could not start local worker %d: %s", slot, exc)
            self.scheduler.slot_spawned(slot, -1)
            self._apply(self.scheduler.slot_exited(slot, -1, False, time.monotonic()))
            return
        if pid is not None:
            self.scheduler.slot_spawned(slot, pid)

    # -- programs and data -------------------------------------------------------------------------
    def remember_program(self, program_hash: str, data: dict[str, Any]) -> None:
        self._programs[program_hash] = p.ProgramDef(program_hash=program_hash, program=data)
        self._programs.move_to_end(program_hash)
        while len(self._programs) > PROGRAM_CACHE_SIZE:
            old, _ = self._programs.popitem(last=False)
            self._program_meta.pop(old, None)

    def knows_program(self, program_hash: str) -> bool:
        if program_hash in self._programs:
            self._programs.move_to_end(program_hash)
            return True
        return False

    def _meta(self, program: Program) -> tuple[frozenset[str], bool, bool]:
        digest = program.content_hash
        meta = self._program_meta.get(digest)
        if meta is None or digest not in self._programs:
            self.remember_program(digest, program.to_dict())
            meta = self._program_meta[digest] = (required_capabilities(program), has_side_effects(program),
                                                 bool(corpora(program)))
        return meta

    # -- submission --------------------------------------------------------------------------------
    def make_job(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> PoolJob:
        needs, side_effects, has_data = self._meta(program)
        data = self._files.manifest(program) if has_data else {}
        return self._job(program.content_hash, needs, side_effects, options.execution_id, inputs,
                         wire_options(options), options.attempt, options.timeout, data)

    def _job(self, program_hash: str, needs: frozenset[str], side_effects: bool, execution_id: str,
             inputs: dict[str, Any], options: dict[str, Any], attempt: int, timeout: float | None,
             data: dict[str, str]) -> PoolJob:
        rid = self._rid_prefix + next(self._rid_seq).to_bytes(8, "big")
        return PoolJob(rid=rid, needs=needs, retriable=not side_effects, attempt=attempt,
                       deadline=time.monotonic() + timeout if timeout else None, timeout=timeout,
                       execution_id=execution_id, program_hash=program_hash, inputs=inputs, options=options,
                       data=data)

    async def enqueue(self, job: PoolJob, wait: float | None = None) -> None:
        """Admit a job, waiting up to ``wait`` seconds for queue room; its outcome goes to its future or
        client (a refusal too: :class:`PoolSaturatedError` when the queue stayed full)."""
        scheduler = self.scheduler
        if scheduler.room() <= 0 and scheduler.admission_error(job.needs, time.monotonic()) is None:
            await self._wait_for_room(self.config.saturation_wait if wait is None else wait)
        self._apply(scheduler.submit(job, time.monotonic()))

    async def _wait_for_room(self, wait: float) -> None:
        # one future and one timer per wait (no task per wait_for); finished waiters are skipped by
        # _room and pruned by housekeeping rather than removed one by one (O(n) each in a deque)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.scheduler.room() <= 0:
            left = deadline - loop.time()
            if left <= 0 or self._closing:
                self.stats["saturated"] += 1
                raise PoolSaturatedError(
                    f"the pool queue stayed full ({self.config.queue_size} waiting) for {wait:.2f}s",
                    queue_size=self.config.queue_size)
            waiter: asyncio.Future[None] = loop.create_future()
            self._room_waiters.append(waiter)
            timer = loop.call_later(left, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                if not waiter.done():
                    waiter.cancel()

    async def submit(self, program: Program, inputs: dict[str, Any], options: RunOptions,
                     wait: float | None = None) -> RunResult:
        """Run through the pool; cancel the awaiting task to cancel the run."""
        job = self.make_job(program, inputs, options)
        future: asyncio.Future[RunResult] = asyncio.get_running_loop().create_future()
        job.future = future
        await self.enqueue(job, wait)
        try:
            return await future  # (cancelling the caller cancels this future too; outcomes check done())
        except asyncio.CancelledError:
            self.cancel(job)
            raise

    def cancel(self, job: Job) -> None:
        self._apply(self.scheduler.cancel(job.rid, time.monotonic()))

    def _room(self) -> None:
        """Wake as many waiting submitters as there is room in the queue."""
        room = self.scheduler.room()
        waiters = self._room_waiters
        while room > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1

    # -- performing actions ------------------------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        handlers = self._handlers
        i = 0
        while i < len(actions):
            action = actions[i]
            i += 1
            if type(action) is Send:
                job = action.job
                if job.done or job.worker != action.worker or job.attempt != action.attempt:
                    continue  # overtaken by a later event in the same batch
                if not self._send_request(action):
                    unsent = [job] + [a.job for a in actions[i:] if type(a) is Send and a.worker == action.worker]
                    actions += self.scheduler.send_failed(action.worker, unsent, time.monotonic())
            else:
                handlers[type(action)](action)
        if self._room_waiters:
            self._room()

    def _on_deliver(self, action: Deliver) -> None:
        self._deliver(cast(PoolJob, action.job), action.result)

    def _on_fail(self, action: Fail) -> None:
        self._fail(cast(PoolJob, action.job), action.error, action.trace)

    def _on_cancel(self, action: Cancel) -> None:
        self._send_worker(action.worker, p.Cancel(attempt=action.attempt), action.job.rid)

    def _on_kill(self, action: Kill) -> None:
        if self.supervisor is not None:
            self.supervisor.kill(action.slot, action.reason)

    def _on_disconnect(self, action: Disconnect) -> None:
        log.warning("disconnecting worker %r: %s", action.worker[:40], action.reason)
        self._send_worker(action.worker, p.Disconnect(reason=action.reason))

    def _on_spawn(self, action: Spawn) -> None:
        self._spawn_task(self._spawn(action.slot))

    def _send_request(self, send: Send) -> bool:
        job = cast(PoolJob, send.job)
        body = p.Request(execution_id=job.execution_id, program_hash=job.program_hash, inputs=job.inputs,
                         attempt=send.attempt, budget=send.budget, options=job.options, data=job.data)
        return self._send_worker(send.worker, body, job.rid)

    def _send_worker(self, identity: bytes, body: p.Body, rid: bytes = b"") -> bool:
        return self._send(self.workers_end, identity, body, rid)

    def _send_client(self, identity: bytes, body: p.Body, rid: bytes = b"") -> bool:
        return self.clients_end is not None and self._send(self.clients_end, identity, body, rid)

    def _send(self, end: _Endpoint, identity: bytes, body: p.Body, rid: bytes = b"") -> bool:
        if end.pump is None:
            return False
        try:
            frames = [identity, *p.encode(body, rid)]
        except p.ProtocolError as exc:
            log.error("could not encode %s: %s", body.command.name, exc)
            return False
        return end.pump.send(frames)

    def _deliver(self, job: PoolJob, data: p.WireResult) -> None:
        self._completions.append(time.monotonic())
        if job.client is not None:
            self._client_jobs.pop(job.client, None)
            self._send_client(job.client[0], p.Reply(attempt=job.attempt, result=data), job.client[1])
        elif job.future is not None and not job.future.done():
            try:  # validated by the body decoder already: build the models without a second pass
                result = p.result_from_wire(data, backend="pool", attempts=job.attempt)
            except Exception as exc:
                job.future.set_exception(StepbridgeError(f"the worker sent an invalid result: {exc}"))
                return
            job.future.set_result(result)

    def _fail(self, job: PoolJob, error: StepbridgeError | dict[str, Any],
              trace: list[dict[str, Any]] | None) -> None:
        self._completions.append(time.monotonic())
        if job.client is not None:
            self._client_jobs.pop(job.client, None)
            data = error if isinstance(error, dict) else error.to_dict()
            trace_data = trace if trace is not None else [
                t.model_dump(mode="json") for t in getattr(error, "trace", []) if hasattr(t, "model_dump")]
            self._send_client(job.client[0], p.Reply(attempt=job.attempt, error=data, trace=trace_data),
                              job.client[1])
        elif job.future is not None and not job.future.done():
            exc = error_from_dict(error) if isinstance(error, dict) else error
            if trace:
                with contextlib.suppress(Exception):
                    exc.trace = [StepTrace.model_validate(t) for t in trace]
            job.future.set_exception(exc)

    # -- the worker socket -------------------------------------------------------------------------
    def _refused(self, end: str, identity: bytes, exc: p.ProtocolError) -> None:
        self.stats["rejected_frames"] += 1
        self._throttle.warning(f"refused-{end}-{exc.reason}", "refused a frame from %s peer %r: %s (%s)", end,
                               identity[:40], exc, exc.reason)

    def _on_worker_frames(self, frames: list[bytes]) -> None:
        identity = frames[0]
        try:
            msg = p.decode(frames[1:], allowed=p.WORKER_COMMANDS)
        except p.ProtocolError as exc:
            self._refused("worker", identity, exc)
            return
        now = time.monotonic()
        scheduler = self.scheduler
        worker = scheduler.workers.get(identity)
        if worker is not None:
            worker.last_seen = now
        body = msg.body
        if isinstance(body, p.Reply):
            actions = scheduler.reply(identity, msg.request_id, body.attempt, now, result=body.result,
                                      error=body.error, trace=body.trace)
            if actions is None:
                log.info("dropped a stale reply from %r (attempt %d)", identity[:40], body.attempt)
            else:
                self._apply(actions)
        elif isinstance(body, p.Heartbeat | p.Started):
            if worker is None and isinstance(body, p.Heartbeat):
                self._send_worker(identity, p.Disconnect(reason="unknown worker: reconnect"))
        elif isinstance(body, p.Ready):
            self._on_ready(identity, body, now)
        elif isinstance(body, p.ProgramGet):
            self._on_program_get(identity, body)
        elif isinstance(body, p.DataGet):
            self._on_data_get(identity, body)
        elif isinstance(body, p.Drain):
            scheduler.draining(identity)
        elif isinstance(body, p.Disconnect) and worker is not None:
            self._lose(identity, f"disconnected ({body.reason})")

    def _lose(self, identity: bytes, why: str) -> None:
        worker = self.workers.get(identity)
        if worker is not None and not self._closing:
            log.warning("worker %s (pid %d) lost: %s; %d request(s) in flight", worker.worker_id, worker.pid, why,
                        len(worker.inflight))
        self._apply(self.scheduler.lost(identity, why, time.monotonic()))

    def _on_ready(self, identity: bytes, body: p.Ready, now: float) -> None:
        if body.protocol != p.PROTOCOL_VERSION:
            self._throttle.warning("refused-ready-protocol", "refused worker %s: protocol %d", body.worker_id,
                                   body.protocol)
            self._send_worker(identity, p.Disconnect(reason="refused"))
            return
        if identity in self.workers:  # a repeated READY (the first answer crossed it): just answer again
            self._send_worker(identity, p.Heartbeat())
            return
        info = WorkerState(identity=identity, capabilities=frozenset(body.capabilities) | {"out_of_process"},
                           capacity=body.capacity, last_seen=now, worker_id=body.worker_id, pid=body.pid,
                           host=body.host, backend=body.backend, warmed=tuple(body.warmed), connected_at=time.time())
        actions = self.scheduler.ready(info, now)
        self._send_worker(identity, p.Heartbeat())  # the READY acknowledgement
        log.info("worker %s ready (pid %d, %s, capacity %d)", body.worker_id, body.pid, body.backend, body.capacity)
        self._ready_event.set()
        self._apply(actions)

    def _assigned(self, identity: bytes, *, program_hash: str | None = None, data_hash: str | None = None) -> bool:
        """Is a request naming this program (or data file) running on this registered worker?"""
        worker = self.workers.get(identity)
        if worker is None:
            return False
        for job in worker.inflight.values():
            assert isinstance(job, PoolJob)
            if program_hash is not None and job.program_hash == program_hash:
                return True
            if data_hash is not None and data_hash in job.data.values():
                return True
        return False

    def _on_program_get(self, identity: bytes, body: p.ProgramGet) -> None:
        if not self._assigned(identity, program_hash=body.program_hash):
            self._throttle.warning("refused-program", "refused program %s to %r: no request of it runs there",
                                   body.program_hash[:12], identity[:40])
            self._send_worker(identity, p.ProgramDef(program_hash=body.program_hash, error={
                "type": "StorageError", "message": "no request for this program is assigned to this worker"}))
            return
        known = self._programs.get(body.program_hash)
        if known is None and self.store is not None:
            try:
                program = self.store.load(body.program_hash)  # validated and hash-checked by the store
                self.remember_program(program.content_hash, program.to_dict())  # definition only: no folder
                known = self._programs.get(body.program_hash)
            except Exception as exc:
                log.debug("program %s not in the store: %s", body.program_hash[:12], exc)
        if known is None:
            known = p.ProgramDef(program_hash=body.program_hash, error={
                "type": "StorageError", "message": f"the router does not know program {body.program_hash[:12]}"})
        elif self._send_worker(identity, known):
            self.stats["programs_sent"] += 1
            return
        self._send_worker(identity, known)

    def _on_data_get(self, identity: bytes, body: p.DataGet) -> None:
        digest = body.data_hash
        if not self._assigned(identity, data_hash=digest):
            self._throttle.warning("refused-data", "refused data file %s to %r: no request naming it runs there",
                                   digest[:12], identity[:40])
            self._send_worker(identity, p.Data(data_hash=digest, error={
                "type": "StorageError", "message": "no request naming this data file is assigned to this worker"}))
            return
        blob = self._blobs.get(digest)
        if blob is not None:
            self._send_data(identity, digest, blob)
            return

        async def read() -> None:
            content = await asyncio.to_thread(self._files.read, digest)
            self._send_data(identity, digest, content)

        self._spawn_task(read())

    def _send_data(self, identity: bytes, digest: str, content: bytes | None) -> None:
        if content is None:
            self._send_worker(identity, p.Data(data_hash=digest, error={
                "type": "StorageError",
                "message": f"data file {digest[:12]} is no longer available (changed or gone since it was submitted)"}))
        elif self._send_worker(identity, p.Data(data_hash=digest, content=content)):
            self.stats["data_sent"] += 1

    # -- the client socket (broker) ----------------------------------------------------------------
    def _on_client_frames(self, frames: list[bytes]) -> None:
        identity = frames[0]
        try:
            msg = p.decode(frames[1:], allowed=p.CLIENT_COMMANDS)
        except p.ProtocolError as exc:
            self._refused("client", identity, exc)
            return
        body = msg.body
        if isinstance(body, p.Request):
            self._on_client_request(identity, msg.request_id, body)
        elif isinstance(body, p.Cancel):
            job = self._client_jobs.get((identity, msg.request_id))
            if job is not None:
                self.cancel(job)
        elif isinstance(body, p.Data):
            self._on_client_data(body)
        elif isinstance(body, p.Status):
            self._send_client(identity, p.Status(status=self.status()), msg.request_id)

    def _on_client_data(self, body: p.Data) -> None:
        digest, content = body.data_hash, body.content
        if content is None or digest in self._blobs or digest in self._verifying:
            return
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._verifying[digest] = future

        async def verify() -> None:
            ok = False
            try:
                ok = await asyncio.to_thread(lambda: sha256_bytes(content) == digest)
                if not ok:
                    self._throttle.warning("refused-data-hash", "refused a data file that does not match its "
                                           "hash %s", digest[:12])
                else:
                    in_use = {d for j in self._client_jobs.values() for d in j.data.values()}
                    ok = self._blobs.put(digest, content, in_use)
            finally:
                del self._verifying[digest]
                future.set_result(ok)

        self._spawn_task(verify())

    def _on_client_request(self, identity: bytes, crid: bytes, body: p.Request) -> None:
        key = (identity, crid)
        if key in self._client_jobs:
            return

        def refuse(error: dict[str, Any], missing: list[str] | None = None) -> None:
            self._send_client(identity, p.Reply(attempt=body.attempt, error=error, missing=missing or []), crid)

        if not self.knows_program(body.program_hash):
            if body.program is None:
                refuse({"type": "StorageError",
                        "message": f"unknown program {body.program_hash[:12]}: send it inline"})
                return
            try:
                from .worker import build_program

                program = build_program(body.program, body.program_hash)
            except StepbridgeError as exc:
                refuse(exc.to_dict())
                return
            self._program_meta[body.program_hash] = (required_capabilities(program), has_side_effects(program),
                                                     bool(corpora(program)))
            self.remember_program(body.program_hash, body.program)
        needs, side_effects, _ = self._program_meta.get(body.program_hash, (frozenset(), False, False))
        job = self._job(body.program_hash, needs, side_effects, body.execution_id, dict(body.inputs),
                        dict(body.options), body.attempt, body.budget, dict(body.data))
        job.client = key
        self._client_jobs[key] = job

        async def admit() -> None:
            for digest in set(job.data.values()):
                pending = self._verifying.get(digest)
                if pending is not None:
                    await pending
            missing = sorted({d for d in job.data.values() if d not in self._blobs})
            if missing:
                self._client_jobs.pop(key, None)
                refuse(StorageError(f"the broker does not have {len(missing)} data file(s) this request names: "
                                    "send them first").to_dict(), missing)
                return
            try:
                await self.enqueue(job, body.wait)
            except StepbridgeError as exc:
                self._client_jobs.pop(key, None)
                refuse(exc.to_dict())

        self._spawn_task(admit())

    # -- housekeeping ------------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        heartbeat = self.config.heartbeat
        tick = min(0.05, heartbeat / 4)
        last_beat = 0.0
        while True:
            await asyncio.sleep(tick)
            try:
                pump = self.workers_end.pump
                if pump is not None:
                    pump.drain_all()  # judge liveness on what has arrived, not on how late this loop ran
                now = time.monotonic()
                if now - last_beat >= heartbeat:
                    last_beat = now
                    for worker in list(self.workers.values()):
                        if not self._send_worker(worker.identity, p.Heartbeat()):
                            self._lose(worker.identity, "unreachable")
                for worker in list(self.workers.values()):
                    if now - worker.last_seen > heartbeat * self.config.liveness:
                        log.warning("worker %s (pid %d) lost: no heartbeat for %.1fs; %d request(s) in flight",
                                    worker.worker_id, worker.pid, now - worker.last_seen, len(worker.inflight))
                self._apply(self.scheduler.tick(now))
                self._throttle.flush()
                if len(self._room_waiters) > 64:
                    self._room_waiters = deque(w for w in self._room_waiters if not w.done())
            except Exception:
                log.exception("housekeeping failed")

    # -- status ------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        recent = [t for t in self._completions if now - t <= 10.0]
        span = min(10.0, max(1e-9, now - (recent[0] if recent else now))) if recent else 10.0
        return {
            "address": self.address,
            "worker_address": self.worker_address,
            "host": socket.gethostname(),
            "backend": self.config.backend,
            "uptime_s": round(time.time() - self.started_at, 3),
            "queue": {"depth": len(self.queue), "size": self.config.queue_size},
            "in_flight": sum(len(w.inflight) for w in self.workers.values()),
            "throughput_per_s": round(len(recent) / span, 2) if recent else 0.0,
            "capabilities": sorted(self.capabilities()),
            "stats": dict(self.stats),
            "workers": [
                {"id": w.worker_id, "host": w.host, "pid": w.pid, "backend": w.backend, "capacity": w.capacity,
                 "in_flight": len(w.inflight), "done": w.done, "failed": w.failed, "draining": w.draining,
                 "local": w.slot is not None, "last_heartbeat_s": round(now - w.last_seen, 3),
                 "warmed": len(w.warmed),
                 "capabilities": sorted(w.capabilities)}
                for w in self.workers.values()
            ],
            "slots": [{"index": s.index, "pid": s.pid, "state": s.state, "restarts": s.restarts,
                       "crashes": s.crashes} for s in self.scheduler.slots],
        }

    async def _monitor(self, end: _Endpoint) -> None:
        """Log refused CURVE handshakes (a worker or client with a wrong key), rate-limited."""
        from zmq.utils.monitor import recv_monitor_message

        assert end.sock is not None
        events = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        sync_mon = end.sock.get_monitor_socket(events)
        mon = zmq.asyncio.Socket.shadow(sync_mon.underlying)
        try:
            while True:
                event = await recv_monitor_message(mon)
                self.stats["rejected_frames"] += 1
                self._throttle.warning(f"refused-{end.name}-connection", "refused a %s connection on %s: %s (%s)",
                                       end.name, end.address,
                                       "authentication failed" if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                       else "handshake failed", event.get("value"))
        finally:
            with contextlib.suppress(Exception):
                end.sock.disable_monitor()
            sync_mon.close(linger=0)

