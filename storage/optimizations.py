"""Stored optimizations (``optimizations`` + ``optimization_candidates``): what
:mod:`stepbridge.optimization` writes so a killed optimization resumes where it stopped.

The optimization row keeps the training and validation rows themselves (a resume needs no files), the
settings, status, progress and the checkpoint (replaced after every bootstrapped example); each
candidate is inserted once (``ON CONFLICT DO NOTHING``: a resumer racing the original keeps the first).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Connection
from stepbridge.adapter import new_execution_id
from stepbridge.datasets import Dataset
from stepbridge.optimization import Settings
from stepbridge.program import Program

from .evaluations import Refused, exact, find, recent, stored
from .models import OptimizationCandidateRow, OptimizationRow
from .recording import clean
from .transactions import Transactions
from .types import utcnow

__all__ = ["Optimization", "Optimizations"]

optimizations_t = cast(Table, OptimizationRow.__table__)  # type: ignore[attr-defined]
candidates_t = cast(Table, OptimizationCandidateRow.__table__)  # type: ignore[attr-defined]


class Optimization(BaseModel):
    """A stored optimization as callers see it (``stepbridge optimizations show``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str
    program_hash: str
    program_name: str
    optimizer: str
    settings: Settings
    metric: str
    backend: str
    lm: str | None = None
    train_hash: str
    val_hash: str | None = None
    data: dict[str, Any]
    status: Literal["running", "completed", "failed"]
    progress: dict[str, Any]
    checkpoint: dict[str, Any] | None = None
    result_hash: str | None = None
    score_before: float | None = None
    score_after: float | None = None
    error: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime


class Candidate(BaseModel):
    """A stored candidate, validated on read: a resume uses its demos as they are."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seq: int = Field(ge=0, le=1_000_000)
    label: str = Field(max_length=200)
    modules: dict[str, list[dict[str, Any]]]
    score: float | None = None
    created_at: datetime


def _candidate(r: Any) -> Candidate:
    return Candidate(seq=r.seq, label=r.label, modules=r.modules or {}, score=r.score, created_at=r.created_at)


class Optimizations:
    """The optimizations of one :class:`~stepbridge.storage.Store` (the ``OptimizationLog`` protocol)."""

    def __init__(self, store: Any):
        self.store = store
        self.tx: Transactions = store.tx

    def create(self, *, program: Program, optimizer: str, settings: Settings, metric: str, backend: str,
               lm: str | None, train: Dataset, val: Dataset | None) -> str:
        self.store.ensure_stored(program)  # by content hash, as a file's runs; only the result is published
        oid = new_execution_id()
        now = utcnow()
        data = clean({"inputs": list(train.inputs), "labels": list(train.labels), "train": train.rows,
                      "val": val.rows if val is not None else None})
        values = dict(id=oid, program_hash=program.content_hash, program_name=program.name, optimizer=optimizer,
                      settings=settings.model_dump(mode="json"), metric=clean(metric), backend=backend, lm=lm,
                      train_hash=train.hash, val_hash=val.hash if val is not None else None, data=data,
                      status="running", progress={}, checkpoint=None, created_at=now, updated_at=now)
        self.tx.write(lambda conn: conn.execute(insert(optimizations_t).values(**values)),
                      f"recording an optimization of {program.name}")
        return oid

    def _update(self, optimization_id: str, doing: str, **values: Any) -> None:
        values["updated_at"] = utcnow()
        self.tx.write(lambda conn: conn.execute(update(optimizations_t).where(optimizations_t.c.id == optimization_id)
                                                .values(**values)), f"{doing} optimization {optimization_id}")

    def checkpoint(self, optimization_id: str, checkpoint: dict[str, Any], progress: dict[str, Any]) -> None:
        self._update(optimization_id, "checkpointing", checkpoint=clean(checkpoint), progress=progress,
                     status="running")

    def set_score_before(self, optimization_id: str, score: float | None) -> None:
        self._update(optimization_id, "scoring", score_before=score)

    def add_candidate(self, optimization_id: str, seq: int, label: str, modules: dict[str, Any],
                      score: float | None, details: dict[str, Any] | None) -> None:
        row = dict(optimization_id=optimization_id, seq=seq, label=label, modules=clean(modules), score=score,
                   details=details, created_at=utcnow())

        self.tx.write(lambda conn: conn.execute(self.tx.insert(candidates_t).values(**row).on_conflict_do_nothing()),
                      f"recording a candidate of optimization {optimization_id}")

    def candidates(self, optimization_id: str) -> list[dict[str, Any]]:
        """Every candidate tried, in order: ``seq``, ``label``, ``modules`` (demos per module), ``score``."""

        def fn(conn: Connection) -> list[dict[str, Any]]:
            row = find(conn, optimizations_t, optimization_id, "optimization")
            found = conn.execute(select(candidates_t).where(candidates_t.c.optimization_id == row.id)
                                 .order_by(candidates_t.c.seq)).all()
            return [stored(f"candidate {r.seq} of optimization {row.id}", functools.partial(_candidate, r)).model_dump()
                    for r in found]

        return self.tx.read(fn, f"reading optimization {optimization_id}")

    def finish(self, optimization_id: str, *, result_hash: str, score_after: float | None) -> None:
        self._update(optimization_id, "finishing", status="completed", result_hash=result_hash,
                     score_after=score_after, error=None)

    def failed(self, optimization_id: str, error: dict[str, Any]) -> None:
        self._update(optimization_id, "failing", status="failed", error=clean(error))

    def get(self, optimization_id: str) -> Optimization:
        return self.tx.read(lambda conn: _optimization(find(conn, optimizations_t, optimization_id, "optimization")),
                            f"reading optimization {optimization_id}")

    def recent(self, limit: int | None = 50) -> list[Optimization | Refused]:
        """Optimizations, newest first; one that cannot be read is a :class:`Refused` in its place."""
        return recent(self.tx, optimizations_t, limit, "optimizations", lambda ident: self.tx.read(
            lambda conn: _optimization(exact(conn, optimizations_t, ident, "optimization")),
            f"reading optimization {ident[:64]}"))


def _optimization(r: Any) -> Optimization:
    return stored(f"optimization {r.id}", lambda: Optimization(
        id=r.id, program_hash=r.program_hash, program_name=r.program_name, optimizer=r.optimizer,
        settings=Settings.model_validate(r.settings), metric=r.metric, backend=r.backend, lm=r.lm,
        train_hash=r.train_hash, val_hash=r.val_hash, data=r.data or {}, status=r.status,
        progress=r.progress or {}, checkpoint=r.checkpoint, result_hash=r.result_hash,
        score_before=r.score_before, score_after=r.score_after, error=r.error, created_at=r.created_at,
        updated_at=r.updated_at))
