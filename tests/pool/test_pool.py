"""The pool adapter end to end: real worker processes, real sockets, typed errors, faults."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sb_pool as h
import zmq
import zmq.asyncio
from sb_pool import REPO, worker_env
from stepbridge import (
    InputValidationError,
    LMConfig,
    PoolSaturatedError,
    Runner,
    RunOptions,
    RunTimeoutError,
    StepError,
    UnsupportedCapabilityError,
    WorkerLostError,
    load_program,
)
from stepbridge.bridge import protocol as p
from stepbridge.bridge.pool import PoolAdapter
from stepbridge.errors import LMError
from stepbridge.validate import validate_data

EXAMPLES = REPO / "examples"


async def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``cond`` until true; the timeout only bounds a hang, it is not a performance threshold."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def ready_pids(pool: PoolAdapter) -> list[int]:
    assert pool.router is not None
    return [w.pid for w in pool.router.workers.values() if w.slot is not None and not w.draining]


def test_examples_round_trip_equal_native_and_errors_keep_type() -> None:
    classify = load_program(EXAMPLES / "classify.yaml")
    rag = load_program(EXAMPLES / "rag_qa.yaml")
    rows = [{"ticket": "I was charged twice, please refund me"}, {"ticket": "The app crashes when I log in"}]

    async def go() -> None:
        async with Runner("native") as native:
            want_c = [await native.run(classify, r) for r in rows]
            want_r = await native.run(rag, {"question": "Where is the Eiffel Tower?"})
        pool = PoolAdapter(workers=2, capacity=4)
        async with Runner(pool) as runner:
            got_c = [await runner.run(classify, r) for r in rows]
            got_r = await runner.run(rag, {"question": "Where is the Eiffel Tower?"})
            for got, want in [*zip(got_c, want_c, strict=True), (got_r, want_r)]:
                assert got.outputs == want.outputs
                assert got.step_sequence() == want.step_sequence()
                assert got.backend == "pool" and got.worker
                assert [c.messages for s in got.trace for c in s.lm_calls] == \
                       [c.messages for s in want.trace for c in s.lm_calls]
            many = await asyncio.gather(*(runner.run(classify, {"ticket": f"ticket {i}"}) for i in range(40)))
            assert len({r.execution_id for r in many}) == 40
            assert "out_of_process" in pool.capabilities and "retrieve" in pool.capabilities
            assert pool.router is not None
            await pool.router.wait_ready(2, 60)  # the second worker may still be starting on a busy machine
            status = pool.status()
            assert len(status["workers"]) == 2

            # errors keep their type across the process boundary, with the partial trace
            with pytest.raises(StepError) as info:
                await runner.run(classify, rows[0], RunOptions(lm=LMConfig(profile="no-such-profile")))
            assert isinstance(info.value.cause, LMError)
            assert info.value.trace and info.value.trace[0].module == "route"
            assert info.value.remote_traceback
            with pytest.raises(InputValidationError):  # bypass the core: the worker checks too
                await pool.run(classify, {"nope": 1}, RunOptions())

            # routing by capability: a dspy step only goes to dspy workers; none here -> at once
            from stepbridge.registry import dspy_modules

            dspy_modules.register("sbtest_fake_dspy", object())
            try:
                prog = validate_data({
                    "stepbridge": 1, "name": "needs_dspy", "signature": "q -> a",
                    "modules": {"m": {"type": "dspy", "module": "sbtest_fake_dspy", "signature": "q -> a"}},
                    "steps": [{"call": "m", "with": {"q": "$inputs.q"}, "as": "r"}, {"return": {"a": "$r.a"}}]})
                with pytest.raises(UnsupportedCapabilityError):
                    await runner.run(prog, {"q": "x"})  # the core's check
                with pytest.raises(UnsupportedCapabilityError):
                    await pool.run(prog, {"q": "x"}, RunOptions())  # the router's own routing
            finally:
                dspy_modules.unregister("sbtest_fake_dspy")

    asyncio.run(go())


def test_deadlines_cancel_side_effects_and_drain(pool_kwargs: dict[str, Any]) -> None:
    nap = validate_data(h.tool_program("sbtest_nap", "nap"))
    freeze = validate_data(h.tool_program("sbtest_freeze", "freeze"))
    charge = validate_data(h.tool_program("sbtest_charge", "charge"))

    async def go() -> None:
        pool = PoolAdapter(workers=1, capacity=1, cancel_grace=0.5, queue_size=10, **pool_kwargs)
        await pool.start()
        async with Runner(pool) as runner:
            router = pool.router
            assert router is not None
            # deadline enforced by the worker (remaining budget)
            with pytest.raises(RunTimeoutError) as timed_out:
                await runner.run(nap, {"seconds": 30}, timeout=0.3)
            # the caller's timeout, not the remaining budget the worker was given
            assert timed_out.value.timeout == 0.3 and "0.3s" in str(timed_out.value)
            # a queued request whose deadline passes while it waits
            busy = asyncio.ensure_future(runner.run(nap, {"seconds": 1.0}))
            await wait_for(lambda: router.status()["in_flight"] == 1, what="busy worker")
            with pytest.raises(RunTimeoutError):
                await runner.run(nap, {"seconds": 0.01}, timeout=0.2)
            assert (await busy).outputs == {"slept": 1.0}

            # cancel reaches the worker: its credit comes back and the next run is served
            task = asyncio.ensure_future(runner.run(nap, {"seconds": 30}))
            await wait_for(lambda: router.status()["in_flight"] == 1, what="run started")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_for(lambda: router.status()["in_flight"] == 0, what="cancel acknowledged")
            assert (await runner.run(nap, {"seconds": 0.01})).outputs == {"slept": 0.01}

            # a worker that ignores cancel past the grace period is killed and replaced
            pid = ready_pids(pool)[0]
            task = asyncio.ensure_future(runner.run(freeze, {"seconds": 20}))
            await wait_for(lambda: router.status()["in_flight"] == 1, what="frozen run")
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_for(lambda: bool(ready_pids(pool)) and ready_pids(pool)[0] != pid, what="replacement")
            assert (await runner.run(nap, {"seconds": 0.01})).outputs == {"slept": 0.01}

            # a side-effecting tool step is never retried on another worker
            pid = ready_pids(pool)[0]
            task = asyncio.ensure_future(runner.run(charge, {"seconds": 5}))
            await wait_for(lambda: router.status()["in_flight"] == 1, what="charge started")
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(WorkerLostError) as info:
                await task
            assert info.value.attempts == 1

            # SIGTERM drains: the in-flight run finishes, then the worker leaves and is replaced
            await wait_for(lambda: bool(ready_pids(pool)), what="respawn")
            pid = ready_pids(pool)[0]
            task = asyncio.ensure_future(runner.run(nap, {"seconds": 0.5}))
            await wait_for(lambda: router.status()["in_flight"] == 1, what="run started")
            os.kill(pid, signal.SIGTERM)
            assert (await task).outputs == {"slept": 0.5}
            await wait_for(lambda: bool(ready_pids(pool)) and ready_pids(pool)[0] != pid, what="replacement")
            assert router.stats["respawns"] >= 3

    asyncio.run(go())


def test_flood_against_small_queue_then_normal_service(pool_kwargs: dict[str, Any]) -> None:
    nap = validate_data(h.tool_program("sbtest_nap", "nap"))

    async def go() -> None:
        pool = PoolAdapter(workers=1, capacity=2, queue_size=20, saturation_wait=0.05, **pool_kwargs)
        async with Runner(pool) as runner:
            results = await asyncio.gather(*(runner.run(nap, {"seconds": 0.02}) for _ in range(500)),
                                           return_exceptions=True)
            saturated = [r for r in results if isinstance(r, PoolSaturatedError)]
            ok = [r for r in results if not isinstance(r, BaseException)]
            assert len(saturated) + len(ok) == 500, [r for r in results if isinstance(r, BaseException)][:3]
            assert saturated and ok
            assert pool.router is not None and len(pool.router.queue) == 0
            assert (await runner.run(nap, {"seconds": 0.01})).outputs == {"slept": 0.01}

    asyncio.run(go())


def _chaos(n_runs: int, pool_kwargs: dict[str, Any]) -> None:
    nap = validate_data(h.tool_program("sbtest_nap", "nap"))

    async def go() -> None:
        pool = PoolAdapter(workers=3, capacity=8, max_attempts=20, **pool_kwargs)
        await pool.start()
        async with Runner(pool) as runner:
            router = pool.router
            assert router is not None
            await router.wait_ready(3, 60)
            stop = asyncio.Event()
            kills = 0

            async def chaos() -> None:
                nonlocal kills
                rng = random.Random(7)
                while not stop.is_set():
                    await asyncio.sleep(0.2)
                    pids = ready_pids(pool)
                    if len(pids) > 1:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        kills += 1

            killer = asyncio.ensure_future(chaos())
            delivered: dict[int, int] = {}

            async def one(i: int) -> Any:
                try:
                    result = await runner.run(nap, {"seconds": 0.05})
                finally:
                    delivered[i] = delivered.get(i, 0) + 1
                return result

            results = await asyncio.gather(*(one(i) for i in range(n_runs)), return_exceptions=True)
            stop.set()
            await killer
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, errors[:3]
            assert all(delivered[i] == 1 for i in range(n_runs))
            ok = [r for r in results if not isinstance(r, BaseException)]
            assert len({r.execution_id for r in ok}) == n_runs
            assert kills > 0 and router.stats["retried"] > 0
            assert any(r.attempts > 1 for r in ok)
            assert router.stats["succeeded"] == n_runs
            await wait_for(lambda: len(ready_pids(pool)) == 3, what="full strength")

    asyncio.run(go())


def test_sigkill_chaos_every_run_returns_exactly_once(pool_kwargs: dict[str, Any]) -> None:
    _chaos(300, pool_kwargs)


@pytest.mark.slow
def test_sigkill_chaos_1000_runs(pool_kwargs: dict[str, Any]) -> None:
    _chaos(1000, pool_kwargs)


def test_a_stalled_router_loop_loses_no_worker_and_retries_nothing(pool_kwargs: dict[str, Any]) -> None:
    """The flood test's flake (issue 9 item 0): the application blocking the event loop that hosts the
    router for several heartbeat windows made workers "lose the router" and the router its workers. A
    busy loop is not a dead peer: the router judges silence on what has arrived, workers judge the
    connection by the transport's own heartbeats."""
    nap = validate_data(h.tool_program("sbtest_nap", "nap"))

    async def go() -> None:
        pool = PoolAdapter(workers=2, capacity=4, **pool_kwargs)  # liveness window: 3 x 0.25 s
        await pool.start()
        try:
            router = pool.router
            assert router is not None
            await router.wait_ready(2, 60)
            identities = set(router.workers)
            tasks = [asyncio.ensure_future(pool.run(nap, {"seconds": 0.3}, RunOptions())) for _ in range(8)]
            await wait_for(lambda: router.status()["in_flight"] == 8, what="all running")
            time.sleep(3.0)  # block the router's loop for four liveness windows (a caller hogging it)
            results = await asyncio.gather(*tasks)
            assert [r.outputs for r in results] == [{"slept": 0.3}] * 8
            assert all(r.attempts == 1 for r in results)
            await asyncio.sleep(4 * 0.25 * 3)  # and a few windows after
            assert set(router.workers) == identities
            assert router.stats["workers_lost"] == 0 and router.stats["retried"] == 0
        finally:
            await pool.aclose()

    asyncio.run(go())


