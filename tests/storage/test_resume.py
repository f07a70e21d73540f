"""``resume``: a SIGKILLed batch's runs end with exactly one succeeded execution each, via the core Runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from sb_storage_helpers import make_program
from stepbridge import Program
from stepbridge.adapter import RunOptions
from stepbridge.result import RunResult, StepTrace
from stepbridge.storage import Store
from stepbridge.storage.resume import resume

HERE = Path(__file__).resolve().parent


class EchoAdapter:
    """A tiny in-process adapter: answers with the question. Counts its runs."""

    name = "echo"
    capabilities = frozenset({"async"})

    def __init__(self) -> None:
        self.runs: list[tuple[str, int]] = []

    async def prepare(self, program: Program) -> None:
        return None

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        self.runs.append((options.execution_id, options.attempt))
        return RunResult(outputs={"answer": inputs["question"]}, trace=[StepTrace(step=0, kind="return")],
                         backend=self.name, program_hash=program.content_hash, execution_id=options.execution_id,
                         attempts=options.attempt)

    async def aclose(self) -> None:
        return None


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
