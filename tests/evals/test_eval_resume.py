"""``stepbridge eval`` killed with SIGKILL mid-run, then ``stepbridge evals resume``: every row scored
exactly once, and no row whose run had finished is sent to the LM again (SQLite and PostgreSQL).

Everything is real: the CLI in subprocesses, a reference LM server with latency and a request log.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sb_evals import PROGRAM, qa_rows, stepbridge_cli, write_jsonl
from stepbridge.storage import Store
from stepbridge.storage.evaluations import Evaluations

ROWS = 40
CONCURRENCY = 4
LATENCY_S = 0.1
MIN_EVAL_S = ROWS / CONCURRENCY * LATENCY_S
SEED = int(os.environ.get("STEPBRIDGE_TEST_SEED", random.randrange(1 << 30)))


@dataclass
class LM:
    url: str
    log: Path
    since: int = 0

    def sent(self) -> Counter[str]:
        with self.log.open("rb") as fh:
            fh.seek(self.since)
            text = fh.read().decode()
        return Counter(re.findall(r"question-\d{3}", text))


@pytest.fixture(scope="module")
def lm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LM]:
    log = tmp_path_factory.mktemp("lm") / "lm-requests.jsonl"
    log.touch()
    proc = subprocess.Popen([*stepbridge_cli(), "lm", "serve", "--port", "0", "--latency-ms",
                             str(LATENCY_S * 1000), "--log", str(log)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        m = re.search(r"(http://\S+/v1)\s*$", proc.stdout.readline())
        assert m, "the reference LM did not start"
        yield LM(m.group(1), log)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def lm(lm_server: LM) -> LM:
    lm_server.since = lm_server.log.stat().st_size
    return lm_server


def start_and_kill(env: dict[str, str], args: list[str], after_s: float) -> str:
    """Start the command, SIGKILL it ``after_s`` seconds after it said its evaluation is recorded."""
    proc = subprocess.Popen([*stepbridge_cli(), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    recorded = threading.Event()
    found: list[str] = []
    lines: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            m = re.match(r"evaluation ([0-9a-f]{32}): ", line)
            if m and not found:
                found.append(m.group(1))
                recorded.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert recorded.wait(180), f"the evaluation never said it was recorded: {''.join(lines)}"
        time.sleep(after_s)
        proc.kill()
    finally:
        proc.kill()
        proc.wait()
        reader.join(10)
    assert proc.returncode == -9, f"it ended before it was killed: {''.join(lines)}"
    return found[0]


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
    eid = start_and_kill(env, ["eval", str(program), "--data", str(data), "--metric", "exact_match",
                               "--concurrency", str(CONCURRENCY)], after)

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