def test_sigstop_moves_requests_and_drops_late_replies(pool_kwargs: dict[str, Any]) -> None:
    nap = validate_data(h.tool_program("sbtest_nap", "nap"))

    async def go() -> None:
        pool = PoolAdapter(workers=1, capacity=4, **pool_kwargs)
        await pool.start()
        async with Runner(pool) as runner:
            router = pool.router
            assert router is not None
            # a second, external worker (not a child of the pool) that we will freeze
            ext = subprocess.Popen([sys.executable, "-m", "stepbridge.bridge.worker",
                                    "--connect", router.worker_address, "--backend", "sb_pool:make_adapter",
                                    "--capacity", "4",
                                    "--heartbeat", "0.25", "--liveness", "1000", "--worker-id", "external"],
                                   env=worker_env())
            try:
                await wait_for(lambda: any(w.worker_id == "external" for w in router.workers.values()),
                               60, "external worker")
                tasks = [asyncio.ensure_future(runner.run(nap, {"seconds": 1.0})) for _ in range(8)]
                ext_worker = next(w for w in router.workers.values() if w.worker_id == "external")
                await wait_for(lambda: len(ext_worker.inflight) > 0, what="external busy")
                os.kill(ext.pid, signal.SIGSTOP)
                results = await asyncio.gather(*tasks)
                assert [r.outputs for r in results] == [{"slept": 1.0}] * 8
                assert all(r.worker != "external" or r.attempts == 1 for r in results)
                assert any(r.attempts > 1 for r in results)
                os.kill(ext.pid, signal.SIGCONT)
                # the woken worker reconnects under a new identity and serves again (whatever it still
                # answers for its old identity is dropped: see the frozen-worker test below)
                await wait_for(lambda: sum(w.worker_id == "external" for w in router.workers.values()) == 1,
                               what="external rejoined")
                more = await asyncio.gather(*(runner.run(nap, {"seconds": 0.01}) for _ in range(10)))
                assert len(more) == 10
            finally:
                ext.kill()
                ext.wait()

    asyncio.run(go())


