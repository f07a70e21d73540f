"""Tampered evaluation and optimization rows (review of issue 9 against the evaluation features): a stored
row is untrusted, so a negative count, a string where a list belongs, a list where an example belongs, a
NaN score, negative tokens or a huge setting is a StorageError naming the row, exit 1 with a JSON error on
``--json``; before, each was a pydantic traceback (9 of 9 tamperings, on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import stepbridge
from sb_evals import PROGRAM, qa_rows, stepbridge_cli
from stepbridge.datasets import from_rows
from stepbridge.errors import StorageError
from stepbridge.loader import load_program
from stepbridge.storage import Store
from stepbridge.storage.evaluations import Evaluations
from stepbridge.storage.optimizations import Optimizations

# (table, column, value, JSON column?) — each one is enough to make the row refused
TAMPERED: dict[str, tuple[str, str, Any, bool]] = {
    "negative_summary_counts": ("evaluations", "summary", {"n": -5, "scored": -1, "errors": -3}, True),
    "fields_a_string": ("evaluations", "fields", {"inputs": "question", "labels": []}, True),
    "example_a_list": ("evaluation_rows", "example", [1], True),
    "score_nan": ("evaluation_rows", "score", "NaN", False),  # text: SQLite stores a float NaN as NULL
    "tokens_negative": ("evaluation_rows", "tokens", -99, False),
    "error_a_string": ("evaluation_rows", "error", "boom", True),
}


def _tamper(db_url: str, table: str, column: str, value: Any, is_json: bool, where: str, ident: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        cast = "CAST(:v AS JSONB)" if is_json and engine.dialect.name == "postgresql" else ":v"
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {table} SET {column} = {cast} WHERE {where} = :id"),
                         {"v": json.dumps(value) if is_json else value, "id": ident})
    finally:
        engine.dispose()


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STEPBRIDGE_DATABASE_URL": db_url}
    return subprocess.run([*stepbridge_cli(), *args, "--json"], env=env, capture_output=True, text=True,
                          timeout=120)


def _tampered_evaluation(db_url: str, case: str) -> str:
    program = load_program(PROGRAM)
    with Store(db_url) as store:
        result = stepbridge.evaluate(program, from_rows(qa_rows(4), program=program), "exact_match", store=store)
    table, column, value, is_json = TAMPERED[case]
    _tamper(db_url, table, column, value, is_json, "id" if table == "evaluations" else "evaluation_id",
            str(result.id))
    return str(result.id)


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_evaluation_is_a_storage_error(db_url: str, case: str) -> None:
    evaluation_id = _tampered_evaluation(db_url, case)
    with Store(db_url) as store, pytest.raises(StorageError, match=f"evaluation {evaluation_id} is malformed"):
        log = Evaluations(store)
        log.get(evaluation_id)
        log.rows(evaluation_id)


# The CLI turns every StorageError into exit 1 and a JSON error the same way: one tampering in the default run,
# every one in CI (two CLI processes each, seconds of CPU apiece).
@pytest.mark.parametrize("case", [c if c == "error_a_string" else pytest.param(c, marks=pytest.mark.slow)
                                  for c in sorted(TAMPERED)])
def test_the_cli_reports_a_tampered_evaluation_as_a_storage_error(db_url: str, case: str) -> None:
    evaluation_id = _tampered_evaluation(db_url, case)
    for command in (["evals", "show", evaluation_id], ["evals", "resume", evaluation_id]):
        done = _cli(db_url, *command)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        error = json.loads(done.stdout)["error"]
        assert error["type"] == "StorageError" and evaluation_id in error["message"]


def test_a_tampered_optimization_setting_is_a_storage_error(db_url: str, tmp_path: Path) -> None:
    """``max_rounds: 10**9`` written into a stored row: refused on read, not run a billion rounds."""
    program = load_program(PROGRAM)
    with Store(db_url) as store:
        result = stepbridge.optimize(program, from_rows(qa_rows(4), program=program), "exact_match",
                                     optimizer="labeled", store=store)
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            settings = conn.execute(sa.text("SELECT settings FROM optimizations WHERE id = :id"),
                                    {"id": result.id}).scalar_one()
            settings = json.loads(settings) if isinstance(settings, str) else settings
            settings["max_rounds"] = 10**9
            cast = "CAST(:v AS JSONB)" if engine.dialect.name == "postgresql" else ":v"
            conn.execute(sa.text(f"UPDATE optimizations SET settings = {cast}, status = 'running', "
                                 "result_hash = NULL WHERE id = :id"), {"v": json.dumps(settings), "id": result.id})
    finally:
        engine.dispose()
    with Store(db_url) as store, pytest.raises(StorageError, match=f"optimization {result.id} is malformed"):
        Optimizations(store).get(str(result.id))
    done = _cli(db_url, "optimizations", "resume", str(result.id))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert json.loads(done.stdout)["error"]["type"] == "StorageError"


def test_resume_refuses_training_rows_that_do_not_match_their_hash(db_url: str) -> None:
    """Rows swapped into a stored optimization were used silently: the published demos came from data
    whose hash differed from the row's recorded ``train_hash``."""
    from stepbridge.optimization import resume

    program = load_program(PROGRAM)
    with Store(db_url) as store:
        result = stepbridge.optimize(program, from_rows(qa_rows(4), program=program), "exact_match",
                                     optimizer="labeled", store=store)
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            data = conn.execute(sa.text("SELECT data FROM optimizations WHERE id = :id"),
                                {"id": result.id}).scalar_one()
            data = json.loads(data) if isinstance(data, str) else data
            data["train"] = [{"question": "INJECTED", "answer": "INJECTED"}] * 3
            cast = "CAST(:v AS JSONB)" if engine.dialect.name == "postgresql" else ":v"
            conn.execute(sa.text(f"UPDATE optimizations SET data = {cast}, status = 'running', result_hash = NULL "
                                 "WHERE id = :id"), {"v": json.dumps(data), "id": result.id})
    finally:
        engine.dispose()
    with Store(db_url) as store, pytest.raises(StorageError, match="do not match their recorded content hash"):
        resume(store, str(result.id))


def test_resume_never_scores_another_programs_run(db_url: str) -> None:
    """A row's execution id pointed at a run of another program: its outputs were recorded as this row's
    prediction (and scored, when the shapes matched)."""
    from stepbridge.evaluation import resume

    program = load_program(PROGRAM)
    other = load_program(PROGRAM.replace("name: qa", "name: other"))
    with Store(db_url) as store:
        result = stepbridge.evaluate(program, from_rows(qa_rows(3), program=program), "exact_match", store=store)
        foreign = stepbridge.run(other, {"question": "question-002"}, store=store).execution_id
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE evaluation_rows SET done = :f, prediction = NULL, score = NULL, "
                                 "execution_id = :x WHERE evaluation_id = :id AND position = 1"),
                         {"f": False, "x": foreign, "id": result.id})
    finally:
        engine.dispose()
    with Store(db_url) as store:
        resumed = resume(store, str(result.id))
        row = Evaluations(store).rows(str(result.id))[1]
    assert resumed.errors == 1 and row.prediction is None and row.score is None
    assert row.error is not None and "not a run of this program" in row.error["message"]
