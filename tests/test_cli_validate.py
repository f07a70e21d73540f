"""`stepbridge validate` and `stepbridge schema`, run as the real console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from stepbridge.loader import load_program

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RAG = (EXAMPLES / "rag_qa.yaml").read_text()
SCRIPT = shutil.which("stepbridge", path=str(Path(sys.executable).parent)) or shutil.which("stepbridge")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert SCRIPT, "the stepbridge console script is not installed"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


@pytest.fixture
def typo_file(tmp_path: Path) -> Path:
    (tmp_path / "data").symlink_to(EXAMPLES / "data")
    path = tmp_path / "typo.yaml"
    path.write_text(RAG.replace("context: $found.passages", "context: $fond.passages"))
    return path


def test_typo_prints_pointer_line_and_suggestion_and_exits_2(typo_file: Path) -> None:
    proc = run("validate", str(typo_file))
    assert proc.returncode == 2, proc.stderr
    out = " ".join((proc.stdout + proc.stderr).split())  # undo any line wrapping
    line = next(n for n, t in enumerate(typo_file.read_text().splitlines(), 1) if "$fond" in t)
    assert f"/steps/1/with/context (line {line}): unknown reference $fond.passages (did you mean $found?)" in out
    assert "invalid program: 1 problem" in out


def test_json_output_parses_and_carries_the_issues(typo_file: Path) -> None:
    proc = run("validate", "--json", str(typo_file))
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert report["error"]["type"] == "ProgramValidationError"
    errors = [i for i in report["error"]["details"]["issues"] if i["severity"] == "error"]
    assert [(i["pointer"], i["suggestion"]) for i in errors] == [("/steps/1/with/context", "$found")]


def test_valid_file_exits_0_with_its_hash() -> None:
    expected = load_program(EXAMPLES / "rag_qa.yaml").content_hash
    proc = run("validate", str(EXAMPLES / "rag_qa.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout and "rag_qa" in proc.stdout and expected in proc.stdout
    proc = run("validate", "--json", str(EXAMPLES / "multihop.yaml"))
    assert proc.returncode == 0
    report = json.loads(proc.stdout)
    assert report == {"ok": True, "name": "multihop", "hash": load_program(EXAMPLES / "multihop.yaml").content_hash,
                      "issues": []}


def test_hostile_file_exits_2_quickly(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text("a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n")
    proc = run("validate", "--json", str(path))
    assert proc.returncode == 2
    issue = json.loads(proc.stdout)["error"]["details"]["issues"][0]
    assert "aliases" in issue["message"] and issue["line"] == 2


def test_missing_file_exits_2(tmp_path: Path) -> None:
    proc = run("validate", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2
    assert "cannot read program file" in proc.stderr


def test_schema_prints_a_json_schema_that_accepts_the_examples() -> None:
    proc = run("schema")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in sorted(EXAMPLES.glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**yaml.safe_load(RAG), "lm": {"base_url": "http://evil"}}, schema)
