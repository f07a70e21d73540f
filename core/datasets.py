"""Datasets for evaluations and optimizations: JSONL or CSV rows split into inputs and labels.

A dataset row is a JSON object (a JSONL line, or a CSV record with its header's names). Which of its
fields the program is run with (*inputs*) and which the metric compares against (*labels*) comes
from the program's signature by default: its input fields are inputs, every other field is a label.
Both can be given explicitly instead. A CSV cell is text; for an input the signature types as
something other than ``str`` it is read as JSON (``[1, 2]``, ``true``), like ``stepbridge run -i``.

Every dataset has a content hash (sha256 of the canonical JSON of its rows and their split), stored
with each evaluation and optimization, so two results can be told to be about the same data whatever
file format or key order it was written in. Files are operator input but still bounded (size, rows,
nesting), and every problem is an :class:`~stepbridge.errors.InputValidationError` naming the file
and line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputValidationError, did_you_mean
from .files import FileRefused, read_regular
from .operations import MAX_VALUE_DEPTH
from .program import Program

__all__ = ["MAX_BYTES", "MAX_ROWS", "Dataset", "dataset_hash", "load_dataset", "parse_dataset"]

#: a dataset file larger than this is refused (read whole: hashes and resumes need every row)
MAX_BYTES = 256 * 1024 * 1024
MAX_ROWS = 1_000_000
FORMATS = ("jsonl", "csv")


@dataclass(frozen=True)
class Dataset:
    """Rows (every field), which fields are inputs and which labels, and the content hash."""

    rows: list[dict[str, Any]]
    inputs: tuple[str, ...]
    labels: tuple[str, ...]
    hash: str
    source: str = "<memory>"
    lines: list[int] = field(default_factory=list, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def input_rows(self) -> list[dict[str, Any]]:
        """Per row, the inputs the program is run with (fields absent from a row are left out)."""
        return [{k: row[k] for k in self.inputs if k in row} for row in self.rows]

    def where(self, index: int) -> str:
        """Row ``index`` as ``FILE line N``, for error messages."""
        line = self.lines[index] if index < len(self.lines) else index + 1
        return f"{self.source} line {line}"


def dataset_hash(rows: Sequence[Mapping[str, Any]], inputs: Sequence[str], labels: Sequence[str]) -> str:
    """sha256 of the canonical JSON of the rows (keys sorted) and of the input/label split (as sets)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"inputs": sorted(inputs), "labels": sorted(labels)}).encode())
    for row in rows:
        digest.update(b"\n")
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
    return digest.hexdigest()


