"""The dataset parser: JSONL and CSV give the same rows and the same content hash; every bad file is an
InputValidationError that names the file and line (hypothesis for both)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sb_evals import PROGRAM
from stepbridge.datasets import dataset_hash, from_rows, load_dataset, parse_dataset
from stepbridge.errors import InputValidationError
from stepbridge.loader import load_program

names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
# CSV cells are text; keep them free of NUL (csv refuses it) and of surrounding-space ambiguity
cells = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=30)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], list[dict[str, str]]]:
    fields = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    rows = draw(st.lists(st.fixed_dictionaries({f: cells for f in fields}), min_size=1, max_size=8))
    rows = [r for r in rows if any(v.strip() for v in r.values())]  # an all-blank CSV record is skipped
    return fields, rows


def to_csv(fields: list[str], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_jsonl_and_csv_agree(table: tuple[list[str], list[dict[str, str]]]) -> None:
    fields, rows = table
    assume(rows)
    jsonl = "".join(json.dumps(r) + "\n" for r in rows)
    a = parse_dataset(jsonl, "jsonl", inputs=fields[:1])
    b = parse_dataset(to_csv(fields, rows), "csv", inputs=fields[:1])
    assert a.rows == b.rows == rows
    assert a.hash == b.hash
    assert a.inputs == (fields[0],) and set(a.labels) == set(fields[1:])
    assert a.input_rows() == [{fields[0]: r[fields[0]]} for r in rows]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.sampled_from(["jsonl", "csv"]))
def test_garbage_is_a_typed_error(text: str, fmt: str) -> None:
    try:
        ds = parse_dataset(text, fmt, inputs=["q"], source="data")
    except InputValidationError as exc:
        assert str(exc).startswith("data")  # says which file
    else:
        assert all("q" in row for row in ds.rows)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(names, st.integers() | st.text(max_size=5)), min_size=1, max_size=5))
def test_hash_ignores_key_order_and_tracks_content(rows: list[dict[str, object]]) -> None:
    reordered = [dict(reversed(list(r.items()))) for r in rows]
    assert dataset_hash(rows, ["x"], []) == dataset_hash(reordered, ["x"], [])
    assert dataset_hash(rows, ["x"], []) != dataset_hash([*rows, {"extra": 1}], ["x"], [])
    assert dataset_hash(rows, ["x"], []) != dataset_hash(rows, ["y"], [])


def test_split_from_the_signature(tmp_path: Path) -> None:
    prog = load_program(PROGRAM)
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "answer": "a", "id": 3}\n\n{"answer": "b", "question": "r"}\n')
    ds = load_dataset(path, program=prog)
    assert ds.inputs == ("question",) and ds.labels == ("answer", "id")
    assert ds.input_rows() == [{"question": "q"}, {"question": "r"}]
    override = load_dataset(path, program=prog, inputs=["question"], labels=["answer"])
    assert override.labels == ("answer",) and override.hash != ds.hash
    # an input the program does not take would fail every row: refused before anything runs
    with pytest.raises(InputValidationError, match=r"'questoin' is not an input of qa.*did you mean 'question'"):
        load_dataset(path, program=prog, inputs=["questoin"])


@pytest.mark.parametrize(("name", "text", "where"), [
    ("d.jsonl", '{"question": "q"}\n[1, 2]\n', "line 2: a row must be a JSON object"),
    ("d.jsonl", '{"question": "q"}\n\n{"question": \n', "line 3: not valid JSON"),
    ("d.jsonl", '{"question": "q"}\n{"answer": "a"}\n', "line 2: missing input field(s) question"),
    ("d.csv", "question,answer\nq,a\nonly-one\n", "line 3: 1 cell(s), the header has 2"),
    ("d.csv", "question,question\nq,a\n", "line 1: duplicate column(s) question"),
    ("d.txt", "question\nq\n", "cannot tell the dataset format"),
])
def test_errors_say_where(tmp_path: Path, name: str, text: str, where: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputValidationError) as info:
        load_dataset(path, program=load_program(PROGRAM))
    assert str(path) in str(info.value) and where in str(info.value)


def test_csv_cells_of_typed_inputs_are_json(tmp_path: Path) -> None:
    prog = load_program(PROGRAM.replace('"question -> answer"\nmodules', '"question, k: int -> answer"\nmodules'))
    path = tmp_path / "d.csv"
    path.write_text('question,k,answer\nq,3,a\n')
    assert load_dataset(path, program=prog).rows == [{"question": "q", "k": 3, "answer": "a"}]
    path.write_text('question,k,answer\nq,three,a\n')
    with pytest.raises(InputValidationError, match="line 2: input 'k' is int"):
        load_dataset(path, program=prog)


def test_inputs_and_labels_cannot_overlap() -> None:
    with pytest.raises(InputValidationError, match="both inputs and labels"):
        from_rows([{"q": 1}], inputs=["q"], labels=["q"])
    with pytest.raises(InputValidationError, match="appear in no row"):
        from_rows([{"q": 1}], inputs=["q"], labels=["answer"])