def test_a_reply_after_the_router_gave_up_is_dropped_and_the_caller_answered_once(
        pool_kwargs: dict[str, Any]) -> None:
    """An external worker whose loop freezes (a program blocking it) goes silent; the router fails its
    request (one attempt allowed) and forgets it. When the loop thaws, its reply leaves before any
    heartbeat: it is counted as stale and dropped, and the caller keeps the one answer it had."""
    freeze = validate_data(h.tool_program("sbtest_freeze", "freeze"))
    nap = validate_data(h.tool_program("sbtest_nap", "nap"))

    async def go() -> None:
        pool = PoolAdapter(workers=0, max_attempts=1, **pool_kwargs)
        await pool.start()
        router = pool.router
        assert router is not None
        ext = subprocess.Popen([sys.executable, "-m", "stepbridge.bridge.worker", "--connect", router.worker_address,
                                "--backend", "sb_pool:make_adapter", "--capacity", "1", "--heartbeat",
                                "0.25", "--worker-id", "external"], env=worker_env())
        try:
            await router.wait_ready(1, 60)
            with pytest.raises(WorkerLostError) as lost:
                await pool.run(freeze, {"seconds": 3.0}, RunOptions())
            assert lost.value.attempts == 1 and router.stats["stale_replies"] == 0
            await wait_for(lambda: router.stats["stale_replies"] == 1, what="the late reply")
            await router.wait_ready(1, 60)  # it rejoined under a new identity
            assert (await pool.run(nap, {"seconds": 0.01}, RunOptions())).outputs == {"slept": 0.01}
            assert router.stats["succeeded"] == 1 and router.stats["failed"] == 1
        finally:
            ext.kill()
            ext.wait()
            await pool.aclose()

    asyncio.run(go())


