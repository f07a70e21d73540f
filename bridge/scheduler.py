"""The pool's rules, apart from its sockets and processes: a pure scheduler.

:class:`Scheduler` consumes events (a submission, a worker's READY, a reply, a lost worker, a cancel,
a clock tick, a local process exit) and answers each with a list of actions ("send this request to
that worker", "deliver this result", "fail this request with that error", "kill local slot 2",
"spawn slot 0"). It never reads a clock (every event carries ``now``), never touches a socket or a
process, and never awaits: :class:`stepbridge.bridge.router.Router` performs the actions, and the
tests drive the scheduler directly, including a hypothesis state machine that checks the
invariants below after every step.

Invariants (each one is a rule here, not a convention of the caller):

- **Exactly once.** Every admitted request ends in exactly one :class:`Deliver` or one :class:`Fail`
  (with a typed error); nothing arrives for it afterwards.
- **Credit.** A worker never has more requests assigned than the capacity it declared in READY. A
  request cancelled (or timed out) while running keeps its credit until the worker answers or is
  replaced, so a worker that ignores a cancel is never sent more work than it can hold.
- **Retry.** A lost worker's requests go back to the front of the queue with the next attempt
  number, up to ``max_attempts``; a request whose program has a side-effecting tool step is never
  sent twice. A reply counts only if it comes from the worker the current attempt went to, with that
  attempt number, for a request still assigned to it; anything else is stale and dropped.
- **Bounded queue.** A new request is admitted only while fewer than ``queue_size`` wait; retries
  of admitted requests go back in front regardless (at most the capacity of the lost workers).
- **Deadlines.** A queued request past its deadline fails with :class:`RunTimeoutError`; a running
  one gets a grace period for the worker's own timeout, then is cancelled and failed; a worker that
  still has not answered a grace period after a cancel is replaced.
- **Routing.** A request goes only to a worker that declared every capability its program needs.
- **Capacity, one rule for new and queued requests.** A request the pool cannot serve is refused at
  once: :class:`UnsupportedCapabilityError` when no connected worker and no local worker that is on
  its way declares what it needs; :class:`WorkerLostError` when there is no capacity at all (every
  local slot quarantined, no remote worker), with ``retry_after`` saying when the first quarantine
  ends. The same check runs for queued requests whenever capacity is lost (a worker gone, a slot
  quarantined), so a queued request never waits out a quarantine that a new one would be told about.
- **Supervision decisions.** A local slot whose worker exits is respawned at once if it had got
  READY (or was killed on purpose), else with exponential backoff; after ``quarantine_after``
  consecutive exits before READY it is quarantined for ``quarantine_time``.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from stepbridge.errors import (
    PoolSaturatedError,
    RunCancelledError,
    RunTimeoutError,
    StepbridgeError,
    UnsupportedCapabilityError,
    WorkerLostError,
)

__all__ = [
    "Action",
    "Cancel",
    "Deliver",
    "Disconnect",
    "Fail",
    "Job",
    "Kill",
    "Rules",
    "Scheduler",
    "Send",
    "SlotState",
    "Spawn",
    "WorkerState",
]


@dataclass(frozen=True)
class Rules:
    """The numbers the scheduler decides by (a subset of :class:`stepbridge.bridge.PoolConfig`)."""

    queue_size: int = 1000
    heartbeat: float = 1.0
    liveness: int = 3
    max_attempts: int = 3
    retry_backoff: float = 0.02
    cancel_grace: float = 2.0
    quarantine_after: int = 5
    quarantine_time: float = 60.0
    #: what a local worker that has not said READY yet will be able to do
    expected_capabilities: frozenset[str] = frozenset()


@dataclass(eq=False)
class Job:
    """One submitted request, across all its attempts. Subclasses carry what goes on the wire."""

    rid: bytes
    needs: frozenset[str]
    retriable: bool
    attempt: int
    deadline: float | None
    timeout: float | None
    first_attempt: int = 0
    worker: bytes | None = None  # the worker the current attempt went to
    not_before: float = 0.0  # retry backoff
    cancel_at: float | None = None  # when a cancel (or timeout) was sent while it ran
    done: bool = False

    def __post_init__(self) -> None:
        if not self.first_attempt:
            self.first_attempt = self.attempt


@dataclass(eq=False)
class WorkerState:
    """A connected worker as the scheduler sees it (the descriptive fields are for ``status``)."""

    identity: bytes
    capabilities: frozenset[str]
    capacity: int
    last_seen: float
    worker_id: str = ""
    pid: int = 0
    host: str = ""
    backend: str = ""
    slot: int | None = None  # the local slot it runs in, if the router spawned it
    warmed: tuple[str, ...] = ()
    connected_at: float = 0.0
    inflight: dict[bytes, Job] = field(default_factory=dict)
    draining: bool = False
    done: int = 0
    failed: int = 0

    @property
    def credit(self) -> int:
        return 0 if self.draining else self.capacity - len(self.inflight)


@dataclass(eq=False)
class SlotState:
    """A local worker process slot (the process itself belongs to the supervisor)."""

    index: int
    state: str = "starting"  # starting | ready | waiting | quarantined | stopped
    pid: int | None = None
    crashes: int = 0  # consecutive exits before READY
    restarts: int = 0
    next_spawn: float = 0.0
    ready: bool = False


# -- actions -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """Send ``job`` (attempt ``attempt``, ``budget`` seconds left) to ``worker``."""

    worker: bytes
    job: Job
    attempt: int
    budget: float | None


@dataclass(frozen=True, slots=True)
class Cancel:
    """Tell ``worker`` to stop running ``job`` (its attempt ``attempt``)."""

    worker: bytes
    job: Job
    attempt: int


@dataclass(frozen=True, slots=True)
class Deliver:
    """``job`` succeeded: hand ``result`` to its caller."""

    job: Job
    result: Any


@dataclass(frozen=True, slots=True)
class Fail:
    """``job`` failed with a typed error (or a worker's typed error dict) and its partial trace."""

    job: Job
    error: StepbridgeError | dict[str, Any]
    trace: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Kill:
    """Kill the local worker process of ``slot`` (it hung or ignored a cancel)."""

    slot: int
    reason: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Tell a remote worker to go (and reconnect afresh)."""

    worker: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start a local worker process for ``slot`` now."""

    slot: int


Action = Send | Cancel | Deliver | Fail | Kill | Disconnect | Spawn


class Scheduler:
    """Queueing, credit, retries, deadlines, routing and slot decisions; events in, actions out."""

    def __init__(self, rules: Rules | None = None):
        self.rules = rules or Rules()
        self.max_attempts = max(1, self.rules.max_attempts)
        self.workers: dict[bytes, WorkerState] = {}
        self.slots: list[SlotState] = []
        self.queue: deque[Job] = deque()
        self.jobs: dict[bytes, Job] = {}  # admitted and not finished
        self.closing = False
        self.stats: dict[str, int] = {"submitted": 0, "succeeded": 0, "failed": 0, "retried": 0, "stale_replies": 0,
                                      "saturated": 0, "timed_out": 0, "cancelled": 0, "workers_lost": 0,
                                      "respawns": 0}

    # -- capacity ------------------------------------------------------------------------------------
    def room(self) -> int:
        """How many new requests the queue takes now."""
        return self.rules.queue_size - len(self.queue)

    def capabilities(self) -> frozenset[str]:
        """What the pool can do now: connected workers, plus local ones on their way."""
        caps: set[str] = set(self.rules.expected_capabilities if self._local_capacity() else ())
        for worker in self.workers.values():
            caps |= worker.capabilities
        return frozenset(caps)

    def _local_capacity(self) -> bool:
        return any(s.state not in ("quarantined", "stopped") for s in self.slots)

    def admission_error(self, needs: frozenset[str], now: float) -> StepbridgeError | None:
        """Why a request needing ``needs`` cannot be served now (new or queued alike), or None."""
        if self.closing:
            return WorkerLostError("the pool is shutting down")
        for w in self.workers.values():  # the usual case, first and cheap: a worker that can take it
            if not w.draining and needs <= w.capabilities:
                return None
        serving = [w for w in self.workers.values() if not w.draining]
        local = self._local_capacity()
        if local and needs <= self.rules.expected_capabilities:
            return None
        if not serving and not local:
            quarantined = [s.next_spawn for s in self.slots if s.state == "quarantined"]
            if quarantined:
                retry_after = round(max(0.0, min(quarantined) - now), 3)
                return WorkerLostError(
                    "every local worker is quarantined (they keep dying before getting ready; see the pool's "
                    f"log); capacity returns in {retry_after:.0f}s", retry_after=retry_after)
            return WorkerLostError("no worker is connected to the pool")
        missing = sorted(needs - self.capabilities()) or sorted(needs)
        return UnsupportedCapabilityError(
            f"no worker in the pool declares {', '.join(missing)} (the program needs {', '.join(sorted(needs))})",
            capability=missing[0] if missing else None, adapter="pool")

    # -- submission ----------------------------------------------------------------------------------
    def submit(self, job: Job, now: float) -> list[Action]:
        """Admit a request (or refuse it at once with a typed error) and dispatch what can go."""
        error = self.admission_error(job.needs, now)
        if error is None and len(self.queue) >= self.rules.queue_size:
            self.stats["saturated"] += 1
            error = PoolSaturatedError(f"the pool queue is full ({self.rules.queue_size} waiting)",
                                       queue_size=self.rules.queue_size)
        if error is not None:
            job.done = True
            self.stats["failed"] += 1
            return [Fail(job, error)]
        self.stats["submitted"] += 1
        self.jobs[job.rid] = job
        self.queue.append(job)
        actions: list[Action] = []
        self._dispatch(now, actions)
        return actions

    def cancel(self, rid: bytes, now: float) -> list[Action]:
        """The caller gave up: answer it now; a running attempt is told to stop and keeps its credit."""
        job = self.jobs.get(rid)
        if job is None or job.done:
            return []
        self.stats["cancelled"] += 1
        actions: list[Action] = []
        if job.worker is None:
            with contextlib.suppress(ValueError):
                self.queue.remove(job)
            self._fail(job, RunCancelledError("run cancelled by its caller"), actions)
            return actions
        job.cancel_at = now
        actions.append(Cancel(job.worker, job, job.attempt))
        self._fail(job, RunCancelledError("run cancelled by its caller"), actions, keep_inflight=True)
        return actions

    # -- workers -------------------------------------------------------------------------------------
    def ready(self, worker: WorkerState, now: float) -> list[Action]:
        """A worker said READY. A repeated READY from a known identity changes nothing."""
        if worker.identity in self.workers:
            return []
        slot = next((s for s in self.slots if s.pid is not None and s.pid == worker.pid), None)
        if slot is not None:
            slot.ready = True
            slot.crashes = 0
            slot.state = "ready"
            worker.slot = slot.index
        worker.last_seen = now
        self.workers[worker.identity] = worker
        actions: list[Action] = []
        self._dispatch(now, actions)
        return actions

    def seen(self, identity: bytes, now: float) -> None:
        """Any message from a worker counts as a heartbeat."""
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_seen = now

    def draining(self, identity: bytes) -> None:
        worker = self.workers.get(identity)
        if worker is not None:
            worker.draining = True

    def reply(self, identity: bytes, rid: bytes, attempt: int, now: float, *, result: Any = None,
              error: dict[str, Any] | None = None, trace: list[dict[str, Any]] | None = None) -> list[Action] | None:
        """A worker answered. None if the reply is stale (not the current attempt, not from the worker it
        went to, or not assigned to it at all): dropped."""
        worker = self.workers.get(identity)
        job = worker.inflight.get(rid) if worker is not None else None
        if worker is None or job is None or job.attempt != attempt or job.worker != identity:
            self.stats["stale_replies"] += 1
            return None
        del worker.inflight[rid]
        job.worker = None
        actions: list[Action] = []
        if job.done:  # cancelled or timed out while running: the credit is free again
            job.cancel_at = None
            self._dispatch(now, actions)
            return actions
        if error is not None:
            worker.failed += 1
            if (error.get("type") == "WorkerLostError" and job.retriable
                    and job.attempt - job.first_attempt + 1 < self.max_attempts):
                # the worker refused it (draining, over capacity): not run, so run it elsewhere
                job.attempt += 1
                self.stats["retried"] += 1
                self.queue.appendleft(job)
            else:
                if error.get("type") == "RunTimeoutError" and job.timeout is not None:
                    # the worker only knew the remaining budget; the caller set (and expects) the whole timeout
                    details = error.get("details")
                    error = {**error, "message": f"run exceeded its timeout of {job.timeout}s",
                             "details": {**(details if isinstance(details, dict) else {}), "timeout": job.timeout}}
                self._fail(job, error, actions, trace=trace)
        elif result is not None:
            worker.done += 1
            job.done = True
            self.jobs.pop(job.rid, None)
            self.stats["succeeded"] += 1
            actions.append(Deliver(job, result))
        else:
            self._fail(job, StepbridgeError("the worker sent an empty reply"), actions)
        self._dispatch(now, actions)
        return actions

    def lost(self, identity: bytes, why: str, now: float) -> list[Action]:
        """Forget a worker; retry (or fail) what it was running; refuse what can no longer be served."""
        worker = self.workers.pop(identity, None)
        if worker is None:
            return []
        self.stats["workers_lost"] += 1
        actions: list[Action] = []
        for job in reversed(list(worker.inflight.values())):
            job.worker = None
            job.cancel_at = None
            if job.done:
                continue
            used = job.attempt - job.first_attempt + 1
            if (job.retriable and used < self.max_attempts and not self.closing
                    and (job.deadline is None or job.deadline > now)):
                job.attempt += 1
                job.not_before = now + self.rules.retry_backoff * (2 ** (used - 1))
                self.stats["retried"] += 1
                self.queue.appendleft(job)
            elif job.deadline is not None and job.deadline <= now:
                self._expire(job, actions)
            else:
                reason = "" if job.retriable else " (not retried: the program has a side-effecting tool step)"
                self._fail(job, WorkerLostError(
                    f"worker {worker.worker_id or identity!r} was lost ({why}) while running the request{reason}",
                    worker=worker.worker_id or None, attempts=used), actions)
        worker.inflight.clear()
        self._refuse_unservable(now, actions)
        self._dispatch(now, actions)
        return actions

    def send_failed(self, identity: bytes, unsent: list[Job], now: float) -> list[Action]:
        """The router could not send to ``identity``: ``unsent`` never left, so they go back unchanged;
        the worker is lost."""
        worker = self.workers.get(identity)
        for job in reversed(unsent):
            if worker is not None and worker.inflight.get(job.rid) is job:
                del worker.inflight[job.rid]
                job.worker = None
                if not job.done:
                    self.queue.appendleft(job)
        return self.lost(identity, "unreachable", now)

    # -- local slots ---------------------------------------------------------------------------------
    def add_slots(self, n: int) -> list[Action]:
        """Create ``n`` local slots; each needs a first spawn."""
        start = len(self.slots)
        self.slots += [SlotState(start + i) for i in range(n)]
        return [Spawn(start + i) for i in range(n)]

    def slot_spawned(self, index: int, pid: int) -> None:
        slot = self.slots[index]
        slot.pid = pid
        slot.ready = False
        if slot.state != "stopped":
            slot.state = "starting"

    def slot_exited(self, index: int, pid: int, killed_by_us: bool, now: float) -> list[Action]:
        """A local worker process ended: lose its worker, then respawn, back off or quarantine."""
        slot = self.slots[index]
        if slot.pid != pid:
            return []
        actions: list[Action] = []
        for worker in [w for w in self.workers.values() if w.slot == index]:
            actions += self.lost(worker.identity, f"process {pid} exited", now)
        slot.pid = None
        if self.closing or slot.state == "stopped":
            return actions
        if slot.ready or killed_by_us:
            slot.crashes = 0
        else:
            slot.crashes += 1
        slot.ready = False
        if slot.crashes >= self.rules.quarantine_after:
            slot.state = "quarantined"
            slot.next_spawn = now + self.rules.quarantine_time
            self._refuse_unservable(now, actions)
        else:
            slot.state = "waiting"
            slot.next_spawn = now + (0.0 if slot.crashes == 0 else min(5.0, 0.1 * 2 ** (slot.crashes - 1)))
            if slot.next_spawn <= now:
                actions.append(self._respawn(slot))
        return actions

    def _respawn(self, slot: SlotState) -> Spawn:
        slot.restarts += 1
        self.stats["respawns"] += 1
        slot.state = "starting"
        return Spawn(slot.index)

    # -- time ----------------------------------------------------------------------------------------
    def tick(self, now: float) -> list[Action]:
        """Liveness, deadlines, due respawns, and retries whose backoff has passed."""
        actions: list[Action] = []
        limit = self.rules.heartbeat * self.rules.liveness
        for worker in list(self.workers.values()):
            if now - worker.last_seen > limit:
                actions += self.lost(worker.identity, f"no heartbeat for {now - worker.last_seen:.1f}s", now)
                if worker.slot is not None and self.slots[worker.slot].pid is not None:
                    actions.append(Kill(worker.slot, "hung: no heartbeat"))  # a hung local worker: replace it
        self._check_deadlines(now, actions)
        for slot in self.slots:
            if slot.pid is None and slot.state in ("waiting", "quarantined") and now >= slot.next_spawn:
                actions.append(self._respawn(slot))
        if self.queue:
            self._dispatch(now, actions)
        return actions

    def _check_deadlines(self, now: float, actions: list[Action]) -> None:
        if self.queue:
            expired = [j for j in self.queue if j.deadline is not None and j.deadline <= now]
            for job in expired:
                self.queue.remove(job)
                self._expire(job, actions)
        grace = self.rules.cancel_grace
        for worker in list(self.workers.values()):
            for job in list(worker.inflight.values()):
                if not job.done and job.deadline is not None and now > job.deadline + grace:
                    # the worker should have answered with RunTimeoutError by now
                    actions.append(Cancel(worker.identity, job, job.attempt))
                    job.cancel_at = now
                    self.stats["timed_out"] += 1
                    self._fail(job, RunTimeoutError(
                        f"run did not finish within its timeout of {job.timeout}s", timeout=job.timeout),
                        actions, keep_inflight=True)
                elif job.done and job.cancel_at is not None and now > job.cancel_at + grace:
                    reason = f"ignored a cancel for {grace:.1f}s"
                    if worker.slot is not None and self.slots[worker.slot].pid is not None:
                        actions.append(Kill(worker.slot, reason))
                    else:
                        actions.append(Disconnect(worker.identity, "replaced: reconnect"))
                    actions += self.lost(worker.identity, reason, now)
                    break

    # -- shutdown ------------------------------------------------------------------------------------
    def close(self) -> list[Action]:
        """Stop admitting; fail what is queued (running work may still finish: see :meth:`abandon`)."""
        self.closing = True
        actions: list[Action] = []
        for job in list(self.queue):
            self._fail(job, WorkerLostError("the pool is shutting down"), actions)
        self.queue.clear()
        for slot in self.slots:
            slot.state = "stopped"
        return actions

    def abandon(self) -> list[Action]:
        """Fail everything still unfinished (after the drain period)."""
        actions: list[Action] = []
        for job in list(self.jobs.values()):
            self._fail(job, WorkerLostError("the pool shut down before the run finished"), actions)
        return actions

    # -- internals -----------------------------------------------------------------------------------
    def _fail(self, job: Job, error: StepbridgeError | dict[str, Any], actions: list[Action], *,
              trace: list[dict[str, Any]] | None = None, keep_inflight: bool = False) -> None:
        if job.done:
            return
        job.done = True
        self.jobs.pop(job.rid, None)
        if not keep_inflight and job.worker is not None:
            worker = self.workers.get(job.worker)
            if worker is not None:
                worker.inflight.pop(job.rid, None)
            job.worker = None
        self.stats["failed"] += 1
        actions.append(Fail(job, error, trace))

    def _expire(self, job: Job, actions: list[Action]) -> None:
        self.stats["timed_out"] += 1
        self._fail(job, RunTimeoutError(
            f"run did not finish within its timeout of {job.timeout}s (attempt {job.attempt})", timeout=job.timeout),
            actions)

    def _refuse_unservable(self, now: float, actions: list[Action]) -> None:
        """Queued requests get the answer a new one would get, once capacity is gone (the same rule)."""
        if not self.queue:
            return
        verdicts: dict[frozenset[str], StepbridgeError | None] = {}
        keep: deque[Job] = deque()
        for job in self.queue:
            if job.needs not in verdicts:
                verdicts[job.needs] = self.admission_error(job.needs, now)
            error = verdicts[job.needs]
            if error is None:
                keep.append(job)
            else:
                self._fail(job, error, actions)
        self.queue = keep

    def _dispatch(self, now: float, actions: list[Action]) -> None:
        if not self.queue:
            return
        candidates = [w for w in self.workers.values() if w.credit > 0]
        if not candidates:
            return
        skipped: list[Job] = []
        queue = self.queue
        while queue and candidates:
            job = queue.popleft()
            if job.not_before > now:
                skipped.append(job)
                continue
            if job.deadline is not None and job.deadline <= now:
                self._expire(job, actions)
                continue
            best: WorkerState | None = None
            for worker in candidates:
                if job.needs <= worker.capabilities and (best is None or worker.credit > best.credit):
                    best = worker
            if best is None:
                skipped.append(job)
                continue
            job.worker = best.identity
            best.inflight[job.rid] = job
            actions.append(Send(best.identity, job, job.attempt,
                                None if job.deadline is None else max(0.001, job.deadline - now)))
            if best.credit <= 0:
                candidates.remove(best)
        if skipped:
            queue.extendleft(reversed(skipped))
