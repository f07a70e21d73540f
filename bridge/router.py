"""The router: one ROUTER socket, the worker table, the bounded queue and local worker processes.

It is the heart of both the in-process pool (:class:`stepbridge.bridge.pool.PoolAdapter`) and the
standalone broker (``stepbridge pool start``), whose clients send REQUEST frames on the same socket
the workers use.

Guarantees, and how:

- **Credit.** A worker declares its capacity in READY; the router never has more than that many of
  its requests in flight.
- **Backpressure.** The pending queue is bounded; a submitter waits up to its ``wait`` for room,
  then gets :class:`PoolSaturatedError`.
- **Deadlines** travel as the remaining budget. Queued requests past their deadline fail with
  :class:`RunTimeoutError`; a worker that overruns a deadline by the grace period is cancelled.
- **Liveness.** Every message from a worker counts as a heartbeat; silence for ``liveness``
  intervals means dead. Local worker exits are seen at once (the process is awaited).
- **Retry, exactly once.** A dead worker's in-flight requests go back to the front of the queue with
  the next attempt number (bounded; never for programs with a side-effecting tool step). A reply
  counts only if it comes from the worker the current attempt was sent to, with that attempt
  number; anything else (a late reply from a stalled worker) is dropped. Each caller's future is
  resolved at most once.
- **Cancel** reaches the worker; a worker that has not answered after the grace period is killed
  (local) or cut off (remote), and replaced.
- **Respawn** with backoff; a slot whose worker keeps dying before it even gets READY is quarantined.
- **Routing** by capability: a request goes only to workers that declared everything the program
  needs; with no such worker (connected or starting), the submitter hears so at once.
- Malformed, oversized and wrong-version frames are logged and dropped; the router keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from stepbridge.adapter import RunOptions
from stepbridge.errors import (
    PoolSaturatedError,
    RunCancelledError,
    RunTimeoutError,
    StepbridgeError,
    UnsupportedCapabilityError,
    WorkerLostError,
    error_from_dict,
)
from stepbridge.program import Program, ToolModule
from stepbridge.result import RunResult, StepTrace

from . import protocol as p
from .net import CurveKeys, Pump, configure_router, default_ipc_endpoint, is_loopback_or_ipc, load_keypair, secure_ipc

__all__ = ["Job", "Router", "WorkerInfo", "has_side_effects", "required_capabilities", "wire_options"]

log = logging.getLogger("stepbridge.bridge.router")

PROGRAM_CACHE_SIZE = 1024


_OPTION_FIELDS = {"execution_id", "timeout", "lm", "attempt", "idempotency_key", "cache", "metadata"}
_OPTIONS_KNOWN = set(RunOptions.model_fields) == _OPTION_FIELDS


def wire_options(options: RunOptions) -> dict[str, Any]:
    """The run options a REQUEST carries besides execution id, attempt and budget (non-defaults only)."""
    d = options.__dict__
    if (_OPTIONS_KNOWN and d["lm"] is None and d["idempotency_key"] is None and d["cache"] is None
            and not d["metadata"]):
        return {}
    return options.model_dump(mode="json", exclude={"execution_id", "attempt", "timeout"}, exclude_defaults=True)


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


@dataclass(eq=False)
class Job:
    """One submitted run, across all its attempts."""

    rid: bytes
    execution_id: str
    program_hash: str
    inputs: dict[str, Any]
    options: dict[str, Any]
    needs: frozenset[str]
    retriable: bool
    attempt: int
    first_attempt: int
    deadline: float | None
    timeout: float | None
    future: asyncio.Future[RunResult] | None = None
    client: tuple[bytes, bytes] | None = None  # (client identity, client request id) in broker mode
    worker: WorkerInfo | None = None
    not_before: float = 0.0
    cancel_at: float | None = None  # when a cancel was sent; kill the worker after the grace period
    done: bool = False


@dataclass(eq=False)
class Slot:
    """A local worker process the router owns (respawned when it dies)."""

    index: int
    process: asyncio.subprocess.Process | None = None
    state: str = "starting"  # starting | ready | waiting | quarantined | stopped
    crashes: int = 0  # consecutive exits before READY
    restarts: int = 0
    next_spawn: float = 0.0
    ready: bool = False
    killed_by_us: bool = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


@dataclass(eq=False)
class WorkerInfo:
    identity: bytes
    worker_id: str
    pid: int
    host: str
    backend: str
    capabilities: frozenset[str]
    capacity: int
    slot: Slot | None = None
    inflight: dict[bytes, Job] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)
    connected_at: float = field(default_factory=time.time)
    done: int = 0
    failed: int = 0
    draining: bool = False
    warmed: tuple[str, ...] = ()  # programs the worker built from its store at start

    @property
    def credit(self) -> int:
        return 0 if self.draining else self.capacity - len(self.inflight)


class Router:
    """Binds a ROUTER socket, owns local workers, and routes requests to workers by credit."""

    def __init__(
        self,
        bind: str | None = None,
        *,
        max_message: int = p.MAX_BODY_BYTES + 4096,
        workers: int = 2,
        backend: str = "native",
        capacity: int = 16,
        queue_size: int = 1000,
        saturation_wait: float = 1.0,
        heartbeat: float = 1.0,
        liveness: int = 3,
        max_attempts: int = 3,
        retry_backoff: float = 0.02,
        cancel_grace: float = 2.0,
        quarantine_after: int = 5,
        quarantine_time: float = 60.0,
        curve: CurveKeys | None = None,
        curve_secret: str | Path | None = None,
        allowed_clients: str | Path | list[bytes] | None = None,
        allow_insecure_tcp: bool = False,
        expected_capabilities: frozenset[str] | None = None,
        store: Any = None,
        store_url: str | None = None,
        warm: bool | None = None,
        worker_args: list[str] | None = None,
        worker_env: dict[str, str] | None = None,
        worker_log_level: str = "WARNING",
        serve_clients: bool = False,
    ):
        self._tmpdir: Path | None = None
        curve_files: tuple[str, str] | None = None
        if curve is None and curve_secret is not None:
            curve = CurveKeys.from_files(curve_secret)
            curve_files = (str(curve_secret), str(curve_secret).removesuffix("_secret"))
        if bind is None:
            bind, self._tmpdir = default_ipc_endpoint()
        if bind.startswith("tcp://") and curve is None and not allow_insecure_tcp:
            raise ValueError("TCP endpoints require CURVE keys (see `stepbridge pool keys`)")
        if bind.startswith("tcp://") and not is_loopback_or_ipc(bind) and curve is None:
            raise ValueError("refusing to bind a non-loopback TCP address without CURVE")
        self.bind = bind
        self.address = bind
        self.n_workers = workers
        self.backend = backend
        self.capacity = capacity
        self.queue_size = queue_size
        self.saturation_wait = saturation_wait
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.max_attempts = max(1, max_attempts)
        self.retry_backoff = retry_backoff
        self.cancel_grace = cancel_grace
        self.quarantine_after = quarantine_after
        self.quarantine_time = quarantine_time
        self.curve = curve
        #: (secret file, public file) of the router's key pair, for local workers under CURVE
        self.curve_files = curve_files
        self.allowed_clients = allowed_clients
        self.expected_capabilities = expected_capabilities or frozenset()
        self.store = store
        self.store_url = store_url
        self.worker_args = list(worker_args or [])
        if store_url is not None and "--db" not in self.worker_args:
            self.worker_args += ["--db", store_url]
        if warm is not None:
            self.worker_args.append("--warm" if warm else "--no-warm")
        self.worker_env = worker_env
        self.worker_log_level = worker_log_level
        self.serve_clients = serve_clients
        self.max_message = max_message

        self.ctx = zmq.asyncio.Context()
        self._sync_ctx: zmq.Context[Any] = zmq.Context.shadow(self.ctx.underlying)
        self.sock: zmq.Socket[Any] | None = None
        self.pump: Pump | None = None
        self.workers: dict[bytes, WorkerInfo] = {}
        self.slots: list[Slot] = []
        self.queue: deque[Job] = deque()
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._programs: OrderedDict[str, p.ProgramDef] = OrderedDict()
        self._jobs: dict[bytes, Job] = {}
        self._client_jobs: dict[tuple[bytes, bytes], Job] = {}
        self._program_meta: dict[str, tuple[frozenset[str], bool]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._rid_prefix = os.urandom(4)  # request ids: unique per router (a restarted broker is another)
        self._rid_seq = itertools.count(1)
        self._auth: Any = None
        self._closing = False
        self._started = False
        self._ready_event = asyncio.Event()
        self._completions: deque[float] = deque(maxlen=10_000)
        self.started_at = time.time()
        self.stats = {"submitted": 0, "succeeded": 0, "failed": 0, "retried": 0, "stale_replies": 0,
                      "rejected_frames": 0, "saturated": 0, "timed_out": 0, "cancelled": 0, "workers_lost": 0,
                      "respawns": 0, "programs_sent": 0}

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.curve is not None:
            await self._start_auth()
        sock = self._sync_ctx.socket(zmq.ROUTER)
        configure_router(sock, max_msg=self.max_message)
        if self.curve is not None:
            sock.setsockopt(zmq.ZAP_DOMAIN, b"stepbridge")
            self.curve.apply_server(sock)
        sock.bind(self.bind)
        if self.bind.startswith("tcp://"):
            self.address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        secure_ipc(self.bind)
        self.sock = sock
        self.pump = Pump(sock, self._on_frames, asyncio.get_running_loop())
        self._tasks.append(asyncio.ensure_future(self._housekeeping()))
        if self.curve is not None:
            self._tasks.append(asyncio.ensure_future(self._monitor()))
        for index in range(self.n_workers):
            slot = Slot(index)
            self.slots.append(slot)
            await self._spawn(slot)
        log.info("pool router on %s with %d local %s workers", self.address, self.n_workers, self.backend)

    async def _start_auth(self) -> None:
        from zmq.auth.asyncio import AsyncioAuthenticator

        auth = AsyncioAuthenticator(self.ctx, log=logging.getLogger("stepbridge.bridge.auth"))
        allowed = self.allowed_clients
        if allowed is None:
            raise ValueError("a CURVE router needs the allowed client public keys (a directory of .key files)")
        keys: set[bytes] = set()
        if isinstance(allowed, list):
            keys |= {bytes(k) for k in allowed}
        else:
            for path in sorted(Path(allowed).glob("*.key")):
                try:
                    keys.add(load_keypair(path)[0])
                except Exception as exc:
                    log.warning("skipping unreadable public key file %s: %s", path, exc)
        if self.curve is not None:
            keys.add(self.curve.public)  # local workers use the router's own key pair
        allowed_keys = frozenset(keys)

        class _Keys:
            def callback(self, domain: str, key: bytes) -> bool:
                return key in allowed_keys

        auth.start()
        auth.configure_curve_callback(domain="stepbridge", credentials_provider=_Keys())
        self._auth = auth

    async def wait_ready(self, n: int = 1, timeout: float = 30.0) -> None:
        """Wait until at least ``n`` workers have said READY."""
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
        for job in list(self.queue):
            self._finish_error(job, WorkerLostError("the pool is shutting down"))
        self.queue.clear()
        for waiter in self._room_waiters:
            if not waiter.done():
                waiter.set_exception(PoolSaturatedError("the pool is shutting down", queue_size=self.queue_size))
        deadline = time.monotonic() + timeout
        if drain:
            for worker in list(self.workers.values()):
                self._send(worker.identity, p.Drain())
                worker.draining = True
            while any(w.inflight for w in self.workers.values()) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        for worker in list(self.workers.values()):
            self._send(worker.identity, p.Disconnect(reason="shutdown"))
        for job in list(self._jobs.values()):
            self._finish_error(job, WorkerLostError("the pool shut down before the run finished"))
        for slot in self.slots:
            slot.state = "stopped"
        procs = [s.process for s in self.slots if s.process is not None and s.process.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(pr.wait() for pr in procs)), max(0.5, deadline - time.monotonic()))
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._auth is not None:
            self._auth.stop()
        if self.pump is not None:
            self.pump.close(linger=0)
        self.ctx.term()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    # -- local processes ---------------------------------------------------------------------------
    async def _spawn(self, slot: Slot) -> None:
        if self._closing:
            return
        cmd = [sys.executable, "-m", "stepbridge.bridge.worker", "--connect", self.address,
               "--backend", self.backend, "--capacity", str(self.capacity), "--heartbeat", str(self.heartbeat),
               "--liveness", str(self.liveness), "--parent-pid", str(os.getpid()),
               "--log-level", self.worker_log_level, *self.worker_args]
        if self.curve is not None and self.curve_files is not None and "--curve-secret" not in self.worker_args:
            cmd += ["--curve-secret", self.curve_files[0], "--curve-server", self.curve_files[1]]
        env = dict(os.environ if self.worker_env is None else self.worker_env)
        slot.process = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                            stdout=asyncio.subprocess.DEVNULL, env=env)
        slot.state = "starting"
        slot.ready = False
        slot.killed_by_us = False
        self._tasks.append(asyncio.ensure_future(self._watch(slot, slot.process)))

    async def _watch(self, slot: Slot, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if slot.process is not proc:
            return
        for worker in list(self.workers.values()):
            if worker.slot is slot:
                self._lose(worker, f"process {proc.pid} exited with code {code}")
        if self._closing or slot.state == "stopped":
            return
        if slot.ready or slot.killed_by_us:
            slot.crashes = 0
        else:
            slot.crashes += 1
        slot.process = None
        if slot.crashes >= self.quarantine_after:
            slot.state = "quarantined"
            slot.next_spawn = time.monotonic() + self.quarantine_time
            log.error("local worker slot %d died %d times before getting ready; quarantined for %.0fs",
                      slot.index, slot.crashes, self.quarantine_time)
        else:
            slot.state = "waiting"
            slot.next_spawn = time.monotonic() + (0.0 if slot.crashes == 0 else
                                                  min(5.0, 0.1 * 2 ** (slot.crashes - 1)))
        if slot.next_spawn <= time.monotonic():
            await self._respawn(slot)

    async def _respawn(self, slot: Slot) -> None:
        slot.restarts += 1
        self.stats["respawns"] += 1
        await self._spawn(slot)

    # -- submission --------------------------------------------------------------------------------
    def remember_program(self, program_hash: str, data: dict[str, Any], base_dir: str | None) -> None:
        self._programs[program_hash] = p.ProgramDef(program_hash=program_hash, program=data, base_dir=base_dir)
        self._programs.move_to_end(program_hash)
        while len(self._programs) > PROGRAM_CACHE_SIZE:
            old, _ = self._programs.popitem(last=False)
            self._program_meta.pop(old, None)

    def knows_program(self, program_hash: str) -> bool:
        if program_hash in self._programs:
            self._programs.move_to_end(program_hash)
            return True
        return False

    def capabilities(self) -> frozenset[str]:
        caps: set[str] = set(self.expected_capabilities if any(s.state != "quarantined" for s in self.slots) else ())
        for worker in self.workers.values():
            caps |= worker.capabilities
        return frozenset(caps)

    def _can_serve(self, needs: frozenset[str]) -> bool:
        if any(needs <= w.capabilities for w in self.workers.values() if not w.draining):
            return True
        return any(s.state != "quarantined" for s in self.slots) and needs <= self.expected_capabilities

    def make_job(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> Job:
        digest = program.content_hash
        meta = self._program_meta.get(digest)
        if meta is None or digest not in self._programs:
            self.remember_program(digest, program.to_dict(), str(program.base_dir))
            meta = self._program_meta[digest] = (required_capabilities(program), has_side_effects(program))
        opts = wire_options(options)
        return self._job(digest, meta[0], meta[1], options.execution_id, inputs, opts, options.attempt,
                         options.timeout)

    def _job(self, program_hash: str, needs: frozenset[str], side_effects: bool, execution_id: str,
             inputs: dict[str, Any], options: dict[str, Any], attempt: int, timeout: float | None) -> Job:
        now = time.monotonic()
        rid = self._rid_prefix + next(self._rid_seq).to_bytes(8, "big")
        return Job(rid=rid, execution_id=execution_id, program_hash=program_hash, inputs=inputs,
                   options=options, needs=needs, retriable=not side_effects, attempt=attempt, first_attempt=attempt,
                   deadline=now + timeout if timeout else None, timeout=timeout)

    async def enqueue(self, job: Job, wait: float | None = None) -> None:
        """Queue a job, waiting up to ``wait`` seconds for room; raise typed errors at once otherwise."""
        if self._closing:
            raise WorkerLostError("the pool is shutting down")
        if not self.workers and self.slots and all(s.state == "quarantined" for s in self.slots):
            raise WorkerLostError("every local worker is quarantined (they keep dying before getting ready); "
                                  "see the pool's log")
        if not self._can_serve(job.needs):
            missing = sorted(job.needs - self.capabilities()) or sorted(job.needs)
            raise UnsupportedCapabilityError(
                f"no worker in the pool declares {', '.join(missing)} "
                f"(the program needs {', '.join(sorted(job.needs))})",
                capability=missing[0] if missing else None, adapter="pool")
        wait = self.saturation_wait if wait is None else wait
        if len(self.queue) >= self.queue_size:
            # one future and one timer per wait (no task per wait_for); finished waiters are skipped by
            # _room and pruned by housekeeping rather than removed one by one (O(n) each in a deque)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while len(self.queue) >= self.queue_size:
                left = deadline - loop.time()
                if left <= 0 or self._closing:
                    self.stats["saturated"] += 1
                    raise PoolSaturatedError(
                        f"the pool queue stayed full ({self.queue_size} waiting) for {wait:.2f}s",
                        queue_size=self.queue_size)
                waiter: asyncio.Future[None] = loop.create_future()
                self._room_waiters.append(waiter)
                timer = loop.call_later(left, _wake, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    if not waiter.done():
                        waiter.cancel()
        self.stats["submitted"] += 1
        self._jobs[job.rid] = job
        self.queue.append(job)
        self._dispatch()

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
        if job.done:
            return
        self.stats["cancelled"] += 1
        if job.worker is None:
            with contextlib.suppress(ValueError):
                self.queue.remove(job)
            self._room()
            self._finish_error(job, RunCancelledError("run cancelled by its caller"))
            return
        job.cancel_at = time.monotonic()
        self._send(job.worker.identity, p.Cancel(attempt=job.attempt), job.rid)
        # the caller is answered now; the worker's credit stays taken until it answers or is replaced
        self._finish_error(job, RunCancelledError("run cancelled by its caller"), keep_inflight=True)

    def _room(self) -> None:
        """Wake as many waiting submitters as there is room in the queue."""
        room = self.queue_size - len(self.queue)
        while room > 0 and self._room_waiters:
            waiter = self._room_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                room -= 1

    # -- dispatch ----------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        if not self.queue:
            return
        now = time.monotonic()
        candidates = [w for w in self.workers.values() if w.credit > 0]
        if not candidates:
            return
        skipped: list[Job] = []
        sent = False
        while self.queue and candidates:
            job = self.queue.popleft()
            if job.not_before > now:
                skipped.append(job)
                continue
            if job.deadline is not None and job.deadline <= now:
                self._expire(job)
                continue
            best: WorkerInfo | None = None
            for worker in candidates:
                if job.needs <= worker.capabilities and (best is None or worker.credit > best.credit):
                    best = worker
            if best is None:
                skipped.append(job)
                continue
            if self._send_request(best, job):
                sent = True
                if best.credit <= 0:
                    candidates.remove(best)
            else:
                skipped.append(job)
                candidates = [w for w in self.workers.values() if w.credit > 0]
        self.queue.extendleft(reversed(skipped))
        if sent:
            self._room()

    def _send_request(self, worker: WorkerInfo, job: Job) -> bool:
        budget = None
        if job.deadline is not None:
            budget = max(0.001, job.deadline - time.monotonic())
        body = p.Request(execution_id=job.execution_id, program_hash=job.program_hash, inputs=job.inputs,
                         attempt=job.attempt, budget=budget, options=job.options)
        job.worker = worker
        worker.inflight[job.rid] = job
        if not self._send(worker.identity, body, job.rid):
            worker.inflight.pop(job.rid, None)
            job.worker = None
            self._lose(worker, "unreachable", requeue=True)
            return False
        return True

    def _send(self, identity: bytes, body: p.Body, rid: bytes = b"") -> bool:
        if self.pump is None:
            return False
        try:
            frames = [identity, *p.encode(body, rid)]
        except p.ProtocolError as exc:
            log.error("could not encode %s: %s", body.command.name, exc)
            return False
        return self.pump.send(frames)

    # -- outcomes ----------------------------------------------------------------------------------
    def _finish_ok(self, job: Job, data: p.WireResult) -> None:
        if job.done:
            return
        job.done = True
        self._jobs.pop(job.rid, None)
        self.stats["succeeded"] += 1
        self._completions.append(time.monotonic())
        if job.client is not None:
            self._client_jobs.pop(job.client, None)
            self._send(job.client[0], p.Reply(attempt=job.attempt, result=data), job.client[1])
        elif job.future is not None and not job.future.done():
            try:  # validated by the body decoder already: build the models without a second pass
                result = p.result_from_wire(data, backend="pool", attempts=job.attempt)
            except Exception as exc:
                job.future.set_exception(StepbridgeError(f"the worker sent an invalid result: {exc}"))
                return
            job.future.set_result(result)

    def _finish_error(self, job: Job, error: StepbridgeError | dict[str, Any],
                      trace: list[dict[str, Any]] | None = None, *, keep_inflight: bool = False) -> None:
        if job.done:
            return
        job.done = True
        self._jobs.pop(job.rid, None)
        if not keep_inflight and job.worker is not None:
            job.worker.inflight.pop(job.rid, None)
        self.stats["failed"] += 1
        self._completions.append(time.monotonic())
        if job.client is not None:
            self._client_jobs.pop(job.client, None)
            data = error if isinstance(error, dict) else error.to_dict()
            trace_data = trace if trace is not None else [
                t.model_dump(mode="json") for t in getattr(error, "trace", []) if hasattr(t, "model_dump")]
            self._send(job.client[0], p.Reply(attempt=job.attempt, error=data, trace=trace_data), job.client[1])
        elif job.future is not None and not job.future.done():
            exc = error_from_dict(error) if isinstance(error, dict) else error
            if trace:
                with contextlib.suppress(Exception):
                    exc.trace = [StepTrace.model_validate(t) for t in trace]
            job.future.set_exception(exc)

    def _expire(self, job: Job) -> None:
        self.stats["timed_out"] += 1
        self._finish_error(job, RunTimeoutError(
            f"run did not finish within its timeout of {job.timeout}s (attempt {job.attempt})", timeout=job.timeout))

    def _lose(self, worker: WorkerInfo, why: str, *, requeue: bool = True) -> None:
        """Forget a worker; retry or fail its in-flight requests."""
        if self.workers.pop(worker.identity, None) is None:
            return
        self.stats["workers_lost"] += 1
        if not self._closing:
            log.warning("worker %s (pid %d) lost: %s; %d request(s) in flight", worker.worker_id, worker.pid, why,
                        len(worker.inflight))
        now = time.monotonic()
        for job in reversed(list(worker.inflight.values())):
            job.worker = None
            if job.done:
                continue
            used = job.attempt - job.first_attempt + 1
            if (requeue and job.retriable and used < self.max_attempts and not self._closing
                    and (job.deadline is None or job.deadline > now)):
                job.attempt += 1
                job.not_before = now + self.retry_backoff * (2 ** (used - 1))
                self.stats["retried"] += 1
                self.queue.appendleft(job)
            elif job.deadline is not None and job.deadline <= now:
                self._expire(job)
            else:
                reason = "" if job.retriable else " (not retried: the program has a side-effecting tool step)"
                self._finish_error(job, WorkerLostError(
                    f"worker {worker.worker_id} was lost ({why}) while running the request{reason}",
                    worker=worker.worker_id, attempts=used))
        worker.inflight.clear()
        self._dispatch()

    # -- receiving ---------------------------------------------------------------------------------
    def _on_frames(self, frames: list[bytes]) -> None:
        identity = frames[0]
        try:
            msg = p.decode(frames[1:])
        except p.ProtocolError as exc:
            self.stats["rejected_frames"] += 1
            log.warning("refused a frame from peer %r: %s (%s)", identity[:40], exc, exc.reason)
            return
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_seen = time.monotonic()
        body = msg.body
        if isinstance(body, p.Reply):
            if worker is not None:
                self._on_reply(worker, msg.request_id, body)
            else:
                self.stats["stale_replies"] += 1
                log.info("dropped a late reply from a lost worker %r (attempt %d)", identity[:40], body.attempt)
        elif isinstance(body, p.Started):
            pass
        elif isinstance(body, p.Heartbeat):
            if worker is None:
                self._send(identity, p.Disconnect(reason="unknown worker: reconnect"))
        elif isinstance(body, p.Ready):
            self._on_ready(identity, body)
        elif isinstance(body, p.ProgramGet):
            self._on_program_get(identity, body)
        elif isinstance(body, p.Drain) and worker is not None:
            worker.draining = True
        elif isinstance(body, p.Disconnect):
            if worker is not None:
                self._lose(worker, f"disconnected ({body.reason})")
        elif isinstance(body, p.Request) and self.serve_clients:
            self._on_client_request(identity, msg.request_id, body)
        elif isinstance(body, p.Cancel) and self.serve_clients and worker is None:
            job = self._client_jobs.get((identity, msg.request_id))
            if job is not None:
                self.cancel(job)
        elif isinstance(body, p.Status):
            self._send(identity, p.Status(status=self.status()), msg.request_id)
        else:
            self.stats["rejected_frames"] += 1
            log.warning("refused %s from %s peer %r", msg.command.name, "worker" if worker else "unknown",
                        identity[:40])

    def _on_ready(self, identity: bytes, body: p.Ready) -> None:
        if body.protocol != p.PROTOCOL_VERSION:
            log.warning("refused worker %s: protocol %d", body.worker_id, body.protocol)
            self._send(identity, p.Disconnect(reason="refused"))
            return
        old = self.workers.get(identity)
        if old is not None:  # a repeated READY (the first answer crossed it): just answer again
            self._send(identity, p.Heartbeat())
            return
        slot = next((s for s in self.slots if s.pid == body.pid and s.process is not None), None)
        if slot is not None:
            if slot.process is None or slot.process.returncode is not None:
                return
            slot.ready = True
            slot.crashes = 0
            slot.state = "ready"
        info = WorkerInfo(identity=identity, worker_id=body.worker_id, pid=body.pid, host=body.host,
                          backend=body.backend, capabilities=frozenset(body.capabilities) | {"out_of_process"},
                          capacity=body.capacity, slot=slot, warmed=tuple(body.warmed))
        self.workers[identity] = info
        self._send(identity, p.Heartbeat())  # the READY acknowledgement
        log.info("worker %s ready (pid %d, %s, capacity %d)", body.worker_id, body.pid, body.backend, body.capacity)
        self._ready_event.set()
        self._dispatch()

    def _on_reply(self, worker: WorkerInfo, rid: bytes, body: p.Reply) -> None:
        job = worker.inflight.get(rid)
        if job is None or job.attempt != body.attempt or job.worker is not worker:
            self.stats["stale_replies"] += 1
            log.info("dropped a stale reply from %s (attempt %d)", worker.worker_id, body.attempt)
            return
        del worker.inflight[rid]
        job.worker = None
        if job.done:  # cancelled or timed out while running; the credit is now free
            self._dispatch()
            return
        if body.error is not None:
            worker.failed += 1
            if (body.error.get("type") == "WorkerLostError" and job.retriable
                    and job.attempt - job.first_attempt + 1 < self.max_attempts):
                # the worker refused (draining, over capacity): not run, so run it elsewhere
                job.attempt += 1
                self.stats["retried"] += 1
                self.queue.appendleft(job)
                self._dispatch()
                return
            error = body.error
            if error.get("type") == "RunTimeoutError" and job.timeout is not None:
                # the worker only knew the remaining budget; the caller set (and expects) the whole timeout
                details = error.get("details")
                error = {**error, "message": f"run exceeded its timeout of {job.timeout}s",
                         "details": {**(details if isinstance(details, dict) else {}), "timeout": job.timeout}}
            self._finish_error(job, error, body.trace)
        elif body.result is not None:
            worker.done += 1
            self._finish_ok(job, body.result)
        else:
            self._finish_error(job, StepbridgeError("the worker sent an empty reply"))
        self._dispatch()

    def _on_program_get(self, identity: bytes, body: p.ProgramGet) -> None:
        known = self._programs.get(body.program_hash)
        if known is None and self.store is not None:
            try:
                program = self.store.load(body.program_hash)
                self.remember_program(program.content_hash, program.to_dict(), str(program.base_dir))
                self._program_meta[program.content_hash] = (required_capabilities(program),
                                                            has_side_effects(program))
                known = self._programs.get(body.program_hash)
            except Exception as exc:
                log.debug("program %s not in the store: %s", body.program_hash[:12], exc)
        if known is None:
            known = p.ProgramDef(program_hash=body.program_hash, error={
                "type": "StorageError", "message": f"the router does not know program {body.program_hash[:12]}"})
        elif self._send(identity, known):
            self.stats["programs_sent"] += 1
            return
        self._send(identity, known)

    def _on_client_request(self, identity: bytes, crid: bytes, body: p.Request) -> None:
        key = (identity, crid)
        if key in self._client_jobs:
            return
        if not self.knows_program(body.program_hash):
            if body.program is None:
                self._send(identity, p.Reply(attempt=body.attempt, error={
                    "type": "StorageError", "message": f"unknown program {body.program_hash[:12]}: send it inline"}),
                    crid)
                return
            try:
                from .worker import build_program

                program = build_program(body.program, body.program_hash, body.base_dir)
            except StepbridgeError as exc:
                self._send(identity, p.Reply(attempt=body.attempt, error=exc.to_dict()), crid)
                return
            self._program_meta[body.program_hash] = (required_capabilities(program), has_side_effects(program))
            self.remember_program(body.program_hash, body.program, body.base_dir)
        needs, side_effects = self._program_meta.get(body.program_hash, (frozenset(), False))
        options = dict(body.options)
        job = self._job(body.program_hash, needs, side_effects, body.execution_id, dict(body.inputs), options,
                        body.attempt, body.budget)
        job.client = key
        self._client_jobs[key] = job

        async def go() -> None:
            try:
                await self.enqueue(job, body.wait)
            except StepbridgeError as exc:
                self._client_jobs.pop(key, None)
                self._send(identity, p.Reply(attempt=body.attempt, error=exc.to_dict()), crid)

        self._tasks.append(asyncio.ensure_future(go()))

    # -- housekeeping ------------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        tick = min(0.05, self.heartbeat / 4)
        last_beat = 0.0
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            try:
                if now - last_beat >= self.heartbeat:
                    last_beat = now
                    for worker in list(self.workers.values()):
                        if not self._send(worker.identity, p.Heartbeat()):
                            self._lose(worker, "unreachable")
                limit = self.heartbeat * self.liveness
                for worker in list(self.workers.values()):
                    if now - worker.last_seen > limit:
                        self._lose(worker, f"no heartbeat for {now - worker.last_seen:.1f}s")
                        if worker.slot is not None and worker.slot.process is not None:
                            # a hung local worker: replace it (its exit is then handled by _watch)
                            worker.slot.killed_by_us = True
                            with contextlib.suppress(ProcessLookupError):
                                worker.slot.process.kill()
                self._check_deadlines(now)
                for slot in self.slots:
                    if slot.process is None and slot.state in ("waiting", "quarantined") and now >= slot.next_spawn:
                        await self._respawn(slot)
                self._tasks = [t for t in self._tasks if not t.done()]
                if len(self._room_waiters) > 64:
                    self._room_waiters = deque(w for w in self._room_waiters if not w.done())
                if self.queue:
                    self._dispatch()
            except Exception:
                log.exception("housekeeping failed")

    def _check_deadlines(self, now: float) -> None:
        if self.queue:
            expired = [j for j in self.queue if j.deadline is not None and j.deadline <= now]
            for job in expired:
                self.queue.remove(job)
                self._expire(job)
            if expired:
                self._room()
        for worker in list(self.workers.values()):
            for job in list(worker.inflight.values()):
                if not job.done and job.deadline is not None and now > job.deadline + self.cancel_grace:
                    # the worker should have answered with RunTimeoutError by now
                    self._send(worker.identity, p.Cancel(attempt=job.attempt), job.rid)
                    job.cancel_at = now
                    self.stats["timed_out"] += 1
                    self._finish_error(job, RunTimeoutError(
                        f"run did not finish within its timeout of {job.timeout}s", timeout=job.timeout),
                        keep_inflight=True)
                elif job.done and job.cancel_at is not None and now > job.cancel_at + self.cancel_grace:
                    self._replace(worker, "ignored a cancel")
                    break

    def _replace(self, worker: WorkerInfo, why: str) -> None:
        log.warning("worker %s %s for %.1fs; replacing it", worker.worker_id, why, self.cancel_grace)
        slot = worker.slot
        if slot is not None and slot.process is not None and slot.process.returncode is None:
            slot.killed_by_us = True
            with contextlib.suppress(ProcessLookupError):
                slot.process.kill()
        else:
            self._send(worker.identity, p.Disconnect(reason="replaced: reconnect"))
        self._lose(worker, why)

    # -- status ------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        recent = [t for t in self._completions if now - t <= 10.0]
        span = min(10.0, max(1e-9, now - (recent[0] if recent else now))) if recent else 10.0
        return {
            "address": self.address,
            "backend": self.backend,
            "uptime_s": round(time.time() - self.started_at, 3),
            "queue": {"depth": len(self.queue), "size": self.queue_size},
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
                       "crashes": s.crashes} for s in self.slots],
        }

    async def _monitor(self) -> None:
        """Log refused CURVE handshakes (a worker or client with a wrong key)."""
        from zmq.utils.monitor import recv_monitor_message

        assert self.sock is not None
        events = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        sync_mon = self.sock.get_monitor_socket(events)
        mon = zmq.asyncio.Socket.shadow(sync_mon.underlying)
        try:
            while True:
                event = await recv_monitor_message(mon)
                self.stats["rejected_frames"] += 1
                log.warning("refused a connection on %s: %s (%s)", self.address,
                            "authentication failed" if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                            else "handshake failed", event.get("value"))
        finally:
            with contextlib.suppress(Exception):
                self.sock.disable_monitor()
            sync_mon.close(linger=0)