def test_garbage_frames_wrong_version_and_oversized_are_refused(pool_kwargs: dict[str, Any],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    echo = validate_data(h.ECHO)

    async def go() -> None:
        pool = PoolAdapter(workers=1, capacity=4, max_message=100_000, **pool_kwargs)
        await pool.start()
        async with Runner(pool) as runner:
            router = pool.router
            assert router is not None
            ctx = zmq.asyncio.Context()
            raw = ctx.socket(zmq.DEALER)
            raw.connect(router.worker_address)
            try:
                garbage = [[b"hello"], [b"\x00" * 7, b"x", b"y", b"z"], [p.header(), b"\xff", b"", b""],
                           [p.header(), bytes([p.Command.READY]), b"", b"\xc1\xc1"],
                           [p.header(), bytes([p.Command.REQUEST]), b"", b"\x81\xa6inputs\x05"],
                           [p.MAGIC + b"\x00", *p.encode(p.Ready(worker_id="old", incarnation=1, pid=1, host="h",
                                                                  capacity=1, backend="native",
                                                                  capabilities=[]))[1:]],
                           [*p.encode(p.Heartbeat())[:3], b"\x00" * 200_000]]  # over MAXMSGSIZE
                for frames in garbage:
                    await raw.send_multipart(frames)
                await wait_for(lambda: router.stats["rejected_frames"] >= 6, what="frames refused")
                # an old-protocol worker (READY says protocol 0) is refused too
                await raw.send_multipart(p.encode(p.Ready(worker_id="old", incarnation=1, pid=1, host="h",
                                                          capacity=1, backend="native", capabilities=[], protocol=0)))
                reply = p.decode(await asyncio.wait_for(raw.recv_multipart(), 10))
                assert isinstance(reply.body, p.Disconnect) and reply.body.reason == "refused"
            finally:
                raw.close(linger=0)
                ctx.term()
            results = await asyncio.gather(*(runner.run(echo, {"question": f"q{i}"}) for i in range(20)))
            assert [r.outputs["answer"] for r in results] == [f"q{i}" for i in range(20)]
            assert len(router.workers) == 1

    with caplog.at_level(logging.WARNING, logger="stepbridge.bridge"):
        asyncio.run(go())
    text = caplog.text
    assert "version" in text and "refused" in text and "bad protocol id" in text


def test_quarantine_fails_queued_and_new_requests_alike(pool_kwargs: dict[str, Any]) -> None:
    """Requests queued while every local slot gets quarantined fail at once with the WorkerLostError a new
    submission gets (with ``retry_after``), instead of waiting out the quarantine (issue 9 item 8)."""
    from stepbridge.bridge import PoolConfig
    from stepbridge.bridge.router import Router

    echo = validate_data(h.ECHO)

    async def go() -> None:
        router = Router(PoolConfig(workers=1, backend="sb_pool:crashing_adapter", quarantine_after=3,
                                   quarantine_time=3600, worker_env=pool_kwargs["worker_env"]),
                        expected_capabilities=frozenset({"retrieve"}))
        await router.start()
        try:
            queued = [asyncio.ensure_future(router.submit(echo, {"question": str(i)}, RunOptions()))
                      for i in range(5)]
            await asyncio.sleep(0)
            assert len(router.queue) == 5 and router.scheduler.slots[0].state != "quarantined"
            # bounded only so that a regression fails instead of waiting an hour
            outcomes = await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 120)
            assert router.scheduler.slots[0].state == "quarantined"
            assert all(isinstance(o, WorkerLostError) for o in outcomes), outcomes
            assert all(o.retry_after is not None and o.retry_after > 3000 for o in outcomes)  # type: ignore[union-attr]
            with pytest.raises(WorkerLostError) as new:
                await router.submit(echo, {"question": "new"}, RunOptions())
            assert new.value.retry_after is not None and new.value.retry_after > 3000
            assert type(new.value) is type(outcomes[0]) and "quarantined" in str(new.value)
            assert router.status()["slots"][0]["crashes"] >= 3 and not router.queue
        finally:
            await router.close()

    asyncio.run(go())


