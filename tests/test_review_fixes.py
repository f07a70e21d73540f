"""Regressions from review: hostile corpus paths, cancellation while recording, setup errors, CLI edges."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import stepbridge as sb
from stepbridge.errors import ProgramValidationError, UnsupportedCapabilityError
from stepbridge.program import RetrieverSpec
from stepbridge.retrieve import make_retriever

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def retrieval_program(corpus: str) -> dict[str, Any]:
    return {"stepbridge": 1, "name": "r", "signature": "question -> passages: list[str]",
            "modules": {"s": {"type": "retrieve", "retriever": {"kind": "bm25", "corpus": corpus}}},
            "steps": [{"call": "s", "with": {"query": "$inputs.question"}, "as": "f"},
                      {"return": {"passages": "$f.passages"}}]}


@pytest.mark.parametrize("corpus", ["/etc/passwd", "../../../../etc/passwd", "data/../../x.jsonl", "C:/x.txt"])
def test_a_program_cannot_name_a_corpus_outside_its_folder(corpus: str) -> None:
    with pytest.raises(ProgramValidationError) as info:
        sb.load_program(retrieval_program(corpus))
    assert info.value.issues[0].pointer == "/modules/s/retriever/corpus"


def test_symlinks_out_of_the_folder_are_refused_at_run_time(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret plan\n")
    folder = tmp_path / "prog"
    folder.mkdir()
    (folder / "corpus.txt").symlink_to(secret)
    with pytest.raises(ValueError, match="outside the program's folder"):
        make_retriever(RetrieverSpec(kind="bm25", corpus="corpus.txt"), folder)


def test_same_content_beside_different_corpora_runs_on_its_own_corpus(tmp_path: Path) -> None:
    outputs = []
    async def go() -> None:
        async with sb.Runner("native") as runner:
            for word in ("alpha", "beta"):
                folder = tmp_path / word
                folder.mkdir()
                (folder / "c.txt").write_text(f"{word} corpus line\n")
                program = sb.load_program(retrieval_program("c.txt"), base_dir=folder)
                outputs.append((await runner.run(program, {"question": "corpus"})).outputs["passages"])

    asyncio.run(go())
    assert outputs == [["alpha corpus line"], ["beta corpus line"]]


def test_adapter_setup_errors_are_typed() -> None:
    with pytest.raises(UnsupportedCapabilityError, match="cannot load adapter 'os:system'"):
        sb.load_adapter("os:system")
    with pytest.raises(UnsupportedCapabilityError, match="did not give an adapter"):
        sb.load_adapter("json:JSONDecoder")
    with pytest.raises(UnsupportedCapabilityError, match="no adapter registered as 'nope'"):
        sb.load_adapter("nope")


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STEPBRIDGE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "stepbridge.cli", *args], capture_output=True, text=True,
                          env=env, timeout=180)


def test_cli_prints_lm_text_as_written_and_stored_programs_run_unrecorded(tmp_path: Path) -> None:
    echo = tmp_path / "echo.yaml"
    echo.write_text("stepbridge: 1\nname: echo\nsignature: 'question -> answer'\n"
                    "modules:\n  a: {type: predict, signature: 'question -> answer'}\n"
                    "steps:\n  - {call: a, with: {question: $inputs.question}, as: r}\n"
                    "  - return: {answer: $r.answer}\n")
    text = "[/bold] closing :x: [red]"
    done = cli("run", str(echo), "-i", f"question={text}", "--no-record", home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert text in done.stdout  # the reference LM echoes the question: markup and emoji codes untouched
    assert cli("programs", "add", str(echo), "--alias", "prod", home=tmp_path).returncode == 0
    stored = cli("run", "echo@prod", "-i", "question=hi", "--no-record", "--json", home=tmp_path)
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout)["outputs"]["answer"]


def test_bad_batch_lines_are_failed_rows_not_a_stopped_batch(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"ticket": "refund"}\n[1]\nnot json\n{"ticket": "crash"}\n')
    done = cli("run", str(EXAMPLES / "classify.yaml"), "--inputs", str(rows), "--json", home=tmp_path)
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
               "--no-record", home=tmp_path)
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
