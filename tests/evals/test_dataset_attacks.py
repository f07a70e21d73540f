"""Hostile dataset files (review of issue 9 against the evaluation features): a header or a row with very
many fields is parsed in linear time (it was quadratic: 100,000 CSV columns did not finish in 60 s), a
value nested deeper than program inputs may be, or a NaN/Infinity, is a typed error naming the line
(it was a RecursionError traceback from the store's scrubbing, exit 1)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from sb_evals import PROGRAM, stepbridge_cli
from stepbridge.datasets import load_dataset
from stepbridge.errors import InputValidationError
from stepbridge.loader import load_program
from stepbridge.operations import MAX_VALUE_DEPTH

WIDE = 300_000  # quadratic parsing: ~10^11 steps, hours; linear: well under a second


@pytest.mark.timeout(120)  # a hang guard, not a performance threshold
def test_a_csv_with_many_columns_parses(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(",".join(["question", *(f"c{i}" for i in range(WIDE))]) + "\n"
                    + ",".join(["q", *("x" for _ in range(WIDE))]) + "\n")
    data = load_dataset(path, program=load_program(PROGRAM))
    assert len(data.labels) == WIDE and data.rows[0]["c7"] == "x"


@pytest.mark.timeout(120)
def test_a_wide_header_with_a_duplicate_names_it(tmp_path: Path) -> None:
    path = tmp_path / "dupe.csv"
    path.write_text(",".join(["question", *(f"c{i}" for i in range(WIDE)), "c17"]) + "\n")
    with pytest.raises(InputValidationError, match="duplicate column"):
        load_dataset(path, program=load_program(PROGRAM))


@pytest.mark.timeout(120)
def test_rows_with_many_distinct_fields_parse(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    wide = {"question": "q", **{f"k{i}": i for i in range(WIDE)}}
    rows = [json.dumps(wide), *(json.dumps({"question": "q", f"only{i}": i}) for i in range(50_000))]
    path.write_text("\n".join(rows) + "\n")
    data = load_dataset(path, program=load_program(PROGRAM))
    assert len(data) == 50_001 and len(data.labels) == WIDE + 50_000


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "nan.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + '\n{"question": "q", "answer": ' + value + "}\n")
    with pytest.raises(InputValidationError, match=r"line 2: .* not a JSON number"):
        load_dataset(path, program=load_program(PROGRAM))


def test_a_nan_csv_cell_of_a_typed_input_is_refused(tmp_path: Path) -> None:
    program = load_program(PROGRAM.replace('"question -> answer"', '"question: float -> answer"', 1))
    path = tmp_path / "nan.csv"
    path.write_text("question,answer\n1.5,a\nNaN,b\n")
    with pytest.raises(InputValidationError, match="line 3"):
        load_dataset(path, program=program)


def test_nesting_up_to_the_input_limit_is_kept(tmp_path: Path) -> None:
    depth = MAX_VALUE_DEPTH - 1  # the row object itself is one level
    path = tmp_path / "ok.jsonl"
    path.write_text('{"question": "q", "answer": %s}\n' % ("[" * depth + "]" * depth))
    assert len(load_dataset(path, program=load_program(PROGRAM))) == 1


@pytest.mark.parametrize("depth", [MAX_VALUE_DEPTH, 950])
def test_cli_eval_of_a_deep_row_is_a_typed_error(tmp_path: Path, depth: int) -> None:
    """950 levels parse as JSON but overflowed the recursion of the store's scrubbing: a traceback, exit 1."""
    program = tmp_path / "qa.yaml"
    program.write_text(PROGRAM)
    data = tmp_path / "deep.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n{"question": "q", "answer": %s}\n'
                    % ("[" * depth + "]" * depth))
    env = {**os.environ, "STEPBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}
    done = subprocess.run([*stepbridge_cli(), "eval", str(program), "--data", str(data), "--metric", "exact_match",
                           "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    error = json.loads(done.stdout)["error"]
    assert error["type"] == "InputValidationError" and "line 2" in error["message"]
    assert f"deeper than {MAX_VALUE_DEPTH}" in error["message"]


def test_a_device_is_refused_unread(tmp_path: Path) -> None:
    """``--data`` naming /dev/zero (size 0 to stat) read until memory ran out; then it was read bounded;
    now a device is not read at all (only a regular file is)."""
    link = tmp_path / "zero.jsonl"
    link.symlink_to("/dev/zero")
    with pytest.raises(InputValidationError, match="a device or socket, not a regular file"):
        load_dataset(link, program=load_program(PROGRAM))


def test_a_file_larger_than_the_bound_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stepbridge.datasets as datasets

    monkeypatch.setattr(datasets, "MAX_BYTES", 1 << 10)  # the bound itself, smaller: the test writes 2 KiB
    path = tmp_path / "big.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n' * 64)
    with pytest.raises(InputValidationError, match="more than the 1024"):
        load_dataset(path, program=load_program(PROGRAM))


@pytest.mark.parametrize("args", [["evals", "list", "--limit", str(10**20)], ["evals", "list", "--limit", "-1"],
                                  ["optimizations", "list", "--limit", str(10**20)],
                                  ["evals", "show", "x" * 12, "--rows", "-5"]])
def test_cli_list_bounds_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    """``--limit 10**20`` was an OverflowError traceback from SQLite (exit 1); -1 listed everything."""
    env = {**os.environ, "STEPBRIDGE_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}
    done = subprocess.run([*stepbridge_cli(), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
