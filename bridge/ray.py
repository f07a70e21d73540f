"""The ``ray`` adapter: run programs on Ray actors, on this machine or on an existing cluster.

``RayAdapter(actors=2, concurrency=16, backend="native")`` starts ``actors`` async actors
(:class:`~stepbridge.bridge.ray_host.RayHost`, a pool worker over Ray calls), each hosting the native
or dspy executor and running up to ``concurrency`` programs at once. ``address=`` (or Ray's own
``RAY_ADDRESS``) connects to a running cluster; otherwise a local instance is started once per
process (``num_cpus=2``, no dashboard) and shared by every adapter in it until the process exits.

What the pool guarantees, the same way:

- programs travel by content hash: each definition is put in the object store once (encoded as a
  pool PROGRAM message) and an actor reads it only on a cache miss; actors given ``store_url`` look
  it up in the store first and warm aliased programs when they start;
- data files (corpora) by content, never by path (:mod:`stepbridge.bridge.data`);
- typed errors keep their type (the pool's REPLY encoding), with their partial traces;
- ``timeout`` is a deadline for the whole run, retries included; cancelling the caller's task calls
  ``ray.cancel`` on the actor call; LM overrides and the other run options travel with the request;
- an actor that dies mid-run: the run goes to another actor (``max_attempts``) unless the program
  may have side effects (:func:`~stepbridge.bridge.router.has_side_effects`), then
  :class:`WorkerLostError`; either way each run returns exactly once; Ray restarts the actor;
- at most ``actors * concurrency + queue_size`` runs are admitted; a caller waits up to
  ``saturation_wait`` for room, then gets :class:`PoolSaturatedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from stepbridge.adapter import RunOptions
from stepbridge.errors import (
    PoolSaturatedError,
    RunTimeoutError,
    StepbridgeError,
    WorkerLostError,
)
from stepbridge.program import Program
from stepbridge.result import RunResult

from . import protocol as p
from .config import with_settings
from .data import DEFAULT_CACHE_BYTES, LocalFiles
from .pool import declared_capabilities
from .ray_host import MAX_REFS, data_key, program_key
from .router import has_side_effects, wire_options

__all__ = ["RayAdapter", "RayConfig", "require_ray"]

log = logging.getLogger("stepbridge.bridge.ray")

_REPLY = frozenset({p.Command.REPLY})
#: program definitions and data files this process keeps in the object store
KEPT_REFS = 256
#: calls an actor takes beyond its runs (start, describe, close)
CONTROL_CALLS = 4
#: environment variables never forwarded to actors (they steer Ray itself)
_NOT_FORWARDED = ("RAY_",)


def require_ray() -> Any:
    """The ``ray`` module, or a typed error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise StepbridgeError("the ray backend needs Ray: pip install 'stepbridge[ray]'") from None
    if not hasattr(ray, "init"):  # a folder named ray on sys.path, not Ray
        raise StepbridgeError("the ray backend needs Ray: pip install 'stepbridge[ray]'")
    return ray


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Settings of a :class:`RayAdapter` (``RayAdapter(actors=4)`` is shorthand for ``config=RayConfig(actors=4)``)."""

    address: str | None = None  #: a cluster (``ray://HOST:10001``, ``HOST:6379``, ``auto``); None: RAY_ADDRESS or local
    backend: str = "native"  #: adapter the actors host: native, dspy, or package.module:factory
    actors: int = 2  #: actors to start
    concurrency: int = 16  #: runs at once per actor (Ray's max_concurrency)
    actor_cpus: float = 0.0  #: CPUs each actor reserves (0: LM work is I/O-bound)
    queue_size: int = 1000  #: admitted runs beyond what the actors run at once
    saturation_wait: float = 1.0  #: seconds a caller waits for room before PoolSaturatedError
    max_attempts: int = 3  #: attempts per run when actors die (1 for programs with side effects)
    cancel_grace: float = 2.0  #: seconds past the deadline before the caller stops waiting for an actor
    start_timeout: float = 120.0  #: seconds to wait for the actors to come up
    #: environment of the actors; None: this process's for a local instance, nothing extra for a cluster
    env: dict[str, str] | None = field(default=None, repr=False)
    adapter_options: dict[str, Any] = field(default_factory=dict)  #: keywords for the hosted adapter
    store_url: str | None = None  #: store the actors look programs up in (read-only) and warm from
    warm: bool | None = None  #: actors build aliased stored programs at start (default: with a store)
    data_root: str | None = None  #: folder (on the nodes) for corpora the caller did not ship
    data_cache_bytes: int = DEFAULT_CACHE_BYTES  #: disk each actor's data cache may use
    num_cpus: int = 2  #: CPUs of a local instance
    namespace: str | None = None  #: Ray namespace (cluster mode)
    log_level: str = "WARNING"

    def __post_init__(self) -> None:
        for name in ("actors", "concurrency", "max_attempts", "data_cache_bytes", "num_cpus"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("actor_cpus", "queue_size", "saturation_wait", "cancel_grace", "start_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    @classmethod
    def from_settings(cls, config: RayConfig | None = None, **settings: Any) -> RayConfig:
        """``config`` with ``settings`` applied (``TypeError`` naming an unknown one)."""
        return with_settings(config or cls(), "ray", settings)


# -- one Ray connection per process ------------------------------------------------------------------
_INIT_LOCK = threading.Lock()
#: the thread that starts a local instance. It must outlive every event loop: Ray ties its GCS and raylet to
#: the *thread* that spawned them (PR_SET_PDEATHSIG), so starting them from asyncio's default executor kills
#: them when that loop closes. (Not the main thread either: ray.init there would replace a SIGTERM handler.)
_INIT_THREAD = ThreadPoolExecutor(1, thread_name_prefix="stepbridge-ray")


def _connect(config: RayConfig) -> bool:
    """Connect to Ray (once per process); True if this process started a local instance."""
    ray = require_ray()
    with _INIT_LOCK:
        if ray.is_initialized():
            return False
        address = config.address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None:
            kwargs["num_cpus"] = config.num_cpus
            # A process-owned instance: shut down when this process exits, whoever closed adapters before. Not
            # with atexit: concurrent.futures ends _INIT_THREAD before atexit handlers run, and the raylet,
            # dying with that thread, left its dashboard and runtime-env agents running (orphans, seen after
            # every test run). threading's exit hooks run first, newest first: before concurrent.futures' own.
            threading._register_atexit(ray.shutdown)  # type: ignore[attr-defined]
        if config.namespace is not None:
            kwargs["namespace"] = config.namespace
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:
            raise WorkerLostError(f"could not connect to Ray at {address or 'a new local instance'}: {exc}") from None
        return address is None


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned call's outcome as seen (no 'exception was never retrieved' at shutdown)."""
    if not future.cancelled():
        future.exception()


