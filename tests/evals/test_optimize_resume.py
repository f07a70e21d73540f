"""``stepbridge optimize`` killed with SIGKILL while bootstrapping, then ``stepbridge optimizations resume``:
no training example finished before the kill is sent to the LM again, and the result is the same program
as an uninterrupted optimization (SQLite and PostgreSQL; real CLI processes and a reference LM server)."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from sb_evals import COT_PROGRAM, LM, start_and_kill, stepbridge_cli, write_jsonl
from stepbridge.datasets import from_rows
from stepbridge.loader import load_program
from stepbridge.optimization import optimize
from stepbridge.storage import Store
from stepbridge.storage.optimizations import Optimizations

SEED = int(os.environ.get("STEPBRIDGE_TEST_SEED", random.randrange(1 << 30)))
TRAIN = 30
PROGRAM = COT_PROGRAM
SETTINGS = {"max_bootstrapped_demos": 15, "max_labeled_demos": 0}  # no labeled demos: each prompt names one example


def rows(prefix: str, n: int) -> list[dict[str, str]]:
    return [{"question": f"{prefix}-{i:03d}", "answer": f"{prefix}-{i:03d}" if i % 3 else "wrong"} for i in range(n)]


@pytest.mark.slow
def test_sigkilled_optimization_resumes_from_its_checkpoint(tmp_path: Path, db_url: str, lm: LM,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    program = tmp_path / "cot.yaml"
    program.write_text(PROGRAM)
    train = write_jsonl(tmp_path / "train.jsonl", rows("train", TRAIN))
    val = write_jsonl(tmp_path / "val.jsonl", rows("valq", 6))
    env = {**os.environ, "STEPBRIDGE_DATABASE_URL": db_url, "STEPBRIDGE_LM_BASE_URL": lm.url,
           "STEPBRIDGE_LM_MODEL": "openai/reference"}
    kill_at = random.Random(SEED).randint(2, 15)  # examples checkpointed before the kill

    def due(oid: str) -> bool:
        with Store(db_url) as store:
            return int(Optimizations(store).get(oid).progress.get("done", 0)) >= kill_at

    oid = start_and_kill(env, ["optimize", str(program), "--optimizer", "bootstrap", "--train", str(train), "--val",
                               str(val), "--metric", "exact_match", "--max-bootstrapped-demos", "15",
                               "--max-labeled-demos", "0"], r"optimization ([0-9a-f]{32}): ", due)
    with Store(db_url) as store:
        before = Optimizations(store).get(oid)
    assert before.status == "running" and before.checkpoint is not None
    finished = before.checkpoint["bootstrap"]["next"]
    assert finished >= kill_at
    sent_before = lm.sent(r"train-\d{3}")
    done = subprocess.run([*stepbridge_cli(), "optimizations", "resume", oid[:10], "--json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"seed {SEED}: {done.stderr}"
    result = json.loads(done.stdout)
    sent = lm.sent(r"train-\d{3}")
    for i in range(TRAIN):
        q = f"train-{i:03d}"
        if i < finished:  # checkpointed: not paid again
            assert sent[q] == sent_before[q] == 1, (q, sent[q], sent_before[q], SEED)
        else:
            assert sent[q] - sent_before[q] <= 1 and sent[q] <= 2, (q, sent[q], SEED)
    # the same program as an optimization that was never interrupted
    monkeypatch.setenv("STEPBRIDGE_LM_BASE_URL", lm.url)
    monkeypatch.setenv("STEPBRIDGE_LM_MODEL", "openai/reference")
    prog = load_program(program)
    straight = optimize(prog, from_rows(rows("train", TRAIN), program=prog), "exact_match",
                        val=from_rows(rows("valq", 6), program=prog), settings=SETTINGS)
    assert result["hash"] == straight.hash and result["program"] == "cot@1"  # only the result is published
    assert result["score_before"] == straight.score_before and result["score_after"] == straight.score_after
    with Store(db_url) as store:
        after = Optimizations(store).get(oid)
        assert after.status == "completed" and after.result_hash == result["hash"]
        assert [c["label"] for c in Optimizations(store).candidates(oid)] == ["bootstrap"]
    print(f"seed {SEED}: killed after {finished} checkpointed examples")
