"""Issue 9 item 5: bounded work for bad input. Each hostile input is a typed error (exit 2 on the real
command line, never a traceback); how fast is measured in bench/bench_hostile.py, never asserted here.
A hostile file meets each command once in a real process and again through the CLI's ``main`` in this one
(tests/sb_cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sb_cli import run_cli
from sb_security import worker_env
from sqlalchemy import text
from stepbridge import ProgramValidationError, StorageError, load_program
from stepbridge.storage import Store

CLI = [sys.executable, "-c", "from stepbridge.cli import main; main()"]
HEADER = "stepbridge: 1\nname: big\nsignature: 'question -> answer'\n"
RETURN = "steps:\n  - return: {answer: $inputs.question}\n"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=worker_env(env))


def many_unknown_names(modules: int) -> str:
    """The issue's slow file: many modules, every step calling a misspelt one."""
    lines = [HEADER + "modules:"]
    lines += [f"  module_{i:012d}: {{type: predict, signature: 'question -> answer'}}" for i in range(modules)]
    lines.append("steps:")
    lines += [f"  - {{call: modul_{i:012d}x, with: {{question: $inputs.question}}, as: r{i}}}" for i in range(modules)]
    lines.append("  - return: {answer: $r0.answer}")
    return "\n".join(lines) + "\n"


HOSTILE_FILES = {
    "hex.yaml": HEADER + "lm: {max_tokens: 0x" + "f" * 5000 + "}\n" + RETURN,
    "binary.yaml": HEADER + "lm: {max_tokens: 0b" + "1" * 20_000 + "}\n" + RETURN,
    "sexagesimal.yaml": HEADER + "lm: {max_tokens: 1" + ":59" * 3000 + "}\n" + RETURN,
    "decimal.yaml": HEADER + "lm: {max_tokens: " + "9" * 5000 + "}\n" + RETURN,
    "literal.yaml": HEADER + "steps:\n  - return: {answer: 0x" + "f" * 5000 + "}\n",
    "big.json": json.dumps({"stepbridge": 1, "name": "big", "signature": "question -> answer",
                            "steps": [{"return": {"answer": "$inputs.question"}}]})[:-1] + ', "x": ' + "9" * 5000 + "}",
    "unknown_names.yaml": many_unknown_names(600),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_hostile_files_are_typed_errors_on_the_real_cli(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(HOSTILE_FILES[name])
    db = f"sqlite:///{tmp_path / 'store.db'}"
    for args in (["validate", str(path), "--json"], ["run", str(path), "-i", "question=q", "--db", db],
                 ["programs", "add", str(path), "--db", db]):
        # the file's first command (and each command for one of the files) in a real process
        done = cli(*args) if args[0] == "validate" or name == "big.json" else run_cli(*args)
        assert done.returncode == 2, (args, done.stdout[-500:], done.stderr[-2000:])
        assert "Traceback" not in done.stdout + done.stderr
    issues = json.loads(run_cli("validate", str(path), "--json").stdout)["error"]["details"]["issues"]
    assert issues and all(i["pointer"] is not None for i in issues)


def _plant_json(store: Store, digest: str, raw_json: str) -> None:
    """A version row whose program column holds ``raw_json`` verbatim (written around stepbridge)."""
    from sb_security import plant

    plant(store, {"name": "planted"}, digest)
    cast = "CAST(:p AS jsonb)" if store.dialect == "postgresql" else ":p"
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE program_versions SET program = {cast} WHERE hash = :h"),
                     {"p": raw_json, "h": digest})


ROWS = {
    "a 5,000-digit integer": '{"stepbridge": 1, "name": "planted", "x": ' + "9" * 5000 + "}",
    "3,000-deep JSON": '{"stepbridge": 1, "name": "planted", "x": ' + "[" * 3000 + "]" * 3000 + "}",
    "100-deep JSON": '{"stepbridge": 1, "name": "planted", "x": ' + "[" * 100 + "]" * 100 + "}",
}


@pytest.mark.parametrize("row", sorted(ROWS))
def test_hostile_stored_rows_are_typed_errors(row: str, db_url: str) -> None:
    digest = "ab" * 32
    with Store(db_url) as store:
        try:
            _plant_json(store, digest, ROWS[row])
        except Exception as exc:  # the database itself refused to hold it: nothing to read back
            pytest.skip(f"{store.dialect} refuses this row itself: {str(exc).splitlines()[0][:100]}")
        for ref in (digest, "planted@1", "planted"):
            with pytest.raises((StorageError, ProgramValidationError)):
                store.load(ref)
        with pytest.raises((StorageError, ProgramValidationError)):
            store.load(digest, validate=False)
    done = cli("run", digest, "--db", db_url, "-i", "question=q")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr


def test_a_huge_version_number_is_a_typed_error(db_url: str) -> None:
    with Store(db_url) as store:
        store.publish(load_program(HEADER + RETURN))
        for ref in ("big@99999999999999999999999", "big@2147483648", "big@" + "9" * 5000):
            with pytest.raises(StorageError):
                store.resolve(ref)
        assert store.resolve("big@1").version == 1
    done = cli("run", "big@99999999999999999999999", "--db", db_url, "-i", "question=q")
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("data", [
    {"stepbridge": 1, "name": "x", "signature": "q -> a", "lm": {"max_tokens": 10**5000}},
    {"stepbridge": 1, "name": "x", "signature": "q -> a", "description": [[[[[]]]]] * 1, "x": [[] for _ in range(3)]},
])
def test_data_from_anywhere_gets_the_file_limits(data: dict[str, Any]) -> None:
    deep: Any = []
    for _ in range(200):
        deep = [deep]
    for bad in (data, {**data, "deep": deep}):
        with pytest.raises(ProgramValidationError):
            load_program(bad)


@pytest.mark.parametrize("how", ["inputs-file", "input-flag"])
def test_inputs_nested_past_the_recursion_limit_are_a_failed_row_not_a_traceback(how: str, tmp_path: Path) -> None:
    program = tmp_path / "p.json"
    program.write_text(json.dumps({"stepbridge": 1, "name": "deep", "signature": "question: list[str] -> answer",
                                   "steps": [{"return": {"answer": "done"}}]}))
    deep = "[" * 5000 + "]" * 5000
    if how == "inputs-file":
        rows = tmp_path / "rows.jsonl"
        rows.write_text(json.dumps({"question": []})[:-3] + deep + "}\n")
        args = ["--inputs", str(rows)]
    else:
        args = ["-i", f"question={deep}"]
    done = subprocess.run([*CLI, "run", str(program), *args, "--backend", "native"], capture_output=True, text=True,
                          env=worker_env({"STEPBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}), timeout=300)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
    assert done.returncode in (1, 2)
    assert "RecursionError" not in done.stderr + done.stdout