def _trim(refs: OrderedDict[str, Any]) -> None:
    """Let go of the least recently used object references beyond :data:`KEPT_REFS` (Ray frees the objects
    once no actor holds them either)."""
    while len(refs) > KEPT_REFS:
        refs.popitem(last=False)


@dataclass(eq=False)
class _Actor:
    handle: Any
    index: int
    in_flight: int = 0
    healthy: bool = True
    worker: str = ""
    pid: int = 0
    lost: int = 0  #: times a call to it failed because it died
    sent: set[str] = field(default_factory=set)  #: object references it was given (it may have let some go)


class RayAdapter:
    """Adapter that runs programs on Ray actors hosting native or dspy (see the module docstring)."""

    name = "ray"

    def __init__(self, config: RayConfig | None = None, *, store: Any = None, **settings: Any):
        self.config = RayConfig.from_settings(config, **settings)
        self.backend = self.config.backend
        self.store = store
        self._declared = declared_capabilities(self.backend)
        self._remote_caps: frozenset[str] = frozenset()
        self._actors: list[_Actor] = []
        self._start_lock: asyncio.Lock | None = None
        self._files = LocalFiles()
        #: content hash -> (object ref, side effects); sha256 -> object ref (most recently used last)
        self._programs: OrderedDict[str, tuple[Any, bool]] = OrderedDict()
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._admitted = 0
        self._waiters: deque[asyncio.Future[None]] = deque()  # callers waiting to be admitted
        self._slot_waiters: deque[asyncio.Future[None]] = deque()  # admitted runs waiting for an actor slot
        self._probes: set[asyncio.Task[None]] = set()
        self.stats: dict[str, int] = {"runs": 0, "retried": 0, "lost": 0, "saturated": 0, "cancelled": 0,
                                      "resent": 0}

    # -- the adapter protocol --------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[str]:
        return self._declared | self._remote_caps | {"out_of_process"}

    @property
    def limit(self) -> int:
        """Runs admitted at once (running on actors plus waiting at them)."""
        c = self.config
        return c.actors * c.concurrency + c.queue_size

    async def start(self) -> None:
        """Connect to Ray and start the actors (idempotent; ``prepare`` and ``run`` call it)."""
        if self._actors:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._actors:
                return
            await asyncio.get_running_loop().run_in_executor(_INIT_THREAD, _connect, self.config)
            actors = [_Actor(self._spawn(i), i) for i in range(self.config.actors)]
            try:
                infos = await asyncio.wait_for(asyncio.gather(*(a.handle.start.remote() for a in actors)),
                                               self.config.start_timeout)
            except BaseException as exc:
                self._kill(actors)
                if isinstance(exc, TimeoutError):
                    raise WorkerLostError(f"the Ray actors did not start within {self.config.start_timeout:.0f}s "
                                          "(is stepbridge installed on the nodes?)") from None
                raise self._typed(exc, "starting an actor") from None
            caps: set[str] = set()
            for actor, info in zip(actors, infos, strict=True):
                actor.worker, actor.pid = info["worker"], info["pid"]
                caps |= set(info["capabilities"])
            self._remote_caps = frozenset(caps)
            self._actors = actors

    def _spawn(self, index: int) -> Any:
        ray = require_ray()
        from .ray_host import RayHost

        c = self.config
        env = c.env
        if env is None and (c.address or os.environ.get("RAY_ADDRESS")) is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_FORWARDED)}
        # this side sends an actor at most ``concurrency`` runs; the spare calls are for start/describe/close,
        # so a busy actor still answers them (one event loop: an async actor's concurrency groups would each
        # get their own, and the hosted adapter lives on one)
        # SPREAD: actors reserving no CPU would otherwise all land on whichever node Ray picks first
        options: dict[str, Any] = {"max_concurrency": c.concurrency + CONTROL_CALLS, "num_cpus": c.actor_cpus,
                                   "max_restarts": -1, "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
        if env:
            options["runtime_env"] = {"env_vars": dict(env)}
        actor_class = ray.remote(RayHost)
        return actor_class.options(**options).remote(
            backend=c.backend, capacity=c.concurrency, adapter_options=dict(c.adapter_options), store_url=c.store_url,
            warm_aliases=c.warm, data_root=c.data_root, data_cache_bytes=c.data_cache_bytes, log_level=c.log_level)

    async def prepare(self, program: Program) -> None:
        await self.start()
        self._program_ref(program)

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions | None = None) -> RunResult:
        options = options or RunOptions()
        await self.start()
        ref, side_effects = self._program_ref(program)
        manifest = self._files.manifest(program)
        refs = {program_key(program.content_hash): ref}
        for digest in set(manifest.values()):
            refs[data_key(digest)] = await self._data_ref(digest)
        deadline = time.monotonic() + options.timeout if options.timeout else None
        await self._admit()
        try:
            return await self._attempts(program, inputs, options, manifest, refs, deadline, side_effects)
        finally:
            self._release()

    async def aclose(self) -> None:
        actors, self._actors = self._actors, []
        for task in list(self._probes):  # they stop on their own too (their actor is no longer ours)
            task.cancel()
        if not actors:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*(a.handle.aclose.remote() for a in actors),
                                                  return_exceptions=True), 10.0)
        self._kill(actors)
        self._programs.clear()
        self._data.clear()

    # -- introspection (tests, status) -----------------------------------------------------------------
    async def describe_actors(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Each actor that answers within ``timeout`` (one being restarted may not), as it describes itself
        through Ray: process id (a restarted actor has a new one), runs in flight, capabilities, programs
        warmed, where its program definitions came from."""
        await self.start()

        async def ask(actor: _Actor) -> dict[str, Any] | None:
            try:
                info: dict[str, Any] = await asyncio.wait_for(asyncio.wrap_future(actor.handle.start.remote().future()),
                                                              timeout)
            except Exception:
                return None
            return info

        return [i for i in await asyncio.gather(*(ask(a) for a in self._actors)) if i is not None]

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend, "admitted": self._admitted, "limit": self.limit,
                "actors": [{"worker": a.worker, "pid": a.pid, "in_flight": a.in_flight, "healthy": a.healthy,
                            "lost": a.lost} for a in self._actors],
                "capabilities": sorted(self.capabilities), **self.stats}

    # -- running ------------------------------------------------------------------------------------------
    async def _attempts(self, program: Program, inputs: dict[str, Any], options: RunOptions,
                        manifest: dict[str, str], refs: dict[str, Any], deadline: float | None,
                        side_effects: bool) -> RunResult:
        ray = require_ray()
        attempt = options.attempt
        attempts_left = 1 if side_effects else self.config.max_attempts
        tried: set[int] = set()
        resent = False
        extra = wire_options(options)
        while True:
            budget = None if deadline is None else deadline - time.monotonic()
            if budget is not None and budget <= 0:
                raise RunTimeoutError(f"the run did not finish within {options.timeout}s", timeout=options.timeout)
            actor = await self._slot(tried, budget)
            rid = uuid.uuid4().bytes
            frames = p.encode(p.Request(execution_id=options.execution_id, program_hash=program.content_hash,
                                        inputs=inputs, attempt=attempt, budget=budget, options=extra,
                                        data=manifest), rid)
            # object references only for what this actor has not been given: each one in a call costs Ray a
            # borrow (RPCs to this process); an actor that lacks one answers ``missing`` and gets it
            send = {k: ref for k, ref in refs.items() if k not in actor.sent}
            actor.in_flight += 1
            call = actor.handle.run.remote(frames, send)
            self.stats["runs"] += 1
            try:
                wait = None if budget is None else budget + self.config.cancel_grace
                answer = asyncio.wrap_future(call.future())
                answer.add_done_callback(_retrieved)  # after a timeout or cancel, nobody else looks at it
                reply_frames = await asyncio.wait_for(asyncio.shield(answer), wait)
            except asyncio.CancelledError:
                self.stats["cancelled"] += 1
                with contextlib.suppress(Exception):
                    ray.cancel(call)
                raise
            except TimeoutError:  # the actor did not honour the deadline: stop waiting for it
                with contextlib.suppress(Exception):
                    ray.cancel(call)
                raise RunTimeoutError(f"the run did not finish within {options.timeout}s (actor {actor.worker} "
                                      "did not answer in time)", timeout=options.timeout) from None
            except Exception as exc:
                lost = self._is_lost(exc)
                if not lost:
                    raise self._typed(exc, f"a run on actor {actor.worker}") from None
                actor.lost += 1
                actor.healthy = False
                self.stats["lost"] += 1
                self._probe(actor)
                attempts_left -= 1
                tried.add(actor.index)
                if attempts_left <= 0:
                    why = ("the program may have side effects, so it is not retried" if side_effects
                           else f"after {attempt - options.attempt + 1} attempt(s)")
                    raise WorkerLostError(f"actor {actor.worker} died during the run; {why}", worker=actor.worker,
                                          attempts=attempt - options.attempt + 1) from None
                attempt += 1
                self.stats["retried"] += 1
                log.info("actor %s died; run %s goes to another actor (attempt %d)", actor.worker,
                         options.execution_id, attempt)
                continue
            finally:
                actor.in_flight -= 1
                self._wake(self._slot_waiters)
            if len(actor.sent) + len(send) > MAX_REFS // 2:
                actor.sent.clear()
            actor.sent.update(send)
            reply = self._reply(reply_frames)
            if reply.missing:  # a restarted actor (or one that let them go): once more, with the references
                if resent:
                    raise StepbridgeError(f"actor {actor.worker} lost the object references it was just sent")
                resent = True
                self.stats["resent"] += 1
                actor.sent.difference_update({program_key(d) for d in reply.missing} |
                                             {data_key(d) for d in reply.missing})
                continue
            try:
                return self._outcome(reply, options.timeout)
            except WorkerLostError:  # the actor refused it (not run): elsewhere, while attempts are left
                attempts_left -= 1
                if side_effects or attempts_left <= 0:
                    raise
                attempt += 1
                tried.add(actor.index)

    @staticmethod
    def _reply(frames: list[bytes]) -> p.Reply:
        try:
            reply = p.decode(list(frames), allowed=_REPLY).body
        except p.ProtocolError as exc:
            raise StepbridgeError(f"an actor sent an invalid reply: {exc}") from None
        assert isinstance(reply, p.Reply)
        return reply

    def _outcome(self, reply: p.Reply, timeout: float | None) -> RunResult:
        """The result a REPLY carries, or its typed error (with the partial trace) raised. A timeout says the
        caller's whole timeout (the actor only knew the budget left)."""
        if reply.error is not None:
            err = p.error_from_reply(reply)
            if isinstance(err, RunTimeoutError) and timeout is not None:
                err.timeout = timeout
            raise err
        if reply.result is None:
            raise StepbridgeError("an actor sent an empty reply")
        result: RunResult = p.result_from_wire(reply.result, backend=self.name, attempts=reply.attempt)
        return result

    async def _slot(self, tried: set[int], budget: float | None) -> _Actor:
        """An actor with a free slot (waiting for one, within the run's budget); Ray sees at most
        ``concurrency`` runs per actor."""
        loop = asyncio.get_running_loop()
        deadline = None if budget is None else loop.time() + budget
        while True:
            actor = self._pick(tried)
            if actor.in_flight < self.config.concurrency:
                return actor
            waiter: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(waiter)
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise RunTimeoutError("the run's deadline passed while it waited for an actor", timeout=budget)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, left)

    def _pick(self, tried: set[int]) -> _Actor:
        """The least busy healthy actor not yet tried for this run (else any: Ray queues until it is back)."""
        pool = [a for a in self._actors if a.healthy and a.index not in tried] or \
               [a for a in self._actors if a.index not in tried] or self._actors
        if not pool:
            raise WorkerLostError("the ray adapter is closed")
        return min(pool, key=lambda a: a.in_flight)

    def _probe(self, actor: _Actor) -> None:
        """Mark ``actor`` healthy again once Ray has restarted it (a new process answers ``start``)."""
        async def probe() -> None:
            # With max_task_retries=0 a call reaching the actor while Ray is still restarting it fails at once:
            # ask again (backing off to 2 s) until the new process answers or the adapter is closed. One try
            # left an actor out for good when it came back a moment after the probe.
            delay = 0.1
            while not actor.healthy and any(a is actor for a in self._actors):
                try:
                    info = await asyncio.wait_for(asyncio.wrap_future(actor.handle.start.remote().future()),
                                                  self.config.start_timeout)
                except Exception:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                actor.worker, actor.pid, actor.healthy = info["worker"], info["pid"], True

        task = asyncio.ensure_future(probe())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    @staticmethod
    def _is_lost(exc: BaseException) -> bool:
        """Did the call fail because its actor (or its node) went away?"""
        ray = require_ray()
        ex = ray.exceptions
        lost = tuple(t for t in (getattr(ex, n, None) for n in ("RayActorError", "ActorDiedError",
                     "ActorUnavailableError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
                     "WorkerCrashedError", "LocalRayletDiedError")) if isinstance(t, type))
        return isinstance(exc, lost)

    @staticmethod
    def _typed(exc: BaseException, what: str) -> StepbridgeError:
        if isinstance(exc, StepbridgeError):
            return exc
        return StepbridgeError(f"Ray failed {what}: {type(exc).__name__}: {exc}"[:4000])

    # -- content by hash ------------------------------------------------------------------------------------
    def _program_ref(self, program: Program) -> tuple[Any, bool]:
        known = self._programs.get(program.content_hash)
        if known is None:
            ray = require_ray()
            body = p.ProgramDef(program_hash=program.content_hash, program=program.to_dict())
            known = self._programs[program.content_hash] = (ray.put(p.encode(body)), has_side_effects(program))
            _trim(self._programs)
        self._programs.move_to_end(program.content_hash)
        return known

    async def _data_ref(self, digest: str) -> Any:
        ref = self._data.get(digest)
        if ref is None:
            content = await asyncio.to_thread(self._files.read, digest)
            if content is None:
                raise StepbridgeError(f"data file {digest[:12]} changed while it was being sent; run again")
            ray = require_ray()
            ref = self._data[digest] = ray.put(p.encode(p.Data(data_hash=digest, content=content)))
            _trim(self._data)
        self._data.move_to_end(digest)
        return ref

    # -- admission --------------------------------------------------------------------------------------------
    async def _admit(self) -> None:
        if self._admitted >= self.limit:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.saturation_wait
            while self._admitted >= self.limit:
                left = deadline - loop.time()
                if left <= 0:
                    self.stats["saturated"] += 1
                    raise PoolSaturatedError(f"the ray adapter has {self._admitted} runs in flight (limit "
                                             f"{self.limit}) and none finished within "
                                             f"{self.config.saturation_wait:.2f}s", queue_size=self.config.queue_size)
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters.append(waiter)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter, left)
        self._admitted += 1

    def _release(self) -> None:
        self._admitted -= 1
        self._wake(self._waiters)

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]]) -> None:
        """Wake the first caller still waiting (one slot came free)."""
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def _kill(self, actors: list[_Actor]) -> None:
        ray = require_ray()
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor.handle, no_restart=True)
