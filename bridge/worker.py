"""A pool worker: one DEALER socket, one hosted adapter, up to ``capacity`` runs at once.

``python -m stepbridge.bridge.worker --connect ADDR --backend native --capacity 16`` (or
``stepbridge worker``). Everything happens on one asyncio loop (uvloop's where installed): requests
become tasks (LM work is I/O-bound), and heartbeats go out from the same loop, so a busy program never silences them
(CPU-bound code inside a program should yield; a stalled loop is what the router's liveness
check is for).

Program definitions are looked up by content hash: the local cache, then the store (read-only,
optional), then the router (PROGRAM_GET). Whatever comes back is untrusted: it is validated in
full and its hash recomputed before anything is built; a mismatch is an error, never a run.

Data files (corpora) come by content too (:mod:`stepbridge.bridge.data`): a request names them by
sha256, the worker fetches what its own cache lacks (DATA_GET), verifies every byte against the
hash, and builds the program in a folder of its own cache; a corpus the client did not ship resolves
under the operator's ``--data-root`` or not at all. No folder ever comes from a request or a stored
row, and the program cache is keyed by content hash + data hashes.

The worker loses the router when the connection breaks: the transport's own heartbeats (ZMTP
PING/PONG, answered by libzmq's I/O thread) detect a dead or unreachable router, and the router
says DISCONNECT when it has forgotten this worker. A router whose event loop is merely busy is not
lost: its replies and heartbeats resume, and nothing is rerouted. Once lost, the worker abandons its
in-flight runs (the router has already rerouted them), waits with backoff and reconnects under a new
identity.
It exits when its parent dies (``--parent-pid``), and SIGTERM drains: no new work, in-flight runs
finish, DISCONNECT, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import time
import traceback
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
from stepbridge.adapter import RunOptions
from stepbridge.errors import (
    InputValidationError,
    Issue,
    ProgramNotFound,
    ProgramValidationError,
    RunCancelledError,
    StepbridgeError,
    WorkerLostError,
)
from stepbridge.program import Program
from stepbridge.runner import check_run
from stepbridge.secrets import frame_might_hold_secret, scrub, scrub_process_output

from . import protocol as p
from .data import DEFAULT_CACHE_BYTES, DataCache, corpora, manifest_key
from .logs import configure_process_logging
from .net import CurveKeys, Pump, configure_dealer

if TYPE_CHECKING:
    from stepbridge.storage.store import Store

__all__ = ["Worker", "main"]

log = logging.getLogger("stepbridge.bridge.worker")

PROGRAM_CACHE_SIZE = 256
PROGRAM_FETCH_TIMEOUT = 10.0
DATA_FETCH_TIMEOUT = 60.0
#: the least time without transport traffic before the router's connection counts as dead
TRANSPORT_TIMEOUT = 10.0


def _traceback_text(exc: BaseException) -> str:
    return scrub("".join(traceback.format_exception(exc))[-8000:])


def error_reply(exc: BaseException, attempt: int) -> p.Reply:
    """A REPLY body carrying ``exc`` as a typed error with its partial trace."""
    if isinstance(exc, StepbridgeError):
        typed = exc
        if typed.remote_traceback is None:
            typed.remote_traceback = _traceback_text(exc)
    else:
        typed = StepbridgeError(f"{type(exc).__name__}: {exc}")
        typed.remote_traceback = _traceback_text(exc)
    trace = []
    for step in typed.trace:
        dump = getattr(step, "model_dump", None)
        trace.append(dump(mode="json") if dump else step)
    return p.Reply(attempt=attempt, error=typed.to_dict(), trace=scrub(trace))


class _Session:
    """One connection (one identity) to the router."""

    def __init__(self, pump: Pump, identity: bytes):
        self.pump = pump
        self.identity = identity
        self.last_seen = time.monotonic()
        self.acked = False
        self.lost = asyncio.Event()
        self.reason = ""
        self.monitor: Pump | None = None


class Worker:
    """Hosts one adapter and serves requests from a router until told to stop."""

    def __init__(
        self,
        connect: str,
        *,
        backend: str = "native",
        capacity: int = 16,
        heartbeat: float = 1.0,
        liveness: int = 3,
        parent_pid: int | None = None,
        store: Store | None = None,
        curve: CurveKeys | None = None,
        worker_id: str | None = None,
        adapter_options: dict[str, Any] | None = None,
        warm: list[str] | None = None,
        warm_aliases: bool | None = None,
        data_cache: str | Path | None = None,
        data_root: str | Path | None = None,
        data_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
        self.connect = connect
        self.backend = backend
        self.capacity = max(1, capacity)
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.parent_pid = parent_pid
        self.store = store
        self.curve = curve
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.adapter_options = adapter_options or {}
        self.warm = list(warm or [])
        #: warm every program an alias points at (default: whenever there is a store)
        self.warm_aliases = store is not None if warm_aliases is None else warm_aliases
        #: content hashes built and prepared at start (reported in READY)
        self.warmed: list[str] = []
        #: where program definitions came from: cache, store, router
        self.sources: dict[str, int] = {"cache": 0, "store": 0, "router": 0}
        self.incarnation = 0
        self.ctx = zmq.Context()
        self.adapter: Any = None
        self.capabilities: frozenset[str] = frozenset()
        #: where data files shipped by content are cached (verified), and the operator's own data folder
        self.data = DataCache(data_cache, max_bytes=data_cache_bytes)
        self.data_root = Path(data_root).resolve() if data_root is not None else None
        self._programs: OrderedDict[str, Program] = OrderedDict()  # by content hash, no folder yet
        self._bound: OrderedDict[tuple[str, str], Program] = OrderedDict()  # by content hash + data hashes
        self._prepared: set[tuple[str, str]] = set()
        self._fetches: dict[str, asyncio.Future[Program]] = {}
        self._data_fetches: dict[str, asyncio.Future[None]] = {}
        self._storing: set[asyncio.Task[None]] = set()
        self._tasks: dict[bytes, asyncio.Task[None]] = {}
        self._cancelled: set[bytes] = set()
        self._session: _Session | None = None
        self._draining = False
        self._drain_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.exit_code = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    async def serve(self) -> int:
        """Connect, serve, reconnect on router loss; return the process exit code."""
        from stepbridge.registry import load_adapter

        self.adapter = load_adapter(self.backend, **self.adapter_options)
        self.capabilities = frozenset(self.adapter.capabilities)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.drain)
        watch = asyncio.ensure_future(self._watch_parent())
        await self._warm()
        backoff = 0.05
        try:
            while not self._stop.is_set():
                session = self._open()
                await self._run_session(session)
                self._abandon(session)
                if self._stop.is_set():
                    break
                log.warning("worker %s: lost the router (%s); reconnecting", self.worker_id, session.reason)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)
        finally:
            watch.cancel()
            with contextlib.suppress(BaseException):
                await self.adapter.aclose()
            self.ctx.destroy(linger=1000)
            self.data.close()
        return self.exit_code

    def _open(self) -> _Session:
        self.incarnation += 1
        identity = f"{self.worker_id}.{self.incarnation}.{uuid.uuid4().hex[:8]}".encode()
        sock = self.ctx.socket(zmq.DEALER)
        configure_dealer(sock, identity)
        # liveness of the connection itself, kept by libzmq's I/O threads on both ends (a busy router
        # loop still answers); generous, because it only has to catch a dead or unreachable router
        sock.setsockopt(zmq.HEARTBEAT_IVL, int(self.heartbeat * 1000))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(max(self.heartbeat * self.liveness, TRANSPORT_TIMEOUT) * 1000))
        if self.curve is not None:
            self.curve.apply_client(sock)
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sock.connect(self.connect)
        holder: list[_Session] = []
        loop = asyncio.get_running_loop()
        pump = Pump(sock, lambda frames: self._on_frames(holder[0], frames), loop)
        session = _Session(pump, identity)
        session.monitor = Pump(monitor, lambda frames: self._on_monitor(holder[0], frames), loop)
        holder.append(session)
        self._session = session
        return session

    def _on_monitor(self, session: _Session, frames: list[bytes]) -> None:
        if session is self._session and not session.lost.is_set():
            session.reason = "the connection to the router closed"
            session.lost.set()

    async def _run_session(self, session: _Session) -> None:
        beater = asyncio.ensure_future(self._beater(session))
        stopper = asyncio.ensure_future(self._stop.wait())
        lost = asyncio.ensure_future(session.lost.wait())
        tasks = (beater, stopper, lost)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _abandon(self, session: _Session) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()
        for fetches in (self._fetches, self._data_fetches):
            for fut in fetches.values():
                if not fut.done():
                    fut.cancel()
            fetches.clear()
        if session.monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                session.pump.sock.disable_monitor()
            session.monitor.close(linger=0)
        session.pump.close(linger=0 if not self._stop.is_set() else 1000)

    def drain(self) -> None:
        """Stop taking work, finish what is in flight, say goodbye, exit 0 (SIGTERM)."""
        if self._draining:
            return
        self._draining = True
        log.info("worker %s: draining (%d in flight)", self.worker_id, len(self._tasks))
        if self._session is not None:
            self._send(p.Drain())
        self._drain_task = asyncio.ensure_future(self._finish_drain())

    async def _finish_drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        self._send(p.Disconnect(reason="drained"))
        self._stop.set()

    async def _watch_parent(self) -> None:
        if self.parent_pid is None:
            return
        while True:
            await asyncio.sleep(0.2)
            if os.getppid() != self.parent_pid:
                log.warning("worker %s: parent %d is gone; exiting", self.worker_id, self.parent_pid)
                self.exit_code = 0
                self._stop.set()
                return

    async def _warm(self) -> None:
        """Build and prepare the programs behind every alias (and any given references) from the store.

        Each program is all-or-nothing: the store validates it in full and checks its hash, then the
        adapter prepares it, and only then does it enter the cache. A bad stored program (tampered,
        invalid, needing a capability this worker lacks, failing to prepare) is logged and skipped.
        """
        if self.store is None:
            return
        refs = list(self.warm)
        if self.warm_aliases:
            try:
                summaries = await asyncio.to_thread(self.store.list_programs)
            except Exception as exc:
                log.warning("worker %s: could not list stored programs to warm: %s", self.worker_id, exc)
                summaries = []
            for summary in summaries:
                refs += [f"{summary.name}@{alias}" for alias in sorted(summary.aliases)]
        for ref in refs:
            try:
                program: Program = await asyncio.to_thread(self.store.load, ref)
                # the stored row's folder is outside the content hash: never used (data comes by content)
                program.with_base_dir(None)
                if program.content_hash in self.warmed:
                    continue
                missing = program.required_capabilities - self.capabilities
                if missing:
                    log.info("worker %s: not warming %r: needs %s", self.worker_id, ref, ", ".join(sorted(missing)))
                    continue
                try:
                    self._folder_for(program, {})
                except ProgramValidationError:  # its corpora come with the first request
                    self._remember(program)
                    log.info("worker %s: %r needs data files; they come with its first request", self.worker_id,
                             ref)
                    continue
                key, bound = await self._bind(program, {})
                await self.adapter.prepare(bound)
            except Exception as exc:
                log.warning("worker %s: refused to warm stored program %r: %s", self.worker_id, ref,
                            scrub(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__)
                continue
            self._remember(program)
            self._prepared.add(key)
            self.warmed.append(program.content_hash)
        if refs:
            log.info("worker %s: warmed %d of %d stored program(s)", self.worker_id, len(self.warmed), len(refs))

    # -- I/O -------------------------------------------------------------------------------------
    def _send(self, body: p.Body, request_id: bytes = b"") -> bool:
        session = self._session
        if session is None:
            return False
        return session.pump.send(p.encode(body, request_id))

    def _send_frames(self, frames: list[bytes]) -> bool:
        """Send a reply. While other runs are in flight it is queued, and replies finished in the same
        loop turn leave together (one wake-up of the socket's I/O thread instead of one per reply); the
        only run's reply leaves at once (a loop turn less of latency, nothing to share the wake-up with)."""
        session = self._session
        if session is None:
            return False
        if self._tasks or session.pump.queued:
            return session.pump.send_soon(frames)
        return session.pump.send(frames)

    async def _beater(self, session: _Session) -> None:
        # READY until the router answers (it answers READY with a HEARTBEAT); until the connection
        # is complete a send fails at once (IMMEDIATE), so keep trying with a short backoff.
        delay = 0.01
        started = time.monotonic()
        while not session.acked:
            self._send(self._ready())
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.heartbeat / 2)
            if time.monotonic() - started > self.heartbeat * self.liveness:
                session.reason = "the router did not answer READY"
                session.lost.set()
                return
        while True:
            await asyncio.sleep(self.heartbeat)
            self._send(p.Heartbeat(in_flight=list(self._tasks)))

    def _ready(self) -> p.Ready:
        return p.Ready(worker_id=self.worker_id, incarnation=self.incarnation, pid=os.getpid(),
                       host=socket.gethostname(), capacity=self.capacity, backend=self.backend,
                       capabilities=sorted(self.capabilities), warmed=self.warmed[-p.MAX_WARMED:])

    def _on_frames(self, session: _Session, frames: list[bytes]) -> None:
        if session is not self._session:
            return
        session.last_seen = time.monotonic()
        session.acked = True
        try:
            msg = p.decode(frames)
        except p.ProtocolError as exc:
            log.warning("worker %s: dropped a bad frame from the router: %s", self.worker_id, exc)
            return
        self._handle(session, msg)

    def _handle(self, session: _Session, msg: p.Message) -> None:
        body = msg.body
        if isinstance(body, p.Request):
            if self._draining or len(self._tasks) >= self.capacity or msg.request_id in self._tasks:
                reason = "draining" if self._draining else "over capacity"
                self._send(error_reply(WorkerLostError(f"worker {self.worker_id} refused the request: {reason}",
                                                       worker=self.worker_id), body.attempt), msg.request_id)
                return
            self._tasks[msg.request_id] = asyncio.get_running_loop().create_task(self._execute(msg.request_id, body))
        elif isinstance(body, p.Cancel):
            running = self._tasks.get(msg.request_id)
            if running is not None:
                self._cancelled.add(msg.request_id)
                running.cancel()
        elif isinstance(body, p.ProgramDef):
            fut = self._fetches.pop(body.program_hash, None)
            if fut is not None and not fut.done():
                # build now, so a request arriving before the waiters resume finds it in the cache
                try:
                    program = self._from_router(body)
                except Exception as exc:
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: waiters may all be gone
                else:
                    fut.set_result(program)
        elif isinstance(body, p.Data):
            waiter = self._data_fetches.pop(body.data_hash, None)
            if waiter is not None and not waiter.done():
                self._spawn_store(body, waiter)
        elif isinstance(body, p.Drain):
            self.drain()
        elif isinstance(body, p.Disconnect):
            session.reason = f"router said: {body.reason}"
            if body.reason in ("shutdown", "refused"):
                self.exit_code = 0 if body.reason == "shutdown" else 3
                self._stop.set()
            session.lost.set()
        # HEARTBEAT: last_seen is already updated

    # -- running ---------------------------------------------------------------------------------
    async def _execute(self, request_id: bytes, req: p.Request) -> None:
        try:
            await self._run(request_id, req)
        finally:  # (the usual paths have freed the slot already, before answering)
            if request_id in self._tasks and self._tasks[request_id] is asyncio.current_task():
                del self._tasks[request_id]

    async def _run(self, request_id: bytes, req: p.Request) -> None:
        try:
            program = await self._program(req.program_hash)
            options = self._options(req)
            inputs = check_run(program, dict(req.inputs), self.backend, self.capabilities, options.lm,
                               where=f"worker {self.worker_id}")
            key, program = await self._bind(program, req.data)
            if key not in self._prepared:
                # a program's first run can hold the loop for a while (building it, first imports): the
                # router hears from us right before, not a heartbeat period earlier
                self._send(p.Heartbeat(in_flight=list(self._tasks)))
                await self.adapter.prepare(program)
                self._prepared.add(key)
            result = await self.adapter.run(program, inputs, options)
            result.worker = self.worker_id
            # the model itself goes into the body: msgspec encodes it through its fields (no model_dump)
            reply = p.Reply(attempt=req.attempt, result=result)
        except asyncio.CancelledError:
            if request_id in self._cancelled:
                self._cancelled.discard(request_id)
                self._tasks.pop(request_id, None)
                self._send(error_reply(RunCancelledError("run cancelled by its caller"), req.attempt), request_id)
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            reply = error_reply(exc, req.attempt)
        # free the slot before answering: the router may send the next request as soon as it reads this
        self._tasks.pop(request_id, None)
        try:
            try:
                frames = p.encode(reply, request_id)
            except TypeError:  # a value msgspec does not know: let pydantic make it JSON-safe
                assert reply.result is not None
                reply = p.Reply(attempt=req.attempt, result=result.model_dump(mode="json"))
                frames = p.encode(reply, request_id)
            # This worker's own secrets (its profiles' keys) never leave it: the process recording the
            # reply may not know them. One scan of the encoded body; the result is rebuilt only on a hit.
            if reply.result is not None and frame_might_hold_secret(frames[-1]):
                reply = p.Reply(attempt=req.attempt, result=scrub(result.model_dump(mode="json")))
                frames = p.encode(reply, request_id)
            frames_ok = self._send_frames(frames)
        except p.ProtocolError as exc:  # a result too big for the wire is still a typed answer
            frames_ok = self._send(error_reply(StepbridgeError(f"the result could not be sent: {exc}"),
                                               req.attempt), request_id)
        if not frames_ok:
            log.warning("worker %s: could not send the reply to %s", self.worker_id, req.execution_id)

    def _options(self, req: p.Request) -> RunOptions:
        if not req.options:
            # the usual case: nothing beyond what the Request struct already validated (execution id,
            # attempt, budget > 0), so build the options without another pydantic pass
            return RunOptions.plain(req.execution_id, timeout=req.budget, attempt=req.attempt)
        fields = dict(req.options)
        fields.update(execution_id=req.execution_id, attempt=req.attempt, timeout=req.budget)
        try:
            return RunOptions.model_validate(fields)
        except Exception as exc:
            raise InputValidationError(f"invalid run options: {exc}") from None

    def _remember(self, program: Program) -> None:
        self._programs[program.content_hash] = program.with_base_dir(None)  # a definition: no folder yet
        self._programs.move_to_end(program.content_hash)
        while len(self._programs) > PROGRAM_CACHE_SIZE:
            self._programs.popitem(last=False)

    # -- data files --------------------------------------------------------------------------------
    def _folder_for(self, program: Program, shipped: dict[str, str]) -> tuple[str, dict[str, str] | Path]:
        """Where ``program``'s corpora come from: the files shipped by content (all of them), else the
        operator's data root; a typed error naming the module otherwise. Never a folder from outside."""
        names = corpora(program)
        if not names:
            return "none", self.data_root or self.data.empty
        manifest = {corpus: shipped[corpus] for corpus in names if corpus in shipped}
        if len(manifest) == len(names):
            return manifest_key(manifest), manifest
        if self.data_root is not None:
            return "root", self.data_root
        missing = [corpus for corpus in names if corpus not in manifest]
        raise ProgramValidationError([Issue(
            f"/modules/{names[corpus]}/retriever/corpus",
            f"corpus {corpus!r} was not sent with the request (the client could not read it, or it is too big to "
            f"ship) and worker {self.worker_id} has no data root (stepbridge worker --data-root DIR)")
            for corpus in missing])

    async def _bind(self, program: Program, shipped: dict[str, str]) -> tuple[tuple[str, str], Program]:
        """The program with its data folder, cached by content hash + data hashes."""
        data_key, source = self._folder_for(program, shipped)
        key = (program.content_hash, data_key)
        bound = self._bound.get(key)
        if bound is not None and (not isinstance(source, dict) or bound.base_dir.is_dir()):
            self._bound.move_to_end(key)
            return key, bound
        self._bound.pop(key, None)  # (its folder was evicted by a worker sharing the cache: lay it out again)
        self._prepared.discard(key)
        if isinstance(source, dict):
            digests = set(source.values())
            self.data.assembling |= digests
            try:
                await asyncio.gather(*(self._fetch_data(d) for d in digests))
                folder = await asyncio.to_thread(self.data.folder, source, corpora(program))
            finally:
                self.data.assembling -= digests
        else:
            folder = source
        self.data.in_use.add(data_key)
        bound = program.model_copy().with_base_dir(folder)
        # index the corpora off the event loop (seconds for a big one): heartbeats keep going meanwhile,
        # and the adapter then finds the index in the process cache
        await asyncio.to_thread(_index_corpora, bound)
        self._bound[key] = bound
        while len(self._bound) > PROGRAM_CACHE_SIZE:
            old, _ = self._bound.popitem(last=False)
            self._prepared.discard(old)
        self.data.in_use = {k for _, k in self._bound}
        return key, bound

    async def _fetch_data(self, digest: str) -> None:
        """Make sure the data file ``digest`` is in the cache (verified), asking the router if not."""
        if await asyncio.to_thread(self.data.has, digest):
            return
        fut = self._data_fetches.get(digest)
        if fut is None:
            fut = self._data_fetches[digest] = asyncio.get_running_loop().create_future()
            self._send(p.DataGet(data_hash=digest))
        try:
            await asyncio.wait_for(asyncio.shield(fut), DATA_FETCH_TIMEOUT)
        except TimeoutError:
            self._data_fetches.pop(digest, None)
            raise WorkerLostError(f"the router did not send data file {digest[:12]} in time",
                                  worker=self.worker_id) from None

    def _spawn_store(self, answer: p.Data, waiter: asyncio.Future[None]) -> None:
        async def store() -> None:
            try:
                if answer.error is not None or answer.content is None:
                    from stepbridge.errors import error_from_dict

                    raise error_from_dict(answer.error or {"type": "StorageError",
                                                           "message": f"data file {answer.data_hash[:12]} is unknown"})
                await asyncio.to_thread(self.data.put, answer.data_hash, answer.content)  # verifies the hash
            except Exception as exc:
                if not waiter.done():
                    waiter.set_exception(exc)
                    waiter.exception()  # retrieved: waiters may all be gone
                return
            if not waiter.done():
                waiter.set_result(None)

        task = asyncio.ensure_future(store())
        self._storing.add(task)
        task.add_done_callback(self._storing.discard)

    async def _program(self, program_hash: str) -> Program:
        program = self._programs.get(program_hash)
        if program is not None:
            self.sources["cache"] += 1
            return program
        fut = self._fetches.get(program_hash)
        if fut is None:  # the first request for it looks it up; the others wait for the same answer
            fut = self._fetches[program_hash] = asyncio.get_running_loop().create_future()
            stored = await self._from_store(program_hash) if self.store is not None else None
            if stored is not None:
                self.sources["store"] += 1
                self._remember(stored)
                if self._fetches.get(program_hash) is fut:
                    del self._fetches[program_hash]
                if not fut.done():
                    fut.set_result(stored)
                return stored
            if not fut.done():
                self._send(p.ProgramGet(program_hash=program_hash))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), PROGRAM_FETCH_TIMEOUT)
        except TimeoutError:
            self._fetches.pop(program_hash, None)
            raise WorkerLostError(f"the router did not send program {program_hash[:12]} in time",
                                  worker=self.worker_id) from None

    def _from_router(self, answer: p.ProgramDef) -> Program:
        """Build (validate in full, verify the hash) and cache a definition the router sent."""
        program = self._programs.get(answer.program_hash)
        if program is not None:
            return program
        if answer.error is not None or answer.program is None:
            from stepbridge.errors import error_from_dict

            raise error_from_dict(answer.error or {"type": "StorageError",
                                                   "message": f"program {answer.program_hash[:12]} is unknown"})
        program = build_program(answer.program, answer.program_hash)
        self.sources["router"] += 1
        self._remember(program)
        return program

    async def _from_store(self, program_hash: str) -> Program | None:
        """The stored program with this hash, validated in full and verified, or None (then ask the router)."""
        if self.store is None:
            return None
        try:
            stored: Program = await asyncio.to_thread(self.store.load, program_hash)
        except Exception as exc:
            if isinstance(exc, ProgramNotFound):
                log.debug("program %s is not in the store", program_hash[:12])
            else:  # tampered, invalid, unreadable: never built; the router may still have the real one
                log.warning("worker %s: refused stored program %s: %s", self.worker_id, program_hash[:12],
                            scrub(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__)
            return None
        if stored.content_hash != program_hash:
            log.warning("worker %s: the store returned a program hashing to %s for %s; refused", self.worker_id,
                        stored.content_hash[:12], program_hash[:12])
            return None
        return stored.with_base_dir(None)  # the row's folder is outside the content hash: never used


def _index_corpora(program: Program) -> None:
    """Build the built-in retrievers' indexes (cached per file version by :mod:`stepbridge.retrieve`)."""
    from stepbridge.retrieve import make_retriever

    for module in program.modules.values():
        spec = getattr(module, "retriever", None)
        if spec is not None and spec.kind == "bm25" and spec.corpus:
            with contextlib.suppress(Exception):  # a bad corpus is reported by the run itself, typed
                make_retriever(spec, program.base_dir)


def build_program(data: dict[str, Any], expected_hash: str) -> Program:
    """Validate an untrusted definition in full and check it is the program ``expected_hash`` names.

    No folder: whatever files it names come by content (or from the operator's data root) later."""
    from stepbridge.validate import validate_data

    program = validate_data(data)
    if program.content_hash != expected_hash:
        raise ProgramValidationError(
            [], message=f"program definition does not match its hash: expected {expected_hash[:12]}, "
            f"got {program.content_hash[:12]}")
    return program


def _open_store(url: str | None) -> Any:
    """A read-only use of :class:`stepbridge.storage.Store` (no migrations), or None if unusable."""
    if not url:
        return None
    try:
        from stepbridge.storage import Store
    except ImportError:
        log.warning("storage is not available; running without a store")
        return None
    try:
        return Store(url, migrate=False)
    except Exception as exc:
        log.warning("could not open the store (%s); running without it", scrub(str(exc)).splitlines()[0])
        return None


def _run_loop(worker: Worker) -> int:
    """Serve on uvloop where it is installed (uvicorn[standard] brings it on Linux and macOS), else on
    asyncio's own loop. A worker's loop turns, task steps and socket callbacks are much of its CPU per
    request: classify.yaml at concurrency 256, 2 workers, worker CPU per run 51-60 us on uvloop vs
    62-80 us on asyncio's loop (4 alternating runs, load 5-8); round trips 50-59 vs 58-63 us."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(worker.serve())
    return uvloop.run(worker.serve())


def run_worker(connect: str, *, backend: str = "native", capacity: int = 16, heartbeat: float = 1.0,
               liveness: int = 3, parent_pid: int | None = None, db: str | None = None,
               curve_secret: str | None = None, curve_server: str | None = None, worker_id: str | None = None,
               warm: list[str] | None = None, warm_aliases: bool | None = None,
               data_cache: str | Path | None = None, data_root: str | Path | None = None,
               data_cache_bytes: int = DEFAULT_CACHE_BYTES, log_level: str = "WARNING") -> int:
    """Run a worker until it is drained, told to stop, or its parent dies; return its exit code."""
    scrub_process_output()  # first: the log handler writes to the scrubbed stderr
    configure_process_logging(log_level, f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(message)s")
    if connect.startswith("tcp://") and not curve_secret:
        log.warning("connecting over TCP without CURVE keys; the broker will refuse this unless it runs insecure")
    curve = CurveKeys.from_files(curve_secret, curve_server) if curve_secret else None
    store = _open_store(db)
    worker = Worker(connect, backend=backend, capacity=capacity, heartbeat=heartbeat, liveness=liveness,
                    parent_pid=parent_pid, store=store, curve=curve, worker_id=worker_id, warm=warm,
                    warm_aliases=warm_aliases, data_cache=data_cache, data_root=data_root,
                    data_cache_bytes=data_cache_bytes)
    try:
        return _run_loop(worker)
    finally:
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stepbridge worker", description="Serve a stepbridge pool router.")
    parser.add_argument("--connect", required=True, help="router address (ipc://PATH or tcp://HOST:PORT)")
    parser.add_argument("--backend", default="native", help="adapter to host (native, dspy, or package.module:factory)")
    parser.add_argument("--capacity", type=int, default=16, help="runs at once")
    parser.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    parser.add_argument("--liveness", type=int, default=3, help="missed heartbeats before the router counts as lost")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is no longer our parent")
    parser.add_argument("--db", default=os.environ.get("STEPBRIDGE_DATABASE_URL"), help="store to look programs up in")
    parser.add_argument("--curve-secret", default=None, help="this worker's .key_secret file (TCP)")
    parser.add_argument("--curve-server", default=None, help="the broker's public .key file (TCP)")
    parser.add_argument("--worker-id", default=None)
    parser.add_argument("--warm", dest="warm_aliases", action="store_true", default=None,
                        help="build and prepare every aliased stored program at start (default with --db)")
    parser.add_argument("--no-warm", dest="warm_aliases", action="store_false")
    parser.add_argument("--warm-ref", action="append", default=[], metavar="REF",
                        help="also build this stored program (name, name@alias, hash) at start")
    parser.add_argument("--data-cache", default=None, help="where to cache data files shipped by content "
                        "(default: a private temporary folder)")
    parser.add_argument("--data-root", default=None, help="folder for corpora a client did not ship (default: none)")
    parser.add_argument("--data-cache-bytes", type=int, default=DEFAULT_CACHE_BYTES,
                        help="disk the data cache may use (least recently used files go first)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    return run_worker(args.connect, backend=args.backend, capacity=args.capacity, heartbeat=args.heartbeat,
                      liveness=args.liveness, parent_pid=args.parent_pid, db=args.db, curve_secret=args.curve_secret,
                      curve_server=args.curve_server, worker_id=args.worker_id, warm=args.warm_ref,
                      warm_aliases=args.warm_aliases, data_cache=args.data_cache, data_root=args.data_root,
                      data_cache_bytes=args.data_cache_bytes, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