def test_curve_tcp_refuses_wrong_key(tmp_path: Path, pool_kwargs: dict[str, Any],
                                     caplog: pytest.LogCaptureFixture) -> None:
    from stepbridge.bridge.net import generate_keypair

    allowed = tmp_path / "allowed"
    _, broker_secret = generate_keypair(tmp_path / "broker", "broker")
    good_public, good_secret = generate_keypair(tmp_path / "good", "good")
    _, bad_secret = generate_keypair(tmp_path / "bad", "bad")
    allowed.mkdir()
    (allowed / "good.key").write_bytes(good_public.read_bytes())
    broker_public = tmp_path / "broker" / "broker.key"
    echo = validate_data(h.ECHO)

    async def go() -> None:
        pool = PoolAdapter(workers=1, capacity=4, worker_bind="tcp://127.0.0.1:*", curve_secret=broker_secret,
                           curve_workers=allowed, **pool_kwargs)
        await pool.start()
        router = pool.router
        assert router is not None
        try:
            assert router.worker_address.startswith("tcp://127.0.0.1:")

            def spawn(secret: Path, wid: str) -> subprocess.Popen[bytes]:
                return subprocess.Popen([sys.executable, "-m", "stepbridge.bridge.worker", "--connect",
                                         router.worker_address, "--backend", "sb_pool:make_adapter",
                                         "--curve-secret", str(secret), "--curve-server", str(broker_public),
                                         "--heartbeat", "0.25", "--worker-id", wid], env=worker_env())

            good, bad = spawn(good_secret, "good"), spawn(bad_secret, "bad")
            try:
                await wait_for(lambda: any(w.worker_id == "good" for w in router.workers.values()), 60, "good")
                await wait_for(lambda: "authentication failed" in caplog.text, 60, "refusal logged")
                assert not any(w.worker_id == "bad" for w in router.workers.values())
                async with Runner(pool) as runner:
                    results = await asyncio.gather(*(runner.run(echo, {"question": str(i)}) for i in range(10)))
                assert len(results) == 10
            finally:
                for proc in (good, bad):
                    proc.kill()
                    proc.wait()
        finally:
            await pool.aclose()

    with caplog.at_level(logging.WARNING, logger="stepbridge.bridge"):
        asyncio.run(go())


