"""``stepbridge run``: single runs, batches, exit codes, --json, --out. Each test runs its command in a real
process; what it reads back afterwards, and the variations of one command, go through the CLI's ``main`` in
this process (tests/sb_cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sb_cli import run_cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def cli(*args: str, home: Path, real: bool = False) -> subprocess.CompletedProcess[str]:
    """``stepbridge ARGS`` with its home in ``home``: in this process, or (``real``) in a process of its own."""
    env = {"STEPBRIDGE_HOME": str(home), "CI": "true"}
    if not real:
        return run_cli(*args, env=env)
    return subprocess.run([sys.executable, "-m", "stepbridge.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=180)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_single_run_prints_the_answer_and_records_it(home: Path) -> None:
    done = cli("run", str(EXAMPLES / "rag_qa.yaml"), "-i", "question=Who created Python?", "--json", home=home,
               real=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "Guido" in result["outputs"]["answer"]
    assert result["backend"] == "native" and len(result["trace"]) == 3
    listed = cli("executions", "list", "--json", home=home)
    assert result["execution_id"] in listed.stdout


def test_typed_inputs_are_json_and_bad_ones_exit_2(home: Path, tmp_path: Path) -> None:
    program = tmp_path / "count.yaml"
    program.write_text(
        "stepbridge: 1\nname: count\nsignature: 'words: list[str] -> n: int'\n"
        "modules:\n  c: {type: predict, signature: 'words: list[str] -> n: int'}\n"
        "steps:\n  - {call: c, with: {words: $inputs.words}, as: r}\n  - return: {n: $r.n}\n"
    )
    ok = cli("run", str(program), "-i", 'words=["a", "b"]', "--json", "--no-record", home=home, real=True)
    assert ok.returncode == 0, ok.stderr
    assert isinstance(json.loads(ok.stdout)["outputs"]["n"], int)
    bad = cli("run", str(program), "-i", "words=not json", "--no-record", home=home)
    assert bad.returncode == 2 and "give it as JSON" in bad.stderr
    missing = cli("run", str(program), "--no-record", home=home)
    assert missing.returncode == 2 and "missing input 'words'" in missing.stderr


def test_invalid_program_exits_2_with_pointer(home: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text((EXAMPLES / "rag_qa.yaml").read_text().replace("$found.passages", "$fond.passages"))
    done = cli("run", str(broken), "-i", "question=x", home=home, real=True)
    assert done.returncode == 2
    assert "/steps/1/with/context" in done.stderr and "did you mean $found?" in done.stderr


def test_batch_keeps_going_writes_out_and_exits_1_on_failures(home: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"ticket": "refund my invoice"}\n{"ticket": 7}\n{"ticket": "the app crashes"}\n')
    out = tmp_path / "out.jsonl"
    done = cli("run", str(EXAMPLES / "classify.yaml"), "--inputs", str(rows), "--out", str(out), "--json",
               home=home, real=True)
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)["summary"]
    batch_id = summary.pop("batch_id")
    assert summary == {"total": 3, "succeeded": 2, "failed": 1}
    listed_batches = json.loads(cli("batches", "list", "--json", home=home).stdout)
    assert [(b["id"], b["size"], b["counts"], b["done"]) for b in listed_batches] == [
        (batch_id, 3, {"failed": 1, "succeeded": 2}, True)]
    written = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["index"])
    assert [("error" in r) for r in written] == [False, True, False]
    assert written[1]["error"]["type"] == "InputValidationError"
    # every row, including the refused one, ends in exactly one recorded state
    listed = json.loads(cli("executions", "list", "--json", home=home).stdout)
    executions = listed if isinstance(listed, list) else listed["executions"]
    assert sorted(e["status"] for e in executions) == ["failed", "succeeded", "succeeded"]


def test_lm_failure_exits_1_with_typed_error(home: Path) -> None:
    done = cli("run", str(EXAMPLES / "classify.yaml"), "-i", "ticket=hi", "--lm", "reference/garbage",
               "--json", "--no-record", home=home, real=True)
    # 'reference/garbage' names a model on the (in-process) reference LM: it answers unparseable text
    assert done.returncode == 1, done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["type"] == "StepError" and error["details"]["cause"]["type"] == "LMParseError"


def test_cli_prints_lm_text_as_written_and_stored_programs_run_unrecorded(tmp_path: Path) -> None:
    echo = tmp_path / "echo.yaml"
    echo.write_text("stepbridge: 1\nname: echo\nsignature: 'question -> answer'\n"
                    "modules:\n  a: {type: predict, signature: 'question -> answer'}\n"
                    "steps:\n  - {call: a, with: {question: $inputs.question}, as: r}\n"
                    "  - return: {answer: $r.answer}\n")
    text = "[/bold] closing :x: [red]"
    done = cli("run", str(echo), "-i", f"question={text}", "--no-record", home=tmp_path, real=True)
    assert done.returncode == 0, done.stderr
    assert text in done.stdout  # the reference LM echoes the question: markup and emoji codes untouched
    assert cli("programs", "add", str(echo), "--alias", "prod", home=tmp_path).returncode == 0
    stored = cli("run", "echo@prod", "-i", "question=hi", "--no-record", "--json", home=tmp_path)
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout)["outputs"]["answer"]


def test_bad_batch_lines_are_failed_rows_not_a_stopped_batch(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"ticket": "refund"}\n[1]\nnot json\n{"ticket": "crash"}\n')
    done = cli("run", str(EXAMPLES / "classify.yaml"), "--inputs", str(rows), "--json", home=tmp_path, real=True)
    assert done.returncode == 1
    summary = json.loads(done.stdout)["summary"]
    batch_id = summary.pop("batch_id")
    assert summary == {"total": 4, "succeeded": 2, "failed": 2}
    shown = json.loads(cli("batches", "show", batch_id, "--json", home=tmp_path).stdout)
    assert [(r["index"], r["status"]) for r in shown["results"]] == [
        (0, "succeeded"), (1, "failed"), (2, "failed"), (3, "succeeded")]
    listed = json.loads(cli("executions", "list", "--json", home=tmp_path).stdout)
    executions = listed if isinstance(listed, list) else listed["executions"]
    assert sorted(e["status"] for e in executions) == ["failed", "failed", "succeeded", "succeeded"]


def test_a_model_without_an_endpoint_is_answered_by_the_reference_lm_visibly(tmp_path: Path) -> None:
    done = cli("run", str(EXAMPLES / "classify.yaml"), "-i", "ticket=x", "--lm", "openai/gpt-4o", "--json",
               "--no-record", home=tmp_path, real=True)
    assert done.returncode == 0, done.stderr
    assert "answered by the built-in reference LM" in done.stderr
    assert json.loads(done.stdout)["trace"][0]["lm_calls"][0]["model"] == "reference/deterministic"


def test_sigterm_records_the_run_in_flight_as_cancelled(tmp_path: Path) -> None:
    import signal
    import time

    env = {**os.environ, "STEPBRIDGE_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "stepbridge.cli", "run", str(EXAMPLES / "classify.yaml"),
                             "-i", "ticket=x", "--lm", "reference/slow-20000"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from stepbridge.storage import Store

    store = Store(f"sqlite:///{tmp_path}/stepbridge.db")
    deadline = time.monotonic() + 60
    while not store.list_executions(status="running") and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert [e.status for e in store.list_executions()] == ["cancelled"]
    store.close()


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_a_timeout_that_is_not_a_positive_number_is_refused_before_anything_runs(home: Path, value: str) -> None:
    done = cli("run", str(EXAMPLES / "rag_qa.yaml"), "-i", "question=Who created Python?", "--timeout", value,
               "--json", home=home, real=value == "-1")
    assert done.returncode == 2, done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["type"] == "ConfigurationError" and "--timeout" in error["message"]
    listed = cli("executions", "list", "--json", home=home)
    assert json.loads(listed.stdout) == []  # nothing was recorded
