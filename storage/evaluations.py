"""Stored evaluations (``evaluations`` + ``evaluation_rows``): the log :mod:`stepbridge.evaluation` writes.

An evaluation and all its rows (the examples, in dataset order) are inserted in one transaction
before anything runs; each row is then scored exactly once (``UPDATE ... WHERE done = false``), so a
row written again by a resumer racing the original process keeps its first score. Everything bound
for a row goes through the store's scrubbing (:func:`~.recording.clean`). Rows read back are
validated (:class:`~stepbridge.evaluation.RowResult`) like every stored row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection, Row
from stepbridge.adapter import new_execution_id
from stepbridge.datasets import Dataset
from stepbridge.errors import StepbridgeError, StorageError
from stepbridge.evaluation import RowResult, Summary
from stepbridge.program import Program

from .models import EvaluationRow, EvaluationRowRow
from .recording import clean, clean_json
from .transactions import Transactions
from .types import utcnow

__all__ = ["Evaluation", "EvaluationNotFound", "Evaluations", "Refused", "StoredRow"]

T = TypeVar("T")
evaluations_t = cast(Table, EvaluationRow.__table__)  # type: ignore[attr-defined]
rows_t = cast(Table, EvaluationRowRow.__table__)  # type: ignore[attr-defined]
CHUNK = 500
#: scores a row once: a row already done keeps its first score
_SCORE_ROWS = (update(rows_t).where(rows_t.c.evaluation_id == bindparam("k_eval"),
                                    rows_t.c.position == bindparam("k_pos"), rows_t.c.done.is_(False))
               .execution_options(synchronize_session=False))


class EvaluationNotFound(StorageError):
    """No stored evaluation has this id (or unique prefix)."""


class Refused(BaseModel):
    """A stored row that a listing could not read (tampered, or written by something else): listed and marked,
    so one bad row does not hide the others, and never used."""

    id: str
    malformed: Literal[True] = True
    error: dict[str, Any]


def refused(ident: Any, exc: StepbridgeError) -> Refused:
    return Refused(id=str(ident)[:64], error=exc.to_dict())


class Evaluation(BaseModel):
    """A stored evaluation as callers see it (``stepbridge evals show``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str
    program_hash: str
    program_name: str
    backend: str
    metric: str
    lm: str | None = None
    dataset_hash: str
    dataset_source: str | None = None
    fields: dict[str, list[str]]
    size: int = Field(ge=0, le=2**31)
    status: Literal["running", "completed"]
    batch_id: str | None = None
    done: int = Field(default=0, ge=0, description="rows scored so far")
    summary: Summary | None = None
    created_at: datetime
    updated_at: datetime


class StoredRow(BaseModel):
    """One stored row; :meth:`result` is its :class:`RowResult`."""

    model_config = ConfigDict(allow_inf_nan=False)

    position: int = Field(ge=0, le=2**31)
    example: dict[str, Any]
    done: bool
    execution_id: str | None = None
    prediction: dict[str, Any] | None = None
    score: float | None = None
    error: dict[str, Any] | None = None
    duration_ms: float | None = Field(default=None, ge=0)
    tokens: int | None = Field(default=None, ge=0)

    def result(self) -> RowResult:
        return RowResult(**self.model_dump(exclude={"done"}))


def stored(what: str, build: Callable[[], T]) -> T:
    """``build()`` (a model of a stored row) or a :class:`StorageError` naming the row: a stored row is
    untrusted, and a tampered one (a negative count, a string where a list belongs, NaN) must not end a
    command in a pydantic traceback."""
    try:
        return build()
    except (ValidationError, TypeError, ValueError, OverflowError) as exc:
        count = exc.error_count() if isinstance(exc, ValidationError) else 1
        raise StorageError(f"the stored {what} is malformed ({count} problem(s)); the row is refused") from None


def _stored_row(r: Row[Any]) -> StoredRow:
    return StoredRow(position=r.position, example=r.example or {}, done=r.done, execution_id=r.execution_id,
                     prediction=r.prediction, score=r.score, error=r.error, duration_ms=r.duration_ms,
                     tokens=r.tokens)


def find(conn: Connection, table: Table, ident: str, what: str) -> Row[Any]:
    """A row by id, or by a unique id prefix of at least 6 characters."""
    row = conn.execute(select(table).where(table.c.id == ident)).first()
    if row is None and 6 <= len(ident) < 32 and ident.isalnum():
        rows = conn.execute(select(table).where(table.c.id.like(f"{ident}%")).limit(2)).all()
        if len(rows) > 1:
            raise StorageError(f"{what} id prefix {ident!r} is ambiguous")
        row = rows[0] if rows else None
    if row is None:
        raise EvaluationNotFound(f"no {what} {ident!r} (see `stepbridge {what}s list`)") if what == "evaluation" \
            else StorageError(f"no {what} {ident!r} (see `stepbridge {what}s list`)")
    return row


def exact(conn: Connection, table: Table, ident: str, what: str) -> Row[Any]:
    """The row with exactly this id."""
    row = conn.execute(select(table).where(table.c.id == ident)).first()
    if row is None:
        raise StorageError(f"no {what} {ident[:64]!r}")
    return row


def recent(tx: Transactions, table: Table, limit: int | None, what: str, read: Callable[[str], T]
           ) -> list[T | Refused]:
    """The newest rows of ``table``, each read by ``read(id)`` on its own: a row that cannot be read (a
    malformed value, a date the driver cannot parse) is a :class:`Refused` in its place, not the end of
    the listing. Only the ids are read together (ordered by the raw column, nothing parsed)."""
    q = select(table.c.id).order_by(table.c.created_at.desc(), table.c.id.desc())
    if limit is not None:
        q = q.limit(limit)
    ids = tx.read(lambda conn: [r.id for r in conn.execute(q).all()], f"listing {what}")
    found: list[T | Refused] = []
    for ident in ids:
        try:
            found.append(read(str(ident)))
        except StepbridgeError as exc:
            found.append(refused(ident, exc))
        except (ValueError, TypeError, OverflowError) as exc:  # the driver could not convert a value
            found.append(refused(ident, StorageError(f"the stored row {str(ident)[:64]} is malformed "
                                                     f"({type(exc).__name__}); the row is refused")))
    return found


class Evaluations:
    """The evaluations of one :class:`~stepbridge.storage.Store`."""

    def __init__(self, store: Any):
        self.store = store
        self.tx: Transactions = store.tx

    # -- the EvaluationLog protocol --------------------------------------------------------------
    def create(self, *, program: Program, backend: str, metric: str, lm: str | None, dataset: Dataset,
               execution_ids: Sequence[str]) -> str:
        self.store.ensure_stored(program)  # recorded against the content hash, as a file's runs: not published
        eid = new_execution_id()
        now = utcnow()
        examples = [clean_json(row)[0] for row in dataset.rows]
        if len(execution_ids) != len(examples):
            raise ValueError("create() needs one execution id per row")

        def fn(conn: Connection) -> str:
            conn.execute(insert(evaluations_t).values(
                id=eid, program_hash=program.content_hash, program_name=program.name, backend=backend,
                metric=clean(metric), lm=lm, dataset_hash=dataset.hash, dataset_source=clean(dataset.source),
                fields={"inputs": list(dataset.inputs), "labels": list(dataset.labels)}, size=len(examples),
                status="running", batch_id=None, summary=None, created_at=now, updated_at=now))
            for start in range(0, len(examples), CHUNK):
                conn.execute(insert(rows_t), [{"evaluation_id": eid, "position": p, "example": examples[p],
                                               "execution_id": execution_ids[p], "done": False}
                                              for p in range(start, min(start + CHUNK, len(examples)))])
            return eid

        return self.tx.write(fn, f"recording an evaluation of {len(examples)} rows")

    def set_batch(self, evaluation_id: str, batch_id: str) -> None:
        self.tx.write(lambda conn: conn.execute(update(evaluations_t).where(evaluations_t.c.id == evaluation_id)
                                                .values(batch_id=batch_id, updated_at=utcnow())),
                      f"linking evaluation {evaluation_id} to its batch")

    def _scoring(self, evaluation_id: str, rows: Sequence[RowResult]) -> Callable[[Connection], Any] | None:
        """The write that scores ``rows`` once each (one executemany), or None for no rows."""
        # clean_json: one C-encoder pass and one secret check per value; string-by-string only if needed
        values = [{"k_eval": evaluation_id, "k_pos": r.position,
                   "prediction": clean_json(r.prediction)[0] if r.prediction is not None else None,
                   "score": r.score, "error": clean_json(r.error)[0] if r.error is not None else None,
                   "execution_id": r.execution_id, "duration_ms": r.duration_ms, "tokens": r.tokens, "done": True}
                  for r in rows]
        if not values:
            return None
        return lambda conn: conn.execute(_SCORE_ROWS, values)

    def record(self, evaluation_id: str, rows: Sequence[RowResult]) -> None:
        """Score rows once each: a row already done keeps its first score."""
        write = self._scoring(evaluation_id, rows)
        if write is not None:
            self.tx.write(write, f"recording {len(rows)} row(s) of evaluation {evaluation_id}")

    async def arecord(self, evaluation_id: str, rows: Sequence[RowResult]) -> None:
        """:meth:`record` for event loops: written in the store's next group commit, with the runs'
        own starts and ends (one writer, no second transaction queueing for SQLite's write lock)."""
        write = self._scoring(evaluation_id, rows)
        if write is not None:
            await self.store.executions.write_in_group(write, f"recording {len(rows)} row(s) of evaluation "
                                                              f"{evaluation_id}")

    def finish(self, evaluation_id: str, summary: Summary) -> None:
        def fn(conn: Connection) -> None:
            left = conn.execute(select(func.count()).select_from(rows_t).where(
                rows_t.c.evaluation_id == evaluation_id, rows_t.c.done.is_(False))).scalar()
            conn.execute(update(evaluations_t).where(evaluations_t.c.id == evaluation_id).values(
                status="completed" if not left else "running", summary=summary.model_dump(mode="json"),
                updated_at=utcnow()))

        self.tx.write(fn, f"finishing evaluation {evaluation_id}")

    # -- reading ---------------------------------------------------------------------------------
    def _evaluation(self, conn: Connection, row: Row[Any]) -> Evaluation:
        done = conn.execute(select(func.count()).select_from(rows_t).where(
            rows_t.c.evaluation_id == row.id, rows_t.c.done.is_(True))).scalar()
        return stored(f"evaluation {row.id}", lambda: Evaluation(
            id=row.id, program_hash=row.program_hash, program_name=row.program_name, backend=row.backend,
            metric=row.metric, lm=row.lm, dataset_hash=row.dataset_hash, dataset_source=row.dataset_source,
            fields=row.fields, size=row.size, status=row.status, batch_id=row.batch_id, done=int(done or 0),
            summary=Summary.model_validate(row.summary) if row.summary is not None else None,
            created_at=row.created_at, updated_at=row.updated_at))

    def get(self, evaluation_id: str) -> Evaluation:
        return self.tx.read(lambda conn: self._evaluation(conn, find(conn, evaluations_t, evaluation_id,
                                                                     "evaluation")),
                            f"reading evaluation {evaluation_id}")

    def recent(self, limit: int | None = 50) -> list[Evaluation | Refused]:
        """Evaluations, newest first; one that cannot be read is a :class:`Refused` in its place."""
        return recent(self.tx, evaluations_t, limit, "evaluations", self._read)

    def _read(self, ident: str) -> Evaluation:
        return self.tx.read(lambda conn: self._evaluation(conn, exact(conn, evaluations_t, ident, "evaluation")),
                            f"reading evaluation {ident[:64]}")

    def rows(self, evaluation_id: str) -> list[StoredRow]:
        """Every row of an evaluation, in dataset order."""

        def fn(conn: Connection) -> list[StoredRow]:
            ev = find(conn, evaluations_t, evaluation_id, "evaluation")
            found = conn.execute(select(rows_t).where(rows_t.c.evaluation_id == ev.id)
                                 .order_by(rows_t.c.position)).all()
            return [stored(f"row {r.position} of evaluation {ev.id}", functools.partial(_stored_row, r)) for r in found]

        return self.tx.read(fn, f"reading evaluation {evaluation_id}")
