"""Evaluations through the Python API and the CLI: every row recorded with its prediction, score or error
and execution id; the summary; paired comparison; an LM judge as the metric; the pool gives the same rows."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import stepbridge
from sb_evals import PROGRAM, qa_rows, stepbridge_cli, write_jsonl
from stepbridge.datasets import from_rows
from stepbridge.evaluation import compare, mean_ci
from stepbridge.loader import load_program
from stepbridge.storage import Store
from stepbridge.storage.evaluations import Evaluations

TYPED = PROGRAM.replace('"question -> answer"\nmodules', '"question, k: int -> answer"\nmodules')


def test_every_row_recorded_and_errors_counted_apart(store: Store) -> None:
    prog = load_program(TYPED)
    rows: list[dict[str, Any]] = [{**r, "k": 1} for r in qa_rows(12)]
    rows[4]["k"] = "not a number"  # the run is refused: an error row, not a zero
    seen: list[int] = []
    result = stepbridge.evaluate(prog, from_rows(rows, program=prog), "exact_match", store=store, concurrency=4,
                                 on_row=lambda r: seen.append(r.position))
    assert sorted(seen) == list(range(12))
    assert result.n == 12 and result.errors == 1 and result.summary.scored == 11
    right = [i for i in range(12) if i % 3 and i != 4]
    assert result.score == pytest.approx(len(right) / 11)
    assert result.ci is not None and result.ci[0] < result.score < result.ci[1]
    assert result.summary.tokens > 0 and result.summary.p95_ms is not None
    stored = Evaluations(store).rows(result.id)
    assert [r.position for r in stored] == list(range(12)) and all(r.done for r in stored)
    for r in stored:
        execution = store.get_execution(r.execution_id)
        assert execution is not None
        if r.position == 4:
            assert r.error is not None and r.error["type"] == "InputValidationError" and r.score is None
            assert execution.status == "failed"
        else:
            assert r.prediction == {"answer": r.example["question"]} and execution.status == "succeeded"
            assert r.score == (1.0 if r.position in right else 0.0)
    ev = Evaluations(store).get(result.id[:8])  # type: ignore[index]
    assert ev.status == "completed" and ev.summary == result.summary and ev.dataset_hash == result.dataset_hash


def test_a_metric_that_raises_is_a_row_error(store: Store) -> None:
    def picky(example: dict[str, Any], prediction: dict[str, Any]) -> float:
        if example["question"].endswith("1"):
            raise ValueError("cannot judge this one")
        return 0.5

    result = stepbridge.evaluate(load_program(PROGRAM), from_rows(qa_rows(12), program=load_program(PROGRAM)),
                                 picky, store=store)
    assert result.errors == 2 and result.score == 0.5  # question-001 and question-011
    errors = [r for r in Evaluations(store).rows(result.id) if r.error]
    assert {r.position for r in errors} == {1, 11}
    assert errors[0].error == {"type": "MetricError", "message": "ValueError: cannot judge this one"}


@pytest.mark.slow  # seven CLI processes (~18 s of CPU); the API tests cover the same paths in-process
def test_cli_eval_json_and_compare(tmp_path: Path) -> None:
    """The CLI's shapes and exit codes (SQLite only: the storage paths are the API tests' on both)."""
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    program = tmp_path / "qa.yaml"
    program.write_text(PROGRAM)
    data = write_jsonl(tmp_path / "data.csv.jsonl", qa_rows(9))
    env = {"STEPBRIDGE_DATABASE_URL": db_url}
    import os

    env = {**os.environ, **env}
    outs = []
    for metric in ("exact_match", "contains"):
        done = subprocess.run([*stepbridge_cli(), "eval", str(program), "--data", str(data), "--metric", metric,
                               "--json"], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outs.append(json.loads(done.stdout))
    a, b = outs
    assert {"id", "n", "score", "errors", "ci", "summary", "program"} <= set(a)
    assert a["n"] == 9 and a["errors"] == 0 and a["score"] == pytest.approx(6 / 9)
    done = subprocess.run([*stepbridge_cli(), "evals", "compare", a["id"], b["id"], "--json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cmp = json.loads(done.stdout)
    assert cmp["paired"] == 9 and cmp["difference"] == pytest.approx(0.0) and cmp["disagreements"] == []
    listed = subprocess.run([*stepbridge_cli(), "evals", "list", "--json"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert [e["id"] for e in json.loads(listed.stdout)] == [b["id"], a["id"]]
    bad = subprocess.run([*stepbridge_cli(), "eval", str(program), "--data", str(data), "--metric", "nope",
                          "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no metric registered as 'nope'" in json.loads(bad.stdout)["error"]["message"]
    # a misspelt LM profile stops before any row runs (not one error row per dataset row), for eval and optimize
    for command in (["eval", str(program), "--data", str(data)],
                    ["optimize", str(program), "--optimizer", "bootstrap", "--train", str(data)]):
        typo = subprocess.run([*stepbridge_cli(), *command, "--metric", "exact_match", "--lm", "locl", "--json"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert typo.returncode == 2, typo.stdout + typo.stderr
        assert json.loads(typo.stdout)["error"]["type"] == "ConfigurationError", typo.stdout
    listed = subprocess.run([*stepbridge_cli(), "evals", "list", "--json"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert len(json.loads(listed.stdout)) == 2  # nothing was recorded for the typo


def test_paired_comparison_finds_the_rows_that_disagree() -> None:
    from stepbridge.evaluation import RowResult

    a = [RowResult(position=i, example={}, score=float(i % 2)) for i in range(10)]
    b = [RowResult(position=i, example={}, score=1.0) for i in range(10)]
    b[3] = RowResult(position=3, example={}, error={"type": "LMError", "message": "x"})
    cmp = compare("a", a, "b", b)
    assert cmp.paired == 9 and cmp.difference == pytest.approx(5 / 9)
    assert [d["position"] for d in cmp.disagreements] == [0, 2, 3, 4, 6, 8]
    mean, low, high = mean_ci([1.0, 0.0, 1.0, 1.0])
    assert mean == 0.75 and low is not None and high is not None and low < 0.75 < high


def test_an_lm_judge_runs_on_the_same_runner(store: Store, tmp_path: Path) -> None:
    judge = tmp_path / "judge.yaml"
    judge.write_text("""\
