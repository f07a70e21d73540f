"""The pool's rules without processes or sockets: the pure scheduler, event by event, and a hypothesis
state machine that checks its invariants after every step of random event sequences."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from stepbridge.bridge.scheduler import (
    Action,
    Cancel,
    Deliver,
    Disconnect,
    Fail,
    Job,
    Kill,
    Rules,
    Scheduler,
    Send,
    Spawn,
    WorkerState,
)
from stepbridge.errors import (
    PoolSaturatedError,
    RunCancelledError,
    RunTimeoutError,
    UnsupportedCapabilityError,
    WorkerLostError,
    error_from_dict,
)

_seq = iter(range(1, 10**9))


def job(needs: frozenset[str] = frozenset(), *, retriable: bool = True, timeout: float | None = None,
        now: float = 0.0) -> Job:
    return Job(rid=next(_seq).to_bytes(8, "big"), needs=needs, retriable=retriable, attempt=1,
               deadline=now + timeout if timeout else None, timeout=timeout)


def worker(name: str, capacity: int = 2, caps: frozenset[str] = frozenset(), pid: int = 0) -> WorkerState:
    return WorkerState(identity=name.encode(), capabilities=caps, capacity=capacity, last_seen=0.0, worker_id=name,
                       pid=pid)


def of(actions: list[Action], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def error_of(action: Fail) -> Exception:
    return error_from_dict(action.error) if isinstance(action.error, dict) else action.error


def test_credit_limits_dispatch_and_a_reply_frees_one_slot() -> None:
    s = Scheduler(Rules(queue_size=10))
    s.ready(worker("w", capacity=2), 0.0)
    sends = [a for j in [job() for _ in range(5)] for a in s.submit(j, 0.0)]
    assert len(of(sends, Send)) == 2 and len(s.queue) == 3
    first = of(sends, Send)[0]
    actions = s.reply(b"w", first.job.rid, 1, 0.1, result="ok")
    assert actions is not None
    assert [type(a) for a in actions] == [Deliver, Send]
    assert len(s.workers[b"w"].inflight) == 2 and len(s.queue) == 2


def test_lost_worker_requests_are_retried_elsewhere_after_backoff_and_never_twice_with_side_effects() -> None:
    s = Scheduler(Rules(retry_backoff=0.5, max_attempts=3))
    s.add_slots(1)  # a local worker on its way: requests wait for it
    s.ready(worker("a", capacity=1), 0.0)
    plain, charge = job(), job(retriable=False)
    assert of(s.submit(plain, 0.0), Send)[0].worker == b"a"
    s.ready(worker("b", capacity=1), 0.0)
    assert of(s.submit(charge, 0.0), Send)[0].worker == b"b"
    lost_a = s.lost(b"a", "killed", 1.0)
    assert not of(lost_a, Send) and plain.attempt == 2 and list(s.queue) == [plain]  # backing off
    lost_b = s.lost(b"b", "killed", 1.0)
    (fail,) = of(lost_b, Fail)
    err = error_of(fail)
    assert fail.job is charge and isinstance(err, WorkerLostError) and err.attempts == 1
    s.ready(worker("c", capacity=1), 1.1)
    assert not of(s.tick(1.2), Send)  # backoff not over yet
    (send,) = of(s.tick(1.6), Send)
    assert send.job is plain and send.worker == b"c" and send.attempt == 2


def test_with_no_worker_left_and_none_on_its_way_queued_requests_fail_like_new_ones() -> None:
    s = Scheduler(Rules(retry_backoff=0.0))
    s.ready(worker("only", capacity=1), 0.0)
    running, queued = job(), job()
    s.submit(running, 0.0)
    s.submit(queued, 0.0)
    failed = of(s.lost(b"only", "gone", 1.0), Fail)
    assert {f.job.rid for f in failed} == {running.rid, queued.rid}
    assert all(type(error_of(f)) is WorkerLostError for f in failed)
    (new,) = of(s.submit(job(), 1.0), Fail)
    assert type(error_of(new)) is WorkerLostError and str(error_of(new)) == str(error_of(failed[-1]))


def test_a_reply_counts_only_from_the_assigned_worker_for_the_current_attempt() -> None:
    s = Scheduler(Rules(retry_backoff=0.0))
    s.add_slots(1)
    s.ready(worker("a", capacity=1), 0.0)
    j = job()
    s.submit(j, 0.0)
    s.lost(b"a", "silent", 1.0)
    s.ready(worker("b", capacity=1), 1.0)
    s.tick(1.0)
    assert j.worker == b"b" and j.attempt == 2
    assert s.reply(b"a", j.rid, 1, 1.1, result="late") is None  # the lost worker's late reply
    assert s.reply(b"b", j.rid, 1, 1.1, result="old attempt") is None
    s.ready(worker("rogue", capacity=1), 1.1)
    assert s.reply(b"rogue", j.rid, 2, 1.1, result="forged") is None  # not assigned to it
    assert s.stats["stale_replies"] == 3 and not j.done
    actions = s.reply(b"b", j.rid, 2, 1.2, result="real")
    assert actions is not None and of(actions, Deliver)[0].result == "real"
    assert s.reply(b"b", j.rid, 2, 1.3, result="again") is None  # delivered once


def test_deadlines_queued_running_and_ignored_cancel() -> None:
    s = Scheduler(Rules(cancel_grace=1.0))
    s.ready(worker("w", capacity=1, pid=42), 0.0)
    s.add_slots(1)
    s.slot_spawned(0, 42)
    s.workers[b"w"].slot = 0
    running, queued = job(timeout=2.0), job(timeout=1.0)
    s.submit(running, 0.0)
    s.submit(queued, 0.0)
    expired = of(s.tick(1.5), Fail)
    assert [f.job for f in expired] == [queued] and isinstance(error_of(expired[0]), RunTimeoutError)
    s.seen(b"w", 2.5)
    actions = s.tick(3.1)  # past deadline + grace: cancel it and answer the caller now
    assert of(actions, Cancel)[0].job is running and isinstance(error_of(of(actions, Fail)[0]), RunTimeoutError)
    assert len(s.workers[b"w"].inflight) == 1  # the credit stays taken until the worker answers
    s.seen(b"w", 4.0)
    actions = s.tick(4.2)  # it ignored the cancel for the grace period: replace it
    assert of(actions, Kill) and b"w" not in s.workers and not of(actions, Fail)


def test_worker_timeout_reply_reports_the_callers_timeout() -> None:
    s = Scheduler()
    s.ready(worker("w"), 0.0)
    j = job(timeout=5.0)
    s.submit(j, 0.0)
    actions = s.reply(b"w", j.rid, 1, 5.0, error={"type": "RunTimeoutError", "message": "budget 4.9s",
                                                   "details": {"timeout": 4.9}})
    assert actions is not None
    err = error_of(of(actions, Fail)[0])
    assert isinstance(err, RunTimeoutError) and err.timeout == 5.0


def test_routing_by_capability_and_refusal_when_nobody_can() -> None:
    s = Scheduler(Rules(expected_capabilities=frozenset({"retrieve"})))
    s.ready(worker("native", capacity=4, caps=frozenset({"retrieve"})), 0.0)
    (refused,) = of(s.submit(job(frozenset({"dspy_modules"})), 0.0), Fail)
    err = error_of(refused)
    assert isinstance(err, UnsupportedCapabilityError) and err.capability == "dspy_modules"
    s.ready(worker("dspy", capacity=4, caps=frozenset({"dspy_modules"})), 0.0)
    assert of(s.submit(job(frozenset({"dspy_modules"})), 0.0), Send)[0].worker == b"dspy"
    assert of(s.submit(job(frozenset({"retrieve"})), 0.0), Send)[0].worker == b"native"


def test_bounded_queue_refuses_new_requests_but_takes_retries_back() -> None:
    s = Scheduler(Rules(queue_size=2, retry_backoff=0.0))
    s.add_slots(1)
    s.ready(worker("w", capacity=1), 0.0)
    running = job()
    s.submit(running, 0.0)
    s.submit(job(), 0.0)
    s.submit(job(), 0.0)
    (full,) = of(s.submit(job(), 0.0), Fail)
    assert isinstance(error_of(full), PoolSaturatedError) and s.room() == 0
    s.lost(b"w", "gone", 1.0)
    assert len(s.queue) == 3 and s.queue[0] is running  # the retry goes in front, over the bound


def test_cancel_queued_and_running() -> None:
    s = Scheduler()
    s.ready(worker("w", capacity=1), 0.0)
    running, queued = job(), job()
    s.submit(running, 0.0)
    s.submit(queued, 0.0)
    (fail,) = of(s.cancel(queued.rid, 0.1), Fail)
    assert isinstance(error_of(fail), RunCancelledError) and not s.queue
    actions = s.cancel(running.rid, 0.2)
    assert of(actions, Cancel) and of(actions, Fail) and len(s.workers[b"w"].inflight) == 1
    nxt = job()
    assert not of(s.submit(nxt, 0.3), Send)  # no credit until the worker acknowledges the cancel
    actions = s.reply(b"w", running.rid, 1, 0.4, error={"type": "RunCancelledError", "message": "x"})
    assert actions is not None and of(actions, Send)[0].job is nxt and not of(actions, Fail)


def test_slot_decisions_backoff_then_quarantine_and_queued_requests_fail_like_new_ones() -> None:
    s = Scheduler(Rules(quarantine_after=3, quarantine_time=60.0, expected_capabilities=frozenset()))
    assert s.add_slots(1) == [Spawn(0)]
    queued = job()
    assert not s.submit(queued, 0.0)  # a local worker is on its way: it waits
    s.slot_spawned(0, 100)
    assert s.slot_exited(0, 100, False, 1.0) == []  # first crash: back off 0.1s
    assert s.slots[0].state == "waiting" and s.slots[0].next_spawn == pytest.approx(1.1)
    assert of(s.tick(1.2), Spawn) == [Spawn(0)]
    s.slot_spawned(0, 101)
    s.slot_exited(0, 101, False, 2.0)
    assert s.slots[0].next_spawn == pytest.approx(2.2)
    s.tick(2.3)
    s.slot_spawned(0, 102)
    actions = s.slot_exited(0, 102, False, 3.0)
    assert s.slots[0].state == "quarantined"
    (fail,) = of(actions, Fail)
    err = error_of(fail)
    assert fail.job is queued and isinstance(err, WorkerLostError) and err.retry_after == pytest.approx(60.0)
    (new,) = of(s.submit(job(), 13.0), Fail)
    new_err = error_of(new)
    assert type(new_err) is WorkerLostError and new_err.retry_after == pytest.approx(50.0)
    assert of(s.tick(63.0), Spawn) == [Spawn(0)]
    assert s.submit(job(), 63.0) == []  # capacity on its way again: it waits


def test_a_ready_worker_resets_its_slot_and_an_exit_after_ready_respawns_at_once() -> None:
    s = Scheduler()
    s.add_slots(1)
    s.slot_spawned(0, 7)
    s.ready(worker("w", pid=7), 0.0)
    assert s.slots[0].state == "ready" and s.workers[b"w"].slot == 0
    actions = s.slot_exited(0, 7, False, 1.0)
    assert of(actions, Spawn) == [Spawn(0)] and b"w" not in s.workers and s.slots[0].crashes == 0


def test_silent_worker_is_lost_and_killed_if_local() -> None:
    s = Scheduler(Rules(heartbeat=1.0, liveness=3, retry_backoff=0.0))
    s.add_slots(1)
    s.slot_spawned(0, 9)
    s.ready(worker("local", pid=9), 0.0)
    s.ready(worker("remote", pid=99), 0.0)
    s.seen(b"remote", 2.5)
    actions = s.tick(3.5)
    assert of(actions, Kill) == [Kill(0, "hung: no heartbeat")]
    assert b"local" not in s.workers and b"remote" in s.workers
    assert not of(actions, Disconnect)


# -- the state machine ---------------------------------------------------------------------------------
NEEDS = st.sampled_from([frozenset(), frozenset({"a"}), frozenset({"b"})])
CAPS = st.sampled_from([frozenset(), frozenset({"a"}), frozenset({"a", "b"})])
NAMES = [f"w{i}".encode() for i in range(4)]


class SchedulerMachine(RuleBasedStateMachine):
    """Random events; after each, the invariants of :mod:`stepbridge.bridge.scheduler` must hold."""

    @initialize(queue_size=st.integers(1, 6), max_attempts=st.integers(1, 4), slots=st.integers(0, 2))
    def setup(self, queue_size: int, max_attempts: int, slots: int) -> None:
        self.rules = Rules(queue_size=queue_size, heartbeat=1.0, liveness=2, max_attempts=max_attempts,
                           retry_backoff=0.05, cancel_grace=0.5, quarantine_after=2, quarantine_time=5.0,
                           expected_capabilities=frozenset({"a"}))
        self.s = Scheduler(self.rules)
        self.now = 0.0
        self.jobs: dict[bytes, Job] = {}
        self.terminal: Counter[bytes] = Counter()
        self.sends: Counter[bytes] = Counter()
        self.capacity_seen = 0
        self.fail_sends_to: bytes | None = None
        self.pids = iter(range(1000, 10**6))
        self.apply(self.s.add_slots(slots))

    # the router's part, as the router does it
    def apply(self, actions: list[Action]) -> None:
        i = 0
        while i < len(actions):
            action = actions[i]
            i += 1
            if isinstance(action, Send):
                j = action.job
                if j.done or j.worker != action.worker or j.attempt != action.attempt:
                    continue
                w = self.s.workers[action.worker]
                assert j.rid in w.inflight and len(w.inflight) <= w.capacity, "dispatched beyond credit"
                assert not w.draining and j.needs <= w.capabilities, "sent to a worker that cannot take it"
                if self.fail_sends_to == action.worker:
                    unsent = [j] + [a.job for a in actions[i:] if isinstance(a, Send) and a.worker == action.worker]
                    self.fail_sends_to = None
                    actions += self.s.send_failed(action.worker, unsent, self.now)
                    continue
                self.sends[j.rid] += 1
                assert j.retriable or self.sends[j.rid] == 1, "a side-effecting request was sent twice"
            elif isinstance(action, Deliver | Fail):
                self.terminal[action.job.rid] += 1
                assert self.terminal[action.job.rid] == 1, "a request was answered twice"
                if isinstance(action, Fail):
                    assert isinstance(action.error, dict) or isinstance(error_of(action), Exception)
            elif isinstance(action, Spawn):
                self.s.slot_spawned(action.slot, next(self.pids))
            elif isinstance(action, Kill):
                slot = self.s.slots[action.slot]
                if slot.pid is not None:
                    self.apply(self.s.slot_exited(action.slot, slot.pid, True, self.now))

    @rule(needs=NEEDS, side_effects=st.booleans(), timeout=st.one_of(st.none(), st.floats(0.5, 5.0)))
    def submit(self, needs: frozenset[str], side_effects: bool, timeout: float | None) -> None:
        j = job(needs, retriable=not side_effects, timeout=timeout, now=self.now)
        self.jobs[j.rid] = j
        self.apply(self.s.submit(j, self.now))

    @rule(name=st.sampled_from(NAMES), capacity=st.integers(1, 3), caps=CAPS, local=st.booleans())
    def ready(self, name: bytes, capacity: int, caps: frozenset[str], local: bool) -> None:
        pid = next((s.pid for s in self.s.slots if s.pid is not None and s.state == "starting"), None) if local else 0
        self.capacity_seen += capacity
        self.apply(self.s.ready(WorkerState(identity=name, capabilities=caps, capacity=capacity, last_seen=self.now,
                                            pid=pid or 0), self.now))

    @precondition(lambda self: any(w.inflight for w in self.s.workers.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "step", "refused", "timeout"]))
    def reply(self, data: st.DataObject, outcome: str) -> None:
        w = data.draw(st.sampled_from([w for w in self.s.workers.values() if w.inflight]))
        j = data.draw(st.sampled_from(list(w.inflight.values())))
        was_done, attempt = j.done, j.attempt
        before = self.terminal[j.rid]
        kw: dict[str, Any] = {"result": "ok"} if outcome == "ok" else {"error": {
            "type": {"step": "StepError", "refused": "WorkerLostError", "timeout": "RunTimeoutError"}[outcome],
            "message": outcome}}
        actions = self.s.reply(w.identity, j.rid, j.attempt, self.now, **kw)
        assert actions is not None, "the assigned worker's reply was refused"
        self.apply(actions)
        assert j.rid not in w.inflight or j.attempt > attempt  # that attempt's credit is back
        if was_done:
            assert self.terminal[j.rid] == before  # cancelled earlier: nothing more for the caller
        elif outcome == "ok":
            assert self.terminal[j.rid] == 1

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data(), name=st.sampled_from(NAMES), shift=st.integers(-1, 1))
    def forged_or_stale_reply(self, data: st.DataObject, name: bytes, shift: int) -> None:
        j = data.draw(st.sampled_from(list(self.jobs.values())))
        attempt = max(1, j.attempt + shift)
        if name == j.worker and attempt == j.attempt:
            return  # that one is genuine
        before = (self.terminal.copy(), {k: len(w.inflight) for k, w in self.s.workers.items()}, j.attempt)
        assert self.s.reply(name, j.rid, attempt, self.now, result="forged") is None
        assert before == (self.terminal, {k: len(w.inflight) for k, w in self.s.workers.items()}, j.attempt)

    @precondition(lambda self: bool(self.s.workers))
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.s.workers)))
        self.apply(self.s.lost(name, "gone", self.now))
        assert name not in self.s.workers

    @precondition(lambda self: bool(self.s.workers))
    @rule(data=st.data())
    def next_send_fails(self, data: st.DataObject) -> None:
        self.fail_sends_to = data.draw(st.sampled_from(sorted(self.s.workers)))

    @precondition(lambda self: bool(self.s.workers))
    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        self.s.draining(data.draw(st.sampled_from(sorted(self.s.workers))))

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.apply(self.s.cancel(data.draw(st.sampled_from(sorted(self.jobs))), self.now))

    @rule(dt=st.floats(0.0, 3.0), beat=st.booleans())
    def tick(self, dt: float, beat: bool) -> None:
        self.now += dt
        if beat:
            for name in list(self.s.workers):
                self.s.seen(name, self.now)
        self.apply(self.s.tick(self.now))

    @precondition(lambda self: any(s.pid is not None for s in self.s.slots))
    @rule(data=st.data(), killed=st.booleans())
    def slot_exits(self, data: st.DataObject, killed: bool) -> None:
        slot = data.draw(st.sampled_from([s for s in self.s.slots if s.pid is not None]))
        assert slot.pid is not None
        self.apply(self.s.slot_exited(slot.index, slot.pid, killed, self.now))

    @invariant()
    def every_request_is_in_exactly_one_place(self) -> None:
        queued = Counter(j.rid for j in self.s.queue)
        running = Counter(rid for w in self.s.workers.values() for rid in w.inflight)
        for rid, j in self.jobs.items():
            if j.done:
                assert queued[rid] == 0
                assert self.terminal[rid] == 1 or (rid not in self.s.jobs and self.terminal[rid] <= 1)
            else:
                assert self.terminal[rid] == 0
                assert queued[rid] + running[rid] == 1, (queued[rid], running[rid])
                if running[rid]:
                    assert j.worker is not None and self.s.workers[j.worker].inflight[rid] is j
            assert j.attempt - j.first_attempt + 1 <= self.rules.max_attempts or not j.retriable

    @invariant()
    def credit_and_queue_bounds(self) -> None:
        for w in self.s.workers.values():
            assert len(w.inflight) <= w.capacity
        fresh = [j for j in self.s.queue if self.sends[j.rid] == 0 and j.attempt == j.first_attempt]
        assert len(fresh) <= self.rules.queue_size
        assert len(self.s.queue) <= self.rules.queue_size + self.capacity_seen

    def teardown(self) -> None:
        if not hasattr(self, "s"):
            return
        self.apply(self.s.close())
        self.apply(self.s.abandon())
        for rid in self.jobs:
            assert self.terminal[rid] == 1, "a request ended without exactly one answer"


SchedulerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
test_scheduler_state_machine = SchedulerMachine.TestCase