def _check_values(row: Mapping[str, Any], where: str) -> None:
    """A row's values nest at most ``MAX_VALUE_DEPTH`` deep (as program inputs) and numbers are finite:
    deeper values would exhaust the recursion of every later step (scrubbing, storing, hashing) and NaN or
    Infinity are not JSON (PostgreSQL refuses them). Iterative, so the check itself cannot overflow."""
    stack: list[tuple[Any, int]] = [(row, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise InputValidationError(f"{where}: {value} is not a JSON number; give a finite number or null")
        if isinstance(value, dict | list):
            if depth >= MAX_VALUE_DEPTH:
                raise InputValidationError(f"{where}: a value nested deeper than {MAX_VALUE_DEPTH} levels")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputValidationError(f"{path}: unknown dataset format {fmt!r} (one of: {', '.join(FORMATS)})")
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return "csv"
    raise InputValidationError(f"{path}: cannot tell the dataset format from the extension {suffix!r}; "
                               "use .jsonl or .csv")


def _jsonl_rows(text: str, source: str) -> tuple[list[dict[str, Any]], list[int]]:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise InputValidationError(f"{source} line {number}: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise InputValidationError(f"{source} line {number}: a row must be a JSON object of field -> value, "
                                       f"got {type(value).__name__}")
        rows.append(value)
        lines.append(number)
        if len(rows) > MAX_ROWS:
            raise InputValidationError(f"{source}: more than {MAX_ROWS} rows; split the dataset")
    return rows, lines


def _csv_rows(text: str, source: str, delimiter: str) -> tuple[list[dict[str, Any]], list[int]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return [], []
        names = [h.strip() for h in header]
        if any(not n for n in names):
            raise InputValidationError(f"{source} line 1: the header has an empty column name")
        counts = Counter(names)  # not names.count per name: quadratic in a header of many columns
        dupes = sorted(n for n, c in counts.items() if c > 1)
        if dupes:
            raise InputValidationError(f"{source} line 1: duplicate column(s) {', '.join(dupes)}")
        rows: list[dict[str, Any]] = []
        lines: list[int] = []
        for record in reader:
            if not record or all(not cell.strip() for cell in record):
                continue
            number = reader.line_num
            if len(record) != len(names):
                raise InputValidationError(f"{source} line {number}: {len(record)} cell(s), the header has "
                                           f"{len(names)}")
            rows.append(dict(zip(names, record, strict=True)))
            lines.append(number)
            if len(rows) > MAX_ROWS:
                raise InputValidationError(f"{source}: more than {MAX_ROWS} rows; split the dataset")
    except csv.Error as exc:
        raise InputValidationError(f"{source} line {reader.line_num}: {exc}") from None
    return rows, lines


def _typed_cells(rows: list[dict[str, Any]], lines: list[int], program: Program | None, source: str) -> None:
    """CSV cells of inputs the signature types as non-strings are JSON (as ``stepbridge run -i``)."""
    if program is None:
        return
    typed = {n for n, f in program.signature.inputs.items() if f.type_expr.kind != "str"}
    for row, line in zip(rows, lines, strict=True):
        for name in typed & set(row):
            try:
                row[name] = json.loads(row[name])
            except (ValueError, RecursionError):
                spec = program.signature.inputs[name].type
                raise InputValidationError(f"{source} line {line}: input {name!r} is {spec}: give it as JSON, "
                                           f"got {row[name]!r}", field=name) from None


def parse_dataset(text: str, fmt: str, *, program: Program | None = None, inputs: Sequence[str] | None = None,
                  labels: Sequence[str] | None = None, source: str = "<memory>") -> Dataset:
    """A dataset from text in ``fmt`` (``jsonl`` or ``csv``); see :func:`load_dataset` for the split."""
    if fmt == "jsonl":
        rows, lines = _jsonl_rows(text, source)
    elif fmt == "csv":
        rows, lines = _csv_rows(text, source, "\t" if source.lower().endswith(".tsv") else ",")
        _typed_cells(rows, lines, program, source)
    else:
        raise InputValidationError(f"{source}: unknown dataset format {fmt!r} (one of: {', '.join(FORMATS)})")
    return from_rows(rows, program=program, inputs=inputs, labels=labels, source=source, lines=lines)


def from_rows(rows: Iterable[Mapping[str, Any]], *, program: Program | None = None,
              inputs: Sequence[str] | None = None, labels: Sequence[str] | None = None,
              source: str = "<memory>", lines: list[int] | None = None) -> Dataset:
    """A dataset from rows in memory (Python API): the same split and checks as a file."""
    data = [dict(r) for r in rows]
    for i, row in enumerate(data):
        if not all(isinstance(k, str) for k in row):
            raise InputValidationError(f"{source} row {i + 1}: field names must be strings")
    where = lines or list(range(1, len(data) + 1))
    for i, row in enumerate(data):
        _check_values(row, f"{source} line {where[i]}")
    seen: dict[str, None] = {}  # field names in first-seen order (a dict: linear in many distinct fields)
    for row in data:
        seen.update(dict.fromkeys(row))
    if inputs is None:
        if program is None:
            raise InputValidationError(f"{source}: say which fields are inputs (no program signature to take "
                                       "them from)")
        inputs = list(program.signature.inputs)
    input_names = tuple(dict.fromkeys(inputs))
    if program is not None:  # a field the program does not take would fail every row: refuse it up front
        foreign = [n for n in input_names if n not in program.signature.inputs]
        if foreign:
            hint = did_you_mean(foreign[0], list(program.signature.inputs))
            raise InputValidationError(f"{source}: {foreign[0]!r} is not an input of {program.name} (its inputs: "
                                       f"{', '.join(program.signature.inputs)})" + (f"; did you mean {hint!r}?"
                                                                                    if hint else ""),
                                       field=foreign[0])
        needed = [n for n, f in program.signature.inputs.items()
                  if f.type_expr.kind != "optional" and n not in input_names]
        if needed:  # left out of --inputs, it would be missing from every run
            raise InputValidationError(f"{source}: {program.name} needs the input(s) {', '.join(needed)}, which "
                                       f"the inputs given ({', '.join(input_names) or 'none'}) leave out",
                                       field=needed[0])
    if labels is None:
        labels = [k for k in seen if k not in input_names]
    label_names = tuple(dict.fromkeys(labels))
    both = sorted(set(input_names) & set(label_names))
    if both:
        raise InputValidationError(f"{source}: field(s) {', '.join(both)} cannot be both inputs and labels")
    required = input_names
    if program is not None:
        required = tuple(n for n in input_names
                         if n in program.signature.inputs and program.signature.inputs[n].type_expr.kind != "optional")
    for i, row in enumerate(data):
        missing = [n for n in required if n not in row]
        if missing:
            raise InputValidationError(f"{source} line {where[i]}: missing input field(s) {', '.join(missing)} "
                                       f"(row fields: {', '.join(row) or 'none'})", field=missing[0])
    present = set(seen)
    unused = [n for n in label_names if n not in present]
    if data and unused:
        raise InputValidationError(f"{source}: label field(s) {', '.join(unused)} appear in no row")
    return Dataset(rows=data, inputs=input_names, labels=label_names,
                   hash=dataset_hash(data, input_names, label_names), source=source, lines=where)


def load_dataset(path: str | Path, *, program: Program | None = None, inputs: Sequence[str] | None = None,
                 labels: Sequence[str] | None = None, fmt: str | None = None) -> Dataset:
    """Read a JSONL or CSV file (by extension, or ``fmt``). Inputs default to the program signature's
    input fields and labels to every other field; a row missing a required input is refused up front
    (with its line), so an evaluation never starts on data it cannot finish."""
    path = Path(path)
    kind = _format_of(path, fmt)
    try:
        raw = read_regular(path, MAX_BYTES)
    except FileRefused as exc:
        raise InputValidationError(f"dataset {exc}; give a JSONL or CSV file") from None
    except OSError as exc:
        raise InputValidationError(f"cannot read dataset {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputValidationError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_dataset(text, kind, program=program, inputs=inputs, labels=labels, source=str(path))