def _rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


@pytest.mark.slow
def test_flood_10000_against_queue_of_1000_memory_stays_bounded(pool_kwargs: dict[str, Any]) -> None:
    """10,000 submissions against a queue of 1,000: the rest get PoolSaturatedError, nothing hangs, the
    memory of the process hosting the router stays bounded, and the pool then serves normally."""
    import gc

    nap = validate_data(h.tool_program("sbtest_nap", "nap"))
    echo = validate_data(h.ECHO)
    n = 10_000

    async def go() -> None:
        pool = PoolAdapter(workers=2, capacity=16, queue_size=1000, saturation_wait=0.2, **pool_kwargs)
        await pool.start()
        try:
            router = pool.router
            assert router is not None
            await router.wait_ready(2, 60)
            await asyncio.gather(*(pool.run(echo, {"question": str(i)}, RunOptions()) for i in range(100)))
            gc.collect()
            before = _rss_bytes()
            peak = before
            stop = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, _rss_bytes())
                    await asyncio.sleep(0.05)

            sampler = asyncio.ensure_future(sample())
            max_queue = 0

            async def one(i: int) -> Any:
                nonlocal max_queue
                try:
                    return await pool.run(nap, {"seconds": 0.05}, RunOptions())
                finally:
                    max_queue = max(max_queue, len(router.queue))

            # bounded: a hang fails the test instead of stalling the run (not a performance threshold)
            results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True),
                                             600)
            stop.set()
            await sampler
            gc.collect()
            after = _rss_bytes()

            saturated = [r for r in results if isinstance(r, PoolSaturatedError)]
            ok = [r for r in results if not isinstance(r, BaseException)]
            other = [r for r in results if isinstance(r, BaseException) and not isinstance(r, PoolSaturatedError)]
            assert not other, other[:3]
            assert len(saturated) + len(ok) == n
            assert len(saturated) >= n - 1000 - 16 * 2 - 200 and len(ok) >= 1000
            assert max_queue <= 1000
            assert router.stats["saturated"] == len(saturated)
            # nothing left behind: queue, waiters, job table
            assert not router.queue and not router._room_waiters and not router.scheduler.jobs
            assert all(not w.inflight for w in router.workers.values())
            # a memory bound, not a timing threshold
            growth, peak_growth = after - before, peak - before
            print(f"router process RSS: before {before / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, "
                  f"after {after / 2**20:.1f} MiB; {len(ok)} ok, {len(saturated)} saturated")
            assert peak_growth < 200 * 2**20, f"RSS grew by {peak_growth / 2**20:.0f} MiB during the flood"
            assert growth < 200 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB"

            # then normal service
            more = await asyncio.gather(*(pool.run(echo, {"question": f"q{i}"}, RunOptions()) for i in range(50)))
            assert [r.outputs["answer"] for r in more] == [f"q{i}" for i in range(50)]
            assert len(router.workers) == 2
        finally:
            await pool.aclose()

    asyncio.run(go())