stepbridge: 1
name: judge
signature: "answer, gold_answer -> correct: bool"
modules:
  j: {type: predict, signature: "answer, gold_answer -> correct: bool"}
steps:
  - call: j
    with: {answer: $inputs.answer, gold_answer: $inputs.gold_answer}
    as: r
  - return: {correct: $r.correct}
""")
    prog = load_program(PROGRAM)
    result = stepbridge.evaluate(prog, from_rows(qa_rows(3), program=prog), str(judge), store=store)
    # the reference LM says True to every verdict it is asked for; what matters is that each row was judged
    # by a recorded run of the judge with the prediction and the label
    assert result.errors == 0 and result.score == 1.0
    assert result.metric == f"judge:{load_program(judge).content_hash}"  # kept in the store: a resume needs no file
    assert store.resolve(result.metric.removeprefix("judge:")).name == "judge"
    judged = [e for e in store.list_executions(limit=None) if e.program_name == "judge"]
    assert sorted((e.inputs["answer"], e.inputs["gold_answer"]) for e in judged) == [
        ("question-000", "wrong"), ("question-001", "question-001"), ("question-002", "question-002")]
    assert {e.backend for e in judged} == {"native"}


@pytest.mark.slow
def test_rows_fan_out_over_the_pool_with_the_same_results(tmp_path: Path) -> None:
    prog = load_program(PROGRAM)
    data = from_rows(qa_rows(24), program=prog)
    native = stepbridge.evaluate(prog, data, "exact_match")
    with Store(f"sqlite:///{tmp_path / 'pool.db'}") as store:
        pooled = stepbridge.evaluate(prog, data, "exact_match", backend="pool", store=store, workers=2,
                                     concurrency=8)
        assert pooled.backend == "pool"
        workers = {e.worker for e in store.list_executions(limit=None)}
    assert [(r.position, r.prediction, r.score) for r in pooled.rows] == \
        [(r.position, r.prediction, r.score) for r in native.rows]
    assert pooled.score == native.score and pooled.dataset_hash == native.dataset_hash
    assert len(workers - {None}) >= 1


def test_a_stored_metric_is_a_name_or_a_stored_judge_never_a_path(store: Store, tmp_path: Path) -> None:
    """Stored rows are untrusted: resuming an evaluation whose metric column was changed to a path (or to
    anything but a registered name or judge:HASH) is refused before anything runs."""
    from sqlalchemy import update
    from stepbridge.evaluation import resume
    from stepbridge.storage.evaluations import evaluations_t

    prog = load_program(PROGRAM)
    result = stepbridge.evaluate(prog, from_rows(qa_rows(3), program=prog), "exact_match", store=store)
    for hostile in (str(tmp_path / "judge.yaml"), "../judge.yaml", "os:system", "judge:" + "0" * 64):
        with store.engine.begin() as conn:
            conn.execute(update(evaluations_t).where(evaluations_t.c.id == result.id).values(metric=hostile,
                                                                                            status="running"))
        with pytest.raises(stepbridge.StepbridgeError):
            resume(store, result.id)  # type: ignore[arg-type]
