"""Real processes: a SIGKILLed recorder leaves ``interrupted`` runs; concurrent writers lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sb_storage import make_program
from sqlalchemy import func, select
from stepbridge.adapter import RunOptions
from stepbridge.result import RunResult, StepTrace
from stepbridge.storage import Store
from stepbridge.storage.executions import executions, history_t, steps_t
from stepbridge.storage.programs import versions

HERE = Path(__file__).resolve().parent
WORKER = str(HERE / "sb_storage_worker.py")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def _start_hanging(url: str, n: int, prefix: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, WORKER, "hang", url, str(n), prefix], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout is not None
    ids = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline().strip()
        if line == "ready":
            return proc, ids
        if not line and proc.poll() is not None:
            break
        if line:
            ids.append(line)
    proc.kill()
    raise AssertionError(f"worker did not start: {proc.stderr.read() if proc.stderr else ''}")


def test_killed_process_leaves_interrupted_runs_and_resume_completes_them(db_url: str) -> None:
    store = Store(db_url)
    program = make_program()
    mine = store.begin(program, {"question": "mine"}, RunOptions(), "native")  # this live process's run
    victim, dead_ids = _start_hanging(db_url, 3, "hang")
    survivor, live_ids = _start_hanging(db_url, 2, "live")  # a live process whose runs must stay running
    try:
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        assert store.count_executions("running") == 6
        marked = store.mark_interrupted()
        assert sorted(marked) == sorted(dead_ids)
        assert store.mark_interrupted() == []  # nothing twice
        for eid in [mine.execution_id, *live_ids]:
            still = store.get_execution(eid)
            assert still is not None and still.status == "running"
        assert sorted(e.id for e in store.resumable()) == sorted(dead_ids)
        for eid in dead_ids:
            e = store.get_execution(eid)
            assert e is not None and e.status == "interrupted" and e.finished_at is not None
            hist = store.status_history(eid)
            assert hist[-1].to_status == "interrupted" and "gone" in (hist[-1].note or "")
        # Resume: the same idempotency key takes the interrupted execution over as attempt 2.
        for i, eid in enumerate(sorted(dead_ids, key=lambda x: dead_ids.index(x))):
            b = store.begin(program, {"question": f"q{i}"}, RunOptions(idempotency_key=f"hang-{i}"), "native")
            assert (b.execution_id, b.attempt, b.in_progress) == (eid, 2, False)
            again = store.begin(program, {"question": f"q{i}"}, RunOptions(idempotency_key=f"hang-{i}"), "native")
            assert again.in_progress  # a concurrent resumer does not get it too
            res = RunResult(outputs={"answer": "ok"}, trace=[StepTrace(step=0, kind="return")], backend="native",
                            program_hash=program.content_hash, execution_id=eid)
            assert store.succeed(eid, res)
        assert store.resumable() == []
        done = [store.get_execution(e) for e in dead_ids]
        assert all(e is not None and e.status == "succeeded" and e.attempts == 2 for e in done)
        assert store.count_executions() == 6  # nothing recorded twice
    finally:
        for p in (victim, survivor):
            if p.poll() is None:
                p.kill()
                p.wait()
        store.close()


def test_owner_checks() -> None:
    from stepbridge.storage.owner import current_owner, owner_alive

    me = current_owner()
    assert owner_alive(me.host, me.pid, me.marker) is True
    assert owner_alive("some-other-host", 1, None) is None
    assert owner_alive(None, None, None) is None
    if me.marker:
        boot, start = me.marker.split(":")
        assert owner_alive(me.host, me.pid, f"{boot}:{int(start) + 1}") is False  # pid reused
        assert owner_alive(me.host, me.pid, f"not-this-boot:{start}") is False
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert owner_alive(me.host, proc.pid, None) is False


WRITERS, PER_WRITER = 8, 500


@pytest.mark.slow  # 4000 runs from 8 processes (CI); concurrent writing processes stay in the default run below
def test_eight_processes_record_4000_runs(db_url: str) -> None:
    Store(db_url).close()  # migrate once up front (concurrent first use is covered below anyway)
    started = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, WORKER, "record", db_url, f"w{w}", str(PER_WRITER)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for w in range(WRITERS)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    elapsed = time.monotonic() - started
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert "database is locked" not in err
        assert p.returncode == 0, err[-3000:]
        assert out.strip() == "done"
    with Store(db_url) as store, store.engine.connect() as conn:
        total = WRITERS * PER_WRITER
        assert conn.execute(select(func.count()).select_from(executions)).scalar() == total
        keys = conn.execute(select(func.count(func.distinct(executions.c.idempotency_key)))).scalar()
        assert keys == total
        assert store.count_executions("succeeded") == total
        assert conn.execute(select(func.count()).select_from(steps_t)).scalar() == total
        assert conn.execute(select(func.count()).select_from(history_t)).scalar() == 2 * total
    print(f"{total} recorded runs from {WRITERS} processes in {elapsed:.1f}s")


def test_concurrent_first_use_migrates_once(db_url: str) -> None:
    procs = [
        subprocess.Popen([sys.executable, WORKER, "record", db_url, f"m{w}", "5"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env())
        for w in range(6)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    with Store(db_url) as store:
        assert store.count_executions("succeeded") == 30
        assert store.history("qa") == []  # runs store the program's content once, and publish no version
        with store.engine.connect() as conn:
            assert conn.execute(select(versions.c.version)).all() == [(None,)]
