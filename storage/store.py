"""The store: program versions, aliases and executions, behind one small API.

:class:`Store` is a facade over two parts sharing one engine and one transaction helper
(:class:`~.transactions.Transactions`: short transactions retried on transient contention):

- :class:`~.programs.ProgramRepository` -- program versions by content hash, names and aliases;
- :class:`~.executions.ExecutionLog` -- executions, status history, traces and batches; it
  implements the core's :class:`~stepbridge.recorder.Recorder` protocols (group-committed when
  awaited, see :mod:`.group_commit` and :mod:`.recording`).

``store.evaluations`` and ``store.optimizations`` (:mod:`.evaluations`, :mod:`.optimizations`) are what
the core's evaluation and optimization take through their store protocols.

The tables are defined once, in :mod:`.models`; every statement is built from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from stepbridge.adapter import RunOptions
from stepbridge.errors import (
    ExecutionNotFound,
    ProgramNotFound,
    StepbridgeError,
    StorageError,
)
from stepbridge.program import Program
from stepbridge.recorder import BatchBegun, Begun
from stepbridge.result import RunResult, StepTrace

from .db import (
    check_known,
    current_revision,
    default_url,
    ensure_schema,
    head_revision,
    make_engine,
    normalise_url,
    redacted,
)
from .evaluations import Evaluations
from .executions import ExecutionLog
from .models import (
    Batch,
    BatchResult,
    Execution,
    ProgramSummary,
    ProgramVersion,
    StatusChange,
)
from .optimizations import Optimizations
from .programs import ProgramRepository
from .transactions import Transactions

__all__ = ["ExecutionNotFound", "ProgramNotFound", "Store"]


class Store:
    """Programs and executions in one database. ``Store()`` opens the default SQLite file
    (``STEPBRIDGE_DATABASE_URL`` overrides); ``Store("postgresql://...")`` uses PostgreSQL.

    The schema is migrated on first use (``migrate=False`` only checks it). Thread-safe; one
    instance per process is plenty. Call :meth:`close` (or use ``with``) when done.
    """

    def __init__(self, url: str | None = None, *, migrate: bool = True):
        self.url = normalise_url(url or default_url())
        self.engine = make_engine(self.url)
        self.dialect = self.engine.dialect.name
        try:
            if migrate:
                self.revision = ensure_schema(self.engine)
            else:
                rev = current_revision(self.engine)
                if rev != head_revision():
                    check_known(rev, self.engine)
                    raise StorageError(
                        f"the database at {redacted(self.url)} is at schema revision {rev!r}, not "
                        f"{head_revision()!r}: run `stepbridge db upgrade`"
                    )
                self.revision = rev
        except BaseException:
            self.engine.dispose()
            raise
        self.tx = Transactions(self.engine, self.url)
        self.programs = ProgramRepository(self.tx)
        self.executions = ExecutionLog(self.tx, self.programs)
        #: evaluations and optimizations are taken from here by the core (its EvaluationStore and
        #: OptimizationStore protocols), so the core never imports the storage package
        self.evaluations = Evaluations(self)
        self.optimizations = Optimizations(self)

    def ensure_stored(self, program: Program) -> None:
        """The program's content is stored here by hash (a run's, an evaluation's, a judge's or a teacher's):
        loadable by hash, but not a version of its name until published."""
        self.programs.ensure_stored(program)

    def __repr__(self) -> str:
        return f"Store({redacted(self.url)!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish pending group-committed writes, then release every pooled connection."""
        self.executions.close()
        self.engine.dispose()
        self.programs.close()

    # -- programs (see :class:`~.programs.ProgramRepository`) -------------------------------------
    def publish(self, program: Program, *, source: str = "authored", message: str | None = None,
                parent: str | None = None) -> ProgramVersion:
        """Store ``program`` as the next version of its name; the same content returns the existing version."""
        return self.programs.publish(program, source=source, message=message, parent=parent)

    def resolve(self, ref: str) -> ProgramVersion:
        """The version a reference points at (hash, unique prefix >= 12, name, name@N, name@alias)."""
        return self.programs.resolve(ref)

    def load(self, ref: str, *, validate: bool = True) -> Program:
        """Rebuild a stored program, validated like a file, all-or-nothing."""
        return self.programs.load(ref, validate=validate)

    def export(self, ref: str) -> dict[str, Any]:
        """The program as a file would hold it (verified against its hash, not semantically)."""
        return self.programs.export(ref)

    def set_alias(self, name: str, alias: str, ref: str) -> ProgramVersion:
        """Point ``name@alias`` at the version ``ref`` (which must be a version of ``name``)."""
        return self.programs.set_alias(name, alias, ref)

    def remove_alias(self, name: str, alias: str) -> bool:
        """Delete ``name@alias``; False if it did not exist."""
        return self.programs.remove_alias(name, alias)

    def history(self, name: str) -> list[ProgramVersion]:
        """Every version of ``name``, oldest first."""
        return self.programs.history(name)

    def list_programs(self) -> list[ProgramSummary]:
        """Every program name with its latest version and aliases."""
        return self.programs.list_programs()

    # -- executions and batches (see :class:`~.executions.ExecutionLog`) ---------------------------
    def begin(self, program: Program, inputs: dict[str, Any], options: RunOptions, backend: str) -> Begun:
        """Record a new ``running`` execution, or hand back the one with the same id/idempotency key."""
        return self.executions.begin(program, inputs, options, backend)

    async def abegin(self, program: Program, inputs: dict[str, Any], options: RunOptions, backend: str) -> Begun:
        """:meth:`begin` for event loops: group-committed with the other runs of this process."""
        return await self.executions.abegin(program, inputs, options, backend)

    def succeed(self, execution_id: str, result: RunResult) -> bool:
        """Compare-and-set ``running`` -> ``succeeded``. False (and nothing written) if it was not running."""
        return self.executions.succeed(execution_id, result)

    async def asucceed(self, execution_id: str, result: RunResult) -> bool:
        """:meth:`succeed`, group-committed."""
        return await self.executions.asucceed(execution_id, result)

    def fail(self, execution_id: str, error: StepbridgeError, *, cancelled: bool = False) -> bool:
        """Compare-and-set ``running`` -> ``failed``/``cancelled``, keeping the typed error and partial trace."""
        return self.executions.fail(execution_id, error, cancelled=cancelled)

    async def afail(self, execution_id: str, error: StepbridgeError, *, cancelled: bool = False) -> bool:
        """:meth:`fail`, group-committed."""
        return await self.executions.afail(execution_id, error, cancelled=cancelled)

    def transition(self, execution_id: str, from_status: str | Iterable[str], to_status: str,
                   *, note: str | None = None) -> bool:
        """A general compare-and-set status change; False if the execution was not in ``from_status``."""
        return self.executions.transition(execution_id, from_status, to_status, note=note)

    def get_execution(self, execution_id: str) -> Execution | None:
        """One execution by id (or a unique id prefix of at least 6 characters); None if unknown."""
        return self.executions.get_execution(execution_id)

    def get_result(self, execution_id: str) -> RunResult | None:
        """The :class:`RunResult` of a succeeded execution (None otherwise)."""
        return self.executions.get_result(execution_id)

    def execution_steps(self, execution_id: str, *, attempt: int | None = None) -> list[StepTrace]:
        """The stored trace of an execution (its latest attempt that recorded steps, by default)."""
        return self.executions.execution_steps(execution_id, attempt=attempt)

    def status_history(self, execution_id: str) -> list[StatusChange]:
        """Every status change of an execution, in order."""
        return self.executions.status_history(execution_id)

    def list_executions(self, program: str | None = None, status: str | Iterable[str] | None = None,
                        since: datetime | None = None, limit: int | None = 50) -> list[Execution]:
        """Newest first. ``program`` is a name or any program reference; ``status`` one or several."""
        return self.executions.list_executions(program, status, since, limit)

    def count_executions(self, status: str | None = None) -> int:
        """How many executions there are (with ``status``, if given)."""
        return self.executions.count_executions(status)

    def begin_batch(self, program: Program, inputs: Sequence[dict[str, Any]], options: Sequence[RunOptions],
                    backend: str) -> BatchBegun:
        """Record a batch and every row as a ``pending`` execution, in input order, in one transaction."""
        return self.executions.begin_batch(program, inputs, options, backend)

    def end_batch(self, batch_id: str) -> int:
        """Rows of ``batch_id`` this process recorded and never started are recorded ``cancelled``."""
        return self.executions.end_batch(batch_id)

    def get_batch(self, batch_id: str) -> Batch | None:
        """A batch by id (or a unique prefix of at least 6 characters) with its rows counted by status."""
        return self.executions.get_batch(batch_id)

    def list_batches(self, limit: int | None = 50) -> list[Batch]:
        """Batches, newest first."""
        return self.executions.list_batches(limit)

    def batch_results(self, batch_id: str) -> list[BatchResult]:
        """Every recorded row of a batch, in input order, with its current status and outcome."""
        return self.executions.batch_results(batch_id)

    def mark_interrupted(self) -> list[str]:
        """Mark ``running``/``pending`` executions whose owning process is gone as ``interrupted``."""
        return self.executions.mark_interrupted()

    def resumable(self, program: str | None = None) -> list[Execution]:
        """Interrupted executions, oldest first and a batch's rows in input order."""
        return self.executions.resumable(program)

    def batches_of(self, execution_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """``execution id -> (batch id, position)`` for those that are rows of a batch."""
        return self.executions.batches_of(execution_ids)
