"""A batch killed with SIGKILL at random points, then ``stepbridge executions resume`` with no flags:
every input ends ``succeeded`` exactly once, in input order in the batch's results.

Everything is real: the ``stepbridge`` CLI in subprocesses, a reference LM server on loopback (whose
request log shows which rows were sent to the LM, and how often), SQLite files and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from stepbridge.storage import Store

ROWS = 48
CONCURRENCY = 4
LATENCY_S = 0.1
#: the shortest time the batch can take (the LM's latency bounds it): a kill before this is mid-batch
MIN_BATCH_S = ROWS / CONCURRENCY * LATENCY_S
SEED = int(os.environ.get("STEPBRIDGE_TEST_SEED", random.randrange(1 << 30)))

PROGRAM = """\
stepbridge: 1
name: kill_resume
signature: "question -> answer"
modules:
  answer: {type: predict, signature: "question -> answer"}
steps:
  - call: answer
    with: {question: $inputs.question}
    as: r
  - return: {answer: $r.answer}
"""


def _stepbridge() -> list[str]:
    script = Path(sys.executable).with_name("stepbridge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "stepbridge.cli"]


def question(i: int) -> str:
    return f"question-{i:03d}"


@dataclass
class LM:
    url: str
    log: Path
    since: int = 0  # log bytes written before the current test

    def sent(self) -> Counter[str]:
        """How many chat requests the LM received per question during the current test."""
        with self.log.open("rb") as fh:
            fh.seek(self.since)
            text = fh.read().decode()
        return Counter(re.findall(r"question-\d{3}", text))


@pytest.fixture(scope="module")
def lm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LM]:
    """``stepbridge lm serve`` with latency and a request log, in its own process."""
    log = tmp_path_factory.mktemp("lm") / "lm-requests.jsonl"
    log.touch()
    proc = subprocess.Popen([*_stepbridge(), "lm", "serve", "--port", "0", "--latency-ms", str(LATENCY_S * 1000),
                             "--log", str(log)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://\S+/v1)\s*$", line)
        assert m, f"the reference LM did not start: {line!r}"
        yield LM(m.group(1), log)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def lm(lm_server: LM) -> LM:
    lm_server.since = lm_server.log.stat().st_size
    return lm_server


class Batch:
    """One ``stepbridge run --inputs`` of ROWS rows against ``db_url``."""

    def __init__(self, tmp_path: Path, db_url: str, lm: LM):
        self.env = {**os.environ, "STEPBRIDGE_DATABASE_URL": db_url, "STEPBRIDGE_LM_BASE_URL": lm.url,
                    "STEPBRIDGE_LM_MODEL": "openai/reference"}
        self.db_url = db_url
        self.program = tmp_path / "kill_resume.yaml"
        self.program.write_text(PROGRAM)
        self.rows = tmp_path / "rows.jsonl"
        self.rows.write_text("".join(json.dumps({"question": question(i)}) + "\n" for i in range(ROWS)))
        self.stderr: list[str] = []

    def start_and_kill(self, after_s: float) -> str:
        """Start the batch, SIGKILL it ``after_s`` seconds after it said its rows are recorded; the batch id."""
        proc = subprocess.Popen([*_stepbridge(), "run", str(self.program), "--inputs", str(self.rows),
                                 "--concurrency", str(CONCURRENCY)], env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        recorded = threading.Event()
        batch: list[str] = []

        def drain() -> None:  # keep reading: a full pipe would stall the child
            assert proc.stderr is not None
            for line in proc.stderr:
                self.stderr.append(line)
                m = re.match(r"batch ([0-9a-f]{32}): ", line)
                if m and not batch:
                    batch.append(m.group(1))
                    recorded.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            assert recorded.wait(180), f"the batch never said it was recorded: {''.join(self.stderr)}"
            time.sleep(after_s)
            proc.kill()
        finally:
            proc.kill()
            proc.wait()
            reader.join(10)
        assert proc.returncode == -9, f"the batch ended before it was killed: {''.join(self.stderr)}"
        return batch[0]

    def resume(self) -> subprocess.Popen[str]:
        """``stepbridge executions resume`` with no flags (the database comes from the environment)."""
        return subprocess.Popen([*_stepbridge(), "executions", "resume", "--json"], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def rows_now(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's rows as stored (read in-process: quicker than another CLI start)."""
        with Store(self.db_url) as store:
            return [r.model_dump(mode="json") for r in store.batch_results(batch_id)]

    def results(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's rows as ``stepbridge batches show --json`` prints them."""
        done = subprocess.run([*_stepbridge(), "batches", "show", batch_id, "--json"], env=self.env,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert data["batch"]["size"] == ROWS
        return list(data["results"])


def kill_and_resume(tmp_path: Path, db_url: str, lm: LM, after_s: float, resumers: int = 1) -> dict[str, int]:
    """The scenario; returns the statuses the kill left (for the report)."""
    batch = Batch(tmp_path, db_url, lm)
    batch_id = batch.start_and_kill(after_s)
    left = {r["index"]: r for r in batch.rows_now(batch_id)}
    # Nothing lost by the kill: every row is recorded, in order, including those that never started.
    assert sorted(left) == list(range(ROWS))
    assert {r["status"] for r in left.values()} <= {"pending", "running", "succeeded"}
    sent_before = lm.sent()

    procs = [batch.resume() for _ in range(resumers)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"resume failed (seed {SEED}): {err}\n{out}"
        outcomes = json.loads(out)
        assert all(o["ok"] and o["status"] == "succeeded" for o in outcomes), outcomes

    results = batch.results(batch_id)
    assert [r["index"] for r in results] == list(range(ROWS))  # input order
    for i, r in enumerate(results):
        assert r["inputs"] == {"question": question(i)}
        assert r["status"] == "succeeded", (i, r, SEED)
        assert r["outputs"] == {"answer": question(i)}
        # Only a row cut off mid-run is an attempt 2; rows that never started run once, as attempt 1.
        assert r["attempts"] == (2 if left[i]["status"] == "running" else 1), (i, left[i]["status"], r)
        assert r["execution_id"] == left[i]["execution_id"]
    # Exactly once: no duplicate executions, and each one reached succeeded exactly once.
    with Store(db_url) as store:
        assert store.count_executions() == ROWS
        for r in results:
            history = [h.to_status for h in store.status_history(r["execution_id"])]
            assert history.count("succeeded") == 1 and "failed" not in history, history
    # What the LM saw: a row finished before the kill is never sent again; a row that had not started
    # is sent once, by one resumer only; a row cut off mid-run may have been sent before the kill.
    sent = lm.sent()
    for i in range(ROWS):
        q, status = question(i), left[i]["status"]
        if status == "succeeded":
            assert sent[q] == 1 == sent_before[q], (q, sent[q])
        elif status == "pending":
            assert sent[q] == 1 and sent_before[q] == 0, (q, sent[q], SEED)
        else:
            assert sent[q] - sent_before[q] == 1 and sent[q] <= 2, (q, sent[q], SEED)
    return dict(Counter(r["status"] for r in left.values()))


@pytest.mark.slow
@pytest.mark.parametrize(("low", "high", "resumers"), [
    pytest.param(0.0, 0.15, 1, id="early"),
    pytest.param(0.3, 0.6, 2, id="middle-two-resumers"),
    pytest.param(0.6, 0.95, 1, id="late"),
])
def test_sigkilled_batch_resumes_every_row_exactly_once(tmp_path: Path, db_url: str, lm: LM, low: float,
                                                       high: float, resumers: int) -> None:
    rng = random.Random(f"{SEED}-{low}")
    after = rng.uniform(low, high) * MIN_BATCH_S
    left = kill_and_resume(tmp_path, db_url, lm, after, resumers)
    print(f"seed {SEED}: killed {after:.2f}s after recording; left {left}; resumed with {resumers} resumer(s)")


@pytest.mark.slow
def test_a_broken_resumer_records_nothing_against_the_rows(tmp_path: Path, db_url: str, lm: LM) -> None:
    """An adapter whose setup fails leaves every row interrupted (never failed); a working resume then
    finishes them all."""
    (tmp_path / "sb_broken_adapter.py").write_text(
        "class Broken:\n"
        "    name = 'broken'\n"
        "    capabilities = frozenset({'async'})\n"
        "    async def prepare(self, program):\n"
        "        raise RuntimeError('this resumer is misconfigured')\n"
        "    async def run(self, program, inputs, options):\n"
        "        raise AssertionError('never reached')\n"
        "    async def aclose(self):\n"
        "        raise RuntimeError('and cannot even close')\n"
    )
    batch = Batch(tmp_path, db_url, lm)
    batch.env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), batch.env.get("PYTHONPATH", "")])
    batch_id = batch.start_and_kill(0.2 * MIN_BATCH_S)
    unfinished = {r["execution_id"] for r in batch.rows_now(batch_id) if r["status"] != "succeeded"}
    assert unfinished
    for backend in ("sb_broken_adapter:Broken", "sb_broken_adapter:missing", "json:JSONDecoder"):
        done = subprocess.run([*_stepbridge(), "executions", "resume", "--json", "--backend", backend],
                              env=batch.env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr
        outcomes = json.loads(done.stdout)
        assert {o["execution_id"] for o in outcomes} == unfinished
        assert all(not o["ok"] and o["status"] == "interrupted" and "not resumable" in o["error"]
                   for o in outcomes), outcomes
    assert {r["status"] for r in batch.rows_now(batch_id) if r["execution_id"] in unfinished} == {"interrupted"}
    done = subprocess.run([*_stepbridge(), "executions", "resume"], env=batch.env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"batch {batch_id} (kill_resume, {ROWS} rows): {ROWS} succeeded" in done.stdout
    results = batch.results(batch_id)
    assert [r["status"] for r in results] == ["succeeded"] * ROWS
    assert [r["outputs"]["answer"] for r in results] == [question(i) for i in range(ROWS)]



def test_sigterm_ends_every_row_of_a_batch_in_one_terminal_state(tmp_path: Path, db_url: str, lm: LM) -> None:
    """SIGTERM stops the batch: runs in flight and rows not started are recorded cancelled, none left
    pending or running (and so nothing for resume to pick up behind the operator's back)."""
    batch = Batch(tmp_path, db_url, lm)
    proc = subprocess.Popen([*_stepbridge(), "run", str(batch.program), "--inputs", str(batch.rows),
                             "--concurrency", str(CONCURRENCY)], env=batch.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = re.match(r"batch ([0-9a-f]{32}): ", line)
    assert m, line
    time.sleep(0.3 * MIN_BATCH_S)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    statuses = Counter(r["status"] for r in batch.rows_now(m.group(1)))
    assert set(statuses) <= {"succeeded", "cancelled"} and statuses["cancelled"] > 0, statuses
    assert sum(statuses.values()) == ROWS
    done = subprocess.run([*_stepbridge(), "executions", "resume", "--json"], env=batch.env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and json.loads(done.stdout) == [], done.stderr
