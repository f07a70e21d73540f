"""The eval/optimize command line after an attacker's review (issue 13's leftovers), through the CLI's own
``main`` (tests/sb_cli.py; each test also through a real ``stepbridge`` process where that is what it is
about), with storage on SQLite and PostgreSQL:

- ``--metric NAME:FIELD`` with a field no row has failed every row (exit 1): refused up front, did you mean;
- ``--metric /etc/shadow`` echoed the file's lines in its error: a metric name never reads a file, and a
  judge file that is not a program is refused without quoting it;
- one malformed stored evaluation made ``evals list`` fail: the rest are listed, the bad one marked;
- ``--timeout -1``/``nan``, ``--metric-threshold nan``, ``--max-errors 10**23`` were accepted;
- an empty training set published a version, an empty ``eval`` exited 0;
- usage errors and some ``import-dspy`` errors were text under ``--json``;
- a FIFO as ``--data`` blocked the command;
- evaluating or optimizing a file published it as a version of its name (file runs do not).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import stepbridge
from hypothesis import given, settings
from hypothesis import strategies as st
from sb_cli import run_cli
from sb_evals import PROGRAM, qa_rows, stepbridge_cli, write_jsonl
from stepbridge.datasets import from_rows
from stepbridge.errors import InputValidationError
from stepbridge.evaluation import JUDGE_SUFFIXES, resolve_metric
from stepbridge.loader import load_program
from stepbridge.storage import Store

SECRET = "s3cret-token-4242"


def cli(db_url: str, *args: str, real: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``stepbridge ARGS`` on ``db_url``: in this process, or (``real``) in a ``stepbridge`` process of its own."""
    env = {"STEPBRIDGE_DATABASE_URL": db_url, "COLUMNS": "250"}
    if not real:
        return run_cli(*args, env=env)
    return subprocess.run([*stepbridge_cli(), *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


def json_error(done: subprocess.CompletedProcess[str], code: int = 2) -> dict[str, Any]:
    assert done.returncode == code, done.stdout + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    error: dict[str, Any] = json.loads(done.stdout)["error"]
    return error


def nothing_stored(db_url: str) -> None:
    """No evaluation, optimization or published version was left behind."""
    assert json.loads(cli(db_url, "evals", "list", "--json").stdout) == []
    assert json.loads(cli(db_url, "optimizations", "list", "--json").stdout) == []
    with Store(db_url) as store:
        assert store.list_programs() == []


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    program = tmp_path / "qa.yaml"
    program.write_text(PROGRAM)
    return {"program": program, "data": write_jsonl(tmp_path / "data.jsonl", qa_rows(4)),
            "empty": write_jsonl(tmp_path / "empty.jsonl", [])}


def test_an_unknown_metric_field_is_refused_before_anything_runs(db_url: str, files: dict[str, Path]) -> None:
    p, data = str(files["program"]), str(files["data"])
    for command in (["eval", p, "--data", data], ["optimize", p, "--optimizer", "bootstrap", "--train", data]):
        error = json_error(cli(db_url, *command, "--metric", "exact_match:answr", "--json"))
        assert error["type"] == "InputValidationError"
        assert "no field 'answr'" in error["message"] and "did you mean 'answer'?" in error["message"]
        error = json_error(cli(db_url, *command, "--metric", "exact_matc", "--json"))
        assert "did you mean 'exact_match'?" in error["message"]
    nothing_stored(db_url)
    # the field every built-in defaults to is checked the same way: a program without an `answer` output
    other = files["program"].with_name("reply.yaml")
    other.write_text(PROGRAM.replace("-> answer", "-> reply").replace("{answer: $r.answer}", "{reply: $r.reply}"))
    error = json_error(cli(db_url, "eval", str(other), "--data", data, "--metric", "exact_match", "--json"))
    assert "the prediction has no field 'answer' (fields: reply)" in error["message"]


def test_a_metric_never_reads_or_echoes_a_file(db_url: str, files: dict[str, Path], tmp_path: Path) -> None:
    p, data = str(files["program"]), str(files["data"])
    plain = tmp_path / "shadow"
    plain.write_text(f"root: {SECRET}\ndaemon: {SECRET}\n")
    as_yaml = tmp_path / "shadow.yaml"
    as_yaml.write_text(f"root: {SECRET}\n{SECRET}: x\n")
    fifo = tmp_path / "judge.yaml"
    os.mkfifo(fifo)  # a judge file that is a pipe would block: refused unread
    for metric in (str(plain), "/etc/shadow", "../shadow", str(as_yaml), str(fifo), "exact_match:a/b"):
        done = cli(db_url, "eval", p, "--data", data, "--metric", metric, "--json", real=metric == str(fifo),
                   timeout=60)
        error = json_error(done)
        assert SECRET not in done.stdout + done.stderr and "root:" not in error["message"], error
        assert error["type"] == "InputValidationError"
    nothing_stored(db_url)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_resolving_a_metric_spec_reads_a_file_only_for_a_judge_suffix(spec: str) -> None:
    """Any text is a metric, or an InputValidationError; only a judge suffix is looked up as a file."""
    try:
        metric = resolve_metric(spec)
    except InputValidationError as exc:
        if not spec.lower().endswith(JUDGE_SUFFIXES):
            assert "judge program" not in str(exc) or "neither" in str(exc)
        return
    assert metric.judge is None and metric.spec == spec


def _tamper(db_url: str, statement: str, **params: Any) -> None:
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(statement), params)
    finally:
        engine.dispose()


def test_one_malformed_stored_row_does_not_hide_the_others(db_url: str) -> None:
    program = load_program(PROGRAM)
    dataset = from_rows(qa_rows(3), program=program)
    with Store(db_url) as store:
        ids = [stepbridge.evaluate(program, dataset, "exact_match", store=store).id for _ in range(3)]
        opts = [stepbridge.optimize(program, dataset, "exact_match", optimizer="labeled", store=store).id
                for _ in range(2)]
    bad, bad_opt = str(ids[1]), str(opts[0])
    _tamper(db_url, "UPDATE evaluations SET status = :s WHERE id = :id", s="[bold]pwned[/]", id=bad)
    _tamper(db_url, "UPDATE optimizations SET status = :s WHERE id = :id", s="[/]", id=bad_opt)
    listed = cli(db_url, "evals", "list", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    entries = {e["id"]: e for e in json.loads(listed.stdout)}
    assert set(entries) == set(ids)
    assert entries[bad]["malformed"] is True and entries[bad]["error"]["type"] == "StorageError"
    assert all("malformed" not in entries[i] for i in ids if i != bad)
    text = cli(db_url, "evals", "list", real=True)
    assert text.returncode == 0 and "malformed" in text.stdout and "Traceback" not in text.stderr, text.stderr
    assert f"refused {bad}" in text.stderr and "pwned" not in text.stdout
    listed = cli(db_url, "optimizations", "list", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    entries = {e["id"]: e for e in json.loads(listed.stdout)}
    assert set(entries) == set(opts) and entries[bad_opt]["malformed"] is True
    text = cli(db_url, "optimizations", "list")
    assert text.returncode == 0 and "malformed" in text.stdout and "Traceback" not in text.stderr, text.stderr
    # the bad one itself is still a typed error when asked for
    assert json_error(cli(db_url, "evals", "show", bad, "--json"), 1)["type"] == "StorageError"


def test_a_tampered_checkpoint_or_candidate_is_refused_on_resume(db_url: str) -> None:
    program = load_program(PROGRAM)
    with Store(db_url) as store:
        oid = str(stepbridge.optimize(program, from_rows(qa_rows(4), program=program), "exact_match",
                                      optimizer="random_search", settings={"num_candidates": 1}, store=store).id)
    cast = "CAST(:v AS JSONB)" if db_url.startswith("postgresql") else ":v"
    reopen = "status = 'running', result_hash = NULL"
    for column, value in (("checkpoint", {"bootstrap": {"next": "x"}}),
                          ("checkpoint", {"bootstrap": {"next": 0, "bootstrapped": [], "errors": 0, "attempts": 0,
                                                        "traces": {"nope": []}}}),
                          ("checkpoint", {"../../etc": {}}),
                          # indexes the loop never writes (it appends each example's index once, in order, below
                          # next): a million of them made the demos' fill-up a set per training row
                          ("checkpoint", {"bootstrap": {"next": 1, "bootstrapped": [5, 5], "errors": 0,
                                                        "attempts": 0, "traces": {"answer": []}}})):
        _tamper(db_url, f"UPDATE optimizations SET {column} = {cast}, {reopen} WHERE id = :id",
                v=json.dumps(value), id=oid)
        error = json_error(cli(db_url, "optimizations", "resume", oid, "--json", real="../../etc" in value), 1)
        assert error["type"] == "StorageError" and "malformed" in error["message"], error
    _tamper(db_url, f"UPDATE optimizations SET checkpoint = NULL, {reopen} WHERE id = :id", id=oid)
    _tamper(db_url, f"UPDATE optimization_candidates SET modules = {cast} WHERE optimization_id = :id AND seq = 0",
            v=json.dumps({"not_a_module": [{"question": "q"}]}), id=oid)
    error = json_error(cli(db_url, "optimizations", "resume", oid, "--json"), 1)
    assert error["type"] == "StorageError" and "candidate 0" in error["message"], error
    _tamper(db_url, f"UPDATE optimization_candidates SET modules = {cast} WHERE optimization_id = :id AND seq = 0",
            v=json.dumps({"answer": "not a list"}), id=oid)
    assert json_error(cli(db_url, "optimizations", "show", oid, "--json"), 1)["type"] == "StorageError"


@pytest.mark.parametrize("args", [
    ["eval", "--timeout", "-1"], ["eval", "--timeout", "nan"], ["eval", "--timeout", "inf"],
    ["eval", "--timeout", "0"], ["optimize", "--metric-threshold", "nan"],
    ["optimize", "--metric-threshold", "-inf"], ["optimize", "--max-errors", str(10**23)],
    ["optimize", "--max-errors", "0"], ["eval", "--concurrency", "0"],
])
def test_numbers_out_of_range_are_refused(db_url: str, files: dict[str, Path], args: list[str]) -> None:
    command, *flags = args
    where = ["--data", str(files["data"])] if command == "eval" else \
        ["--optimizer", "labeled", "--train", str(files["data"])]
    error = json_error(cli(db_url, command, str(files["program"]), *where, "--metric", "exact_match", *flags,
                           "--json"))
    assert error["type"] in ("InputValidationError", "UsageError")
    assert flags[0].lstrip("-").replace("-", "_") in json.dumps(error).replace("-", "_"), error
    nothing_stored(db_url)


def test_empty_data_is_refused_and_nothing_is_published(db_url: str, files: dict[str, Path]) -> None:
    p, data, empty = str(files["program"]), str(files["data"]), str(files["empty"])
    error = json_error(cli(db_url, "eval", p, "--data", empty, "--metric", "exact_match", "--json", real=True))
    assert "has no rows" in error["message"]
    for where in (["--train", empty], ["--train", data, "--val", empty]):
        error = json_error(cli(db_url, "optimize", p, "--optimizer", "labeled", *where, "--metric", "exact_match",
                               "--json"))
        assert "has no rows" in error["message"]
    nothing_stored(db_url)


def test_a_fifo_as_data_is_refused_without_blocking(db_url: str, files: dict[str, Path], tmp_path: Path) -> None:
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    for command in (["eval", str(files["program"]), "--data", str(fifo)],
                    ["optimize", str(files["program"]), "--optimizer", "labeled", "--train", str(fifo)]):
        error = json_error(cli(db_url, *command, "--metric", "exact_match", "--json", real=True, timeout=60))
        assert "a pipe, not a regular file" in error["message"]
    nothing_stored(db_url)


@pytest.mark.parametrize("args", [
    ["eval", "qa.yaml", "--metric", "exact_match"],            # a missing --data
    ["evals", "list", "--limit", "0"], ["evals", "list", "--bogus"], ["evals", "show"],
    ["optimizations", "resume"], ["optimize", "qa.yaml", "--optimizer", "bootstrap", "--train", "x.jsonl"],
    ["run", "qa.yaml", "--concurrency", "-3"], ["executions", "list", "--limit", "x"], ["import-dspy", "a:b"],
])
def test_usage_errors_are_json_under_json(tmp_path: Path, args: list[str]) -> None:
    error = json_error(cli(f"sqlite:///{tmp_path / 's.db'}", *args, "--json"))
    assert error["type"] == "UsageError" and error["message"], error


@pytest.mark.slow  # many CLI processes: run in CI with -m 'slow or not slow'
def test_every_import_dspy_error_is_json_under_json(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text("import dspy\nX = 1\n\n\ndef make():\n"
                                     "    return dspy.Predict('question -> answer')\n")
    samples = tmp_path / "samples.jsonl"
    samples.write_text("[1]\n")
    out = str(tmp_path / "out.yaml")
    cases = [(["nomodule"], "expected MODULE:ATTR"), (["no_such_module_xyz:Thing"], "cannot load"),
             (["mod:X"], "is not a dspy.Module"),
             (["mod:make", "--state", str(tmp_path / "missing.json")], "No such file"),
             (["mod:make", "--sample-inputs", str(samples)], "must be a JSON object")]
    for args, expected in cases:
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        done = subprocess.run([*stepbridge_cli(), "import-dspy", *args, "-o", out, "--json"], env=env,
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        error = json_error(done)
        assert expected in error["message"], (args, error)


def test_evaluating_or_optimizing_a_file_publishes_only_the_result(db_url: str, files: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    """As a file's runs: recorded against the content hash, not a version of its name (issue 15). An
    optimization still publishes its result, whose parent is the file's content."""
    p, data = str(files["program"]), str(files["data"])
    judge = tmp_path / "judge.yaml"
    judge.write_text(PROGRAM.replace("name: qa", "name: judge").replace("question -> answer", "question, answer -> "
                                                                        "correct: bool")
                     .replace("{question: $inputs.question}", "{question: $inputs.question, answer: $inputs.answer}")
                     .replace("{answer: $r.answer}", "{correct: $r.correct}"))
    done = cli(db_url, "eval", p, "--data", data, "--metric", str(judge), "--json")
    assert done.returncode in (0, 1), done.stderr[-2000:]
    evaluation = json.loads(done.stdout)
    with Store(db_url) as store:
        assert store.list_programs() == []  # neither the program nor its judge became a version
        assert store.load(evaluation["program_hash"]).name == "qa"  # but both are stored by hash
        assert store.load(evaluation["metric"].removeprefix("judge:")).name == "judge"
    _tamper(db_url, "UPDATE evaluation_rows SET done = :f, score = NULL WHERE evaluation_id = :id", f=False,
            id=evaluation["id"])
    resumed = cli(db_url, "evals", "resume", evaluation["id"], "--json")
    assert resumed.returncode in (0, 1) and json.loads(resumed.stdout)["n"] == 4, resumed.stderr[-2000:]
    done = cli(db_url, "optimize", p, "--optimizer", "labeled", "--train", data, "--metric", "exact_match", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["program"] == "qa@1" and result["parent"] == evaluation["program_hash"]
    history = json.loads(cli(db_url, "programs", "history", "qa", "--json").stdout)
    assert [v["hash"] for v in history] == [result["hash"]]


def test_an_optimization_that_changes_nothing_is_not_its_own_parent(db_url: str) -> None:
    """Zero demos: the result is the original. Stored unpublished by hash first, it was then published with
    itself as its parent (a lineage cycle)."""
    program = load_program(PROGRAM)
    with Store(db_url) as store:
        result = stepbridge.optimize(program, from_rows(qa_rows(3), program=program), "exact_match",
                                     optimizer="labeled", settings={"max_labeled_demos": 0}, store=store)
        assert result.hash == program.content_hash and result.program == "qa@1"
        assert store.resolve(result.hash).parent is None


def test_hostile_field_names_print_as_written(tmp_path: Path) -> None:
    """Dataset field names are shown by `evals show`: rich markup in them ('[/]') ended it in a MarkupError."""
    db_url = f"sqlite:///{tmp_path / 's.db'}"
    program = tmp_path / "qa.yaml"
    program.write_text(PROGRAM)
    data = write_jsonl(tmp_path / "h.jsonl", [{"question": "[/]q", "answer": "a", "[/]": "x", "[bold]y": 1}])
    done = cli(db_url, "eval", str(program), "--data", str(data), "--metric", "exact_match", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    shown = cli(db_url, "evals", "show", json.loads(done.stdout)["id"], real=True)
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr[-2000:]
    assert "[/], [bold]y" in shown.stdout


def test_what_would_fail_once_recorded_is_refused_before(db_url: str, files: dict[str, Path]) -> None:
    """An optimization of a program without predictors (or with an unlike teacher) was recorded, then failed
    outside the try that marks it failed: it stayed `running` for ever. `--inputs ""` ran every row without
    the program's inputs."""
    react = Path(__file__).parents[2] / "examples" / "react_agent.yaml"
    p, data = str(files["program"]), str(files["data"])
    for real, args in ((True, ["optimize", str(react), "--optimizer", "bootstrap", "--train", data]),
                       (False, ["optimize", p, "--optimizer", "bootstrap", "--teacher", str(react), "--train", data])):
        error = json_error(cli(db_url, *args, "--metric", "exact_match", "--json", real=real), 1)
        assert error["type"] == "UnsupportedCapabilityError", error
    error = json_error(cli(db_url, "eval", p, "--data", data, "--metric", "exact_match", "--inputs", "", "--json"))
    assert "needs the input(s) question" in error["message"]
    nothing_stored(db_url)


@pytest.mark.parametrize(("args", "kind", "code"), [
    (["executions", "show", "abc"], "ConfigurationError", 2), (["executions", "show", "abcdef12"],
                                                               "ExecutionNotFound", 1),
    (["programs", "history", "nope"], "ProgramNotFound", 1), (["executions", "list", "--status", "faild"],
                                                              "ConfigurationError", 2),
    (["programs", "alias", "x", "y"], "InputValidationError", 2), (["batches", "show", "abcdef12"], "StorageError", 1),
    (["pool", "status", "--pool", "ipc:///nonexistent/stepbridge.sock"], "ConfigurationError", 1),
])
def test_command_errors_are_json_under_json(tmp_path: Path, args: list[str], kind: str, code: int) -> None:
    """These printed text (and exit codes) whatever --json said."""
    error = json_error(cli(f"sqlite:///{tmp_path / 's.db'}", *args, "--json"), code)
    assert error["type"] == kind, error
