"""``resume``: a SIGKILLed batch's runs end with exactly one succeeded execution each, via the core Runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sb_storage import EchoAdapter, make_program
from stepbridge.adapter import RunOptions
from stepbridge.registry import adapters
from stepbridge.result import RunResult
from stepbridge.storage import Store
from stepbridge.storage.cli import executions_app
from stepbridge.storage.resume import resume
from typer.testing import CliRunner

HERE = Path(__file__).resolve().parent


def test_resume_after_sigkill(db_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(HERE / "sb_storage_worker.py"), "hang", db_url, "4", "batch"],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    ids = []
    for line in proc.stdout:
        if line.strip() == "ready":
            break
        ids.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    adapter = EchoAdapter()
    with Store(db_url) as store:
        # an unrelated finished run must not be touched
        done = store.begin(make_program(), {"question": "done"}, RunOptions(), "native")
        store.succeed(done.execution_id, RunResult(outputs={"answer": "done"}, backend="native",
                                                   program_hash=make_program().content_hash,
                                                   execution_id=done.execution_id))
        outcomes = resume(store, lambda backend: adapter)
        assert sorted(o.execution_id for o in outcomes) == sorted(ids)
        assert all(o.ok and o.status == "succeeded" for o in outcomes), outcomes
        assert sorted(adapter.runs) == sorted((i, 2) for i in ids)
        for i, eid in enumerate(ids):
            e = store.get_execution(eid)
            assert e is not None and e.status == "succeeded" and e.attempts == 2
            assert e.outputs == {"answer": f"q{i}"}
            assert [c.to_status for c in store.status_history(eid)] == [
                "running", "interrupted", "running", "succeeded"]
        assert store.count_executions() == 5 and store.count_executions("succeeded") == 5
        assert resume(store, lambda backend: adapter) == []  # nothing twice
        assert len(adapter.runs) == 4


def _interrupted(store: Store, backend: str, question: str) -> str:
    """A recorded run on ``backend`` left ``interrupted`` (as a crash would leave it)."""
    begun = store.begin(make_program(), {"question": question}, RunOptions(idempotency_key=f"k-{question}"), backend)
    assert store.transition(begun.execution_id, "running", "interrupted", note="test")
    return begun.execution_id


@pytest.fixture
def canary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module that must never be imported because a stored row names it."""
    name = f"sb_resume_canary_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('imported from a stored row')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_resume_keeps_going_past_unresumable_rows_and_never_imports(db_url: str, canary: str) -> None:
    adapter = EchoAdapter()
    adapters.register("sb_test_echo", lambda: adapter)
    try:
        with Store(db_url) as store:
            unknown = _interrupted(store, "echo", "a")  # e.g. recorded from --backend pkg.mod:factory
            path = _interrupted(store, f"{canary}:make", "b")  # a tampered row naming an import path
            good = _interrupted(store, "sb_test_echo", "c")
            outcomes = {o.execution_id: o for o in resume(store, mark=False)}
            assert set(outcomes) == {unknown, path, good}
            assert outcomes[good].ok and outcomes[good].status == "succeeded"
            for eid in (unknown, path):
                o = outcomes[eid]
                assert not o.ok and o.status == "interrupted"
                assert o.error and "not resumable" in o.error and "not a registered adapter name" in o.error
            assert canary not in sys.modules
            assert adapter.runs == [(good, 2)]
            e = store.get_execution(good)
            assert e is not None and e.outputs == {"answer": "c"}
            # Still interrupted, so the operator can resume them with an explicit adapter.
            assert sorted(e.id for e in store.resumable()) == sorted([unknown, path])
            explicit = EchoAdapter()
            outcomes = {o.execution_id: o for o in resume(store, mark=False, backend=explicit)}
            assert set(outcomes) == {unknown, path}
            assert all(o.ok and o.status == "succeeded" for o in outcomes.values()), outcomes
            assert sorted(explicit.runs) == sorted([(unknown, 2), (path, 2)])
            assert canary not in sys.modules
    finally:
        adapters.unregister("sb_test_echo")


def test_cli_resume_with_explicit_backend(db_url: str, canary: str) -> None:
    with Store(db_url) as store:
        unknown = _interrupted(store, "echo", "a")
        path = _interrupted(store, f"{canary}:make", "b")
    cli = CliRunner()
    r = cli.invoke(executions_app, ["resume", "--db", db_url, "--json"])
    assert r.exit_code == 1
    listed = {o["execution_id"]: o for o in json.loads(r.stdout)}
    assert set(listed) == {unknown, path} and not any(o["ok"] for o in listed.values())
    assert canary not in sys.modules
    r = cli.invoke(executions_app, ["resume", "--db", db_url, "--backend", "sb_storage:EchoAdapter"])
    assert r.exit_code == 0, r.output
    assert "resumed 2 execution(s)" in r.output
    with Store(db_url) as store:
        for eid, q in ((unknown, "a"), (path, "b")):
            e = store.get_execution(eid)
            assert e is not None and e.status == "succeeded" and e.outputs == {"answer": q}
    assert canary not in sys.modules
