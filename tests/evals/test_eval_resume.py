"""``stepbridge eval`` killed with SIGKILL mid-run, then ``stepbridge evals resume``: every row scored
exactly once, and no row whose run had finished is sent to the LM again (SQLite and PostgreSQL).

Everything is real: the CLI in subprocesses, a reference LM server with latency and a request log.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest
from sb_evals import LATENCY_S, LM, PROGRAM, qa_rows, start_and_kill, stepbridge_cli, write_jsonl
from stepbridge.storage import Store
from stepbridge.storage.evaluations import Evaluations

ROWS = 40
CONCURRENCY = 4
MIN_EVAL_S = ROWS / CONCURRENCY * LATENCY_S
SEED = int(os.environ.get("STEPBRIDGE_TEST_SEED", random.randrange(1 << 30)))


@pytest.mark.slow
@pytest.mark.parametrize(("low", "high"), [pytest.param(0.0, 0.1, id="early"), pytest.param(0.4, 0.8, id="mid")])
def test_sigkilled_evaluation_resumes_without_rerunning_finished_rows(tmp_path: Path, db_url: str, lm: LM,
                                                                     low: float, high: float) -> None:
    program = tmp_path / "qa.yaml"
    program.write_text(PROGRAM)
    data = write_jsonl(tmp_path / "data.jsonl", qa_rows(ROWS))
    env = {**os.environ, "STEPBRIDGE_DATABASE_URL": db_url, "STEPBRIDGE_LM_BASE_URL": lm.url,
           "STEPBRIDGE_LM_MODEL": "openai/reference"}
    after = random.Random(f"{SEED}-{low}").uniform(low, high) * MIN_EVAL_S
    started: list[float] = []

    def due(_id: str) -> bool:
        started[:] = started or [time.monotonic()]
        return time.monotonic() - started[0] >= after

    eid = start_and_kill(env, ["eval", str(program), "--data", str(data), "--metric", "exact_match",
                               "--concurrency", str(CONCURRENCY)], r"evaluation ([0-9a-f]{32}): ", due)

    with Store(db_url) as store:
        log = Evaluations(store)
        rows_left = {r.position: r for r in log.rows(eid)}
        assert sorted(rows_left) == list(range(ROWS))  # every row recorded up front
        ev = log.get(eid)
        finished = set()
        if ev.batch_id is not None:
            finished = {r.index for r in store.batch_results(ev.batch_id) if r.status == "succeeded"}
    assert ev.status == "running"
    sent_before = lm.sent()

    done = subprocess.run([*stepbridge_cli(), "evals", "resume", eid[:10], "--json"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"seed {SEED}: {done.stderr}\n{done.stdout}"
    result = json.loads(done.stdout)
    assert result["id"] == eid and result["n"] == ROWS and result["errors"] == 0
    assert result["score"] == pytest.approx(sum(1 for r in qa_rows(ROWS) if r["answer"] != "wrong") / ROWS)

    sent = lm.sent()
    for i in range(ROWS):
        q = f"question-{i:03d}"
        if i in finished:  # its run had finished: scored from storage, never sent again
            assert sent[q] == sent_before[q] == 1, (q, sent[q], SEED)
        else:  # at least once: a run cut off mid-flight may have been sent before the kill
            assert 1 <= sent[q] <= 2 and sent[q] - sent_before[q] == 1, (q, sent[q], sent_before[q], SEED)
    with Store(db_url) as store:
        log = Evaluations(store)
        ev = log.get(eid)
        assert ev.status == "completed" and ev.done == ROWS
        rows = log.rows(eid)
        for r in rows:
            assert r.done and r.error is None and r.execution_id is not None
            assert r.prediction == {"answer": f"question-{r.position:03d}"}
            assert store.get_execution(r.execution_id).status == "succeeded"  # type: ignore[union-attr]
            if rows_left[r.position].done:  # scored before the kill: kept as it was
                assert rows_left[r.position].score == r.score
        # one execution per row (plus none left over): resume took interrupted runs over by their id
        assert store.count_executions() == ROWS
    print(f"seed {SEED}: killed {after:.2f}s in; {len(finished)} runs had finished, "
          f"{sum(r.done for r in rows_left.values())} rows were scored")
