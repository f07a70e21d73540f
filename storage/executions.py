"""The execution log: every run's start, end, status history and trace, and batches of runs.

It implements :class:`stepbridge.recorder.Recorder` (and its async and batch variants), which the
core calls around every run. Status changes are compare-and-set (``UPDATE ... WHERE status =
<expected>``), so a late or duplicate report can never overwrite a terminal state. Starts and ends
are prepared as plain operations (rows cleaned and serialised up front) and applied by
:class:`~.recording.Recording`: in groups by the :class:`~.group_commit.GroupCommit` (the async
variants), or as a group of one in their own transaction (the sync variants). Everything bound for
a row goes through :func:`~stepbridge.secrets.scrub` first.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from pydantic import ValidationError
from sqlalchemy import Table, and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Row
from stepbridge.adapter import RunOptions, new_execution_id
from stepbridge.errors import (
    RunCancelledError,
    StepbridgeError,
    StorageError,
    error_from_dict,
)
from stepbridge.program import Program
from stepbridge.recorder import BatchBegun, Begun
from stepbridge.result import RunResult, StepTrace, Usage

from .group_commit import GroupCommit
from .models import (
    Batch,
    BatchItemRow,
    BatchResult,
    BatchRow,
    Execution,
    ExecutionRow,
    ExecutionStatusRow,
    ExecutionStepRow,
    StatusChange,
)
from .owner import current_owner, owner_alive
from .programs import ProgramRepository
from .recording import (
    BeginOp,
    FinishOp,
    Recording,
    clean,
    clean_json,
    inputs_hash,
    step_rows,
)
from .refs import parse_ref
from .transactions import Transactions
from .types import utcnow

__all__ = ["ExecutionLog"]

log = logging.getLogger("stepbridge.storage")
T = TypeVar("T")

executions = cast(Table, ExecutionRow.__table__)  # type: ignore[attr-defined]
steps_t = cast(Table, ExecutionStepRow.__table__)  # type: ignore[attr-defined]
history_t = cast(Table, ExecutionStatusRow.__table__)  # type: ignore[attr-defined]
batches_t = cast(Table, BatchRow.__table__)  # type: ignore[attr-defined]
items_t = cast(Table, BatchItemRow.__table__)  # type: ignore[attr-defined]

_clean = clean


_environment: dict[str, Any] | None = None
_environment_text: str | None = None


def _environment_versions() -> dict[str, Any]:
    """Versions that can change a run's behaviour. Only already-imported libraries are reported."""
    global _environment
    if _environment is None:
        import pydantic
        from stepbridge import __version__

        env: dict[str, Any] = {
            "stepbridge": __version__,
            "python": platform.python_version(),
            "platform": sys.platform,
            "pydantic": pydantic.VERSION,
        }
        for mod in ("dspy", "httpx", "litellm"):
            loaded = sys.modules.get(mod)
            if loaded is not None and hasattr(loaded, "__version__"):
                env[mod] = str(loaded.__version__)
        _environment = env
    return dict(_environment)


def _environment_json() -> str:
    global _environment_text
    if _environment_text is None:
        _environment_text = clean_json(_environment_versions())[1]
    return _environment_text


class ExecutionLog:
    """Executions, their status history and trace steps, and batches (the ``executions``,
    ``execution_status_history``, ``execution_steps``, ``batches`` and ``batch_items`` tables)."""

    def __init__(self, tx: Transactions, programs: ProgramRepository):
        self.tx = tx
        self.programs = programs
        # ids of pending batch rows this process recorded and has not started yet (their start is a
        # compare-and-set pending -> running rather than an insert)
        self._claimable: set[str] = set()
        self._recording = Recording(tx, self._take_over)
        self._group = GroupCommit(tx, self._recording)

    def close(self) -> None:
        """Finish pending group-committed writes."""
        self._group.close()

    async def write_in_group(self, fn: Callable[[Connection], T], doing: str) -> T:
        """``fn(conn)`` in the next group commit (in its own SAVEPOINT), shared with the runs' writes."""
        return await self._group.submit(fn, doing)

    # -- recording (the Recorder protocol) -------------------------------------------------------
    def _record(self, op: BeginOp | FinishOp) -> Any:
        return self.tx.write(lambda conn: self._recording.apply(conn, [op], isolate=False)[0][1], op.doing)

    def begin(self, program: Program, inputs: dict[str, Any], options: RunOptions, backend: str) -> Begun:
        """Record a new ``running`` execution, or hand back the one with the same id/idempotency key.

        An ``interrupted`` execution with that id or key is taken over (attempt + 1); a finished one
        is returned as ``existing``/``existing_error``; a running one as ``in_progress``.
        """
        self.programs.ensure_stored(program)
        return cast(Begun, self._record(self._begin_op(program, inputs, options, backend)))

    async def abegin(self, program: Program, inputs: dict[str, Any], options: RunOptions, backend: str) -> Begun:
        """:meth:`begin` for event loops: group-committed with the other runs of this process."""
        if not self.programs.known(program.content_hash):
            await asyncio.to_thread(self.programs.ensure_stored, program)
        op = self._begin_op(program, inputs, options, backend)
        return cast(Begun, await self._group.submit(op, op.doing))

    def _begin_op(self, program: Program, inputs: dict[str, Any], options: RunOptions, backend: str,
                  *, status: str = "running", now: datetime | None = None) -> BeginOp:
        owner = current_owner()
        now = now or utcnow()
        opts = options.model_dump(mode="json", exclude={"execution_id", "idempotency_key", "attempt"},
                                  exclude_defaults=True)
        key = options.idempotency_key
        cleaned_inputs, inputs_json = clean_json(inputs)
        params = {
            "b_id": options.execution_id,
            "b_program_hash": program.content_hash,
            "b_program_name": program.name,
            "b_backend": backend,
            "b_status": status,
            "b_inputs": inputs_json,
            "b_options": clean_json(opts)[1],
            "b_environment": _environment_json(),
            "b_attempts": options.attempt,
            "b_idempotency_key": key,
            "b_inputs_hash": inputs_hash(cleaned_inputs) if key is not None else None,
            "b_owner_host": owner.host,
            "b_owner_pid": owner.pid,
            "b_owner_marker": owner.marker,
            "b_created_at": now,
            "b_started_at": now if status == "running" else None,
            "b_updated_at": now,
        }
        claim = options.execution_id in self._claimable
        if claim:
            self._claimable.discard(options.execution_id)
        return BeginOp(execution_id=options.execution_id, idempotency_key=key, attempt=options.attempt,
                       program_hash=program.content_hash, now=now, params=params, claim=claim)

    def _take_over(self, conn: Connection, row: Row[Any], now: datetime) -> Begun:
        """Decide for an existing row with this id or key: take it over, return its outcome, or wait.

        Taken over (compare-and-set, so of two takers one wins and the other waits for its result):
        an ``interrupted`` row (attempt + 1, unless it never started); a ``pending`` batch row of this
        process or of a dead one; a ``running`` row whose owner is certainly dead (attempt + 1).
        """
        owner = current_owner()
        mine = (row.owner_host, row.owner_pid, row.owner_marker) == (owner.host, owner.pid, owner.marker)
        dead = not mine and owner_alive(row.owner_host, row.owner_pid, row.owner_marker) is False
        if row.status == "interrupted" or (row.status == "pending" and (mine or dead)) or (
                row.status == "running" and dead):
            attempt = row.attempts + (1 if row.started_at is not None else 0)
            taken = conn.execute(
                update(executions)
                .where(executions.c.id == row.id, executions.c.status == row.status,
                       executions.c.attempts == row.attempts,
                       executions.c.owner_pid.is_not_distinct_from(row.owner_pid),
                       executions.c.owner_marker.is_not_distinct_from(row.owner_marker))
                .values(status="running", attempts=attempt, started_at=now, finished_at=None, error=None,
                        owner_host=owner.host, owner_pid=owner.pid, owner_marker=owner.marker, updated_at=now)
                .returning(executions.c.id)
            ).all()
            if taken:
                old = row.status
                if old == "running":  # its owner died without anyone marking it: say so in the history
                    self._history(conn, row.id, row.attempts, "running", "interrupted", now,
                                  f"owner pid {row.owner_pid} on {row.owner_host} is gone")
                    old = "interrupted"
                self._history(conn, row.id, attempt, old, "running", now,
                              "resumed" if old == "interrupted" else None)
                return Begun(execution_id=row.id, attempt=attempt)
            return Begun(execution_id=row.id, attempt=row.attempts, in_progress=True)
        if row.status == "succeeded":
            return Begun(execution_id=row.id, attempt=row.attempts, existing=self._result(conn, row))
        if row.status in ("failed", "cancelled"):
            err = error_from_dict(row.error or {"type": "StepbridgeError", "message": row.status})
            err.trace = self._steps(conn, row.id, row.attempts)
            return Begun(execution_id=row.id, attempt=row.attempts, existing_error=err)
        return Begun(execution_id=row.id, attempt=row.attempts, in_progress=True)

    def _history(self, conn: Connection, eid: str, attempt: int, old: str | None, new: str, at: datetime,
                 note: str | None = None) -> None:
        conn.execute(insert(history_t).values(execution_id=eid, attempt=attempt, from_status=old, to_status=new,
                                              at=at, note=_clean(note) if note else None))

    def _finish(self, op: FinishOp) -> bool:
        done = bool(self._record(op))
        if not done:
            self._not_running(op.execution_id, op.status)
        return done

    async def _afinish(self, op: FinishOp) -> bool:
        done = bool(await self._group.submit(op, op.doing))
        if not done:
            await asyncio.to_thread(self._not_running, op.execution_id, op.status)
        return done

    def _not_running(self, eid: str, status: str) -> None:
        current = self.get_execution(eid)
        log.warning(
            "execution %s is %s, not running: its %s result was not recorded",
            eid, current.status if current else "unknown", status,
        )

    @staticmethod
    def _success_op(execution_id: str, result: RunResult) -> FinishOp:
        now = utcnow()
        values = {
            "outputs": clean_json(result.outputs)[1],
            "usage": clean_json(result.usage.model_dump(mode="json"))[1],
            "duration_ms": result.duration_ms,
            "worker": _clean(result.worker) if result.worker else None,
            "backend": result.backend,
        }
        return FinishOp(execution_id=execution_id, status="succeeded", values=values,
                        steps=step_rows(result.trace, execution_id, now), note=None, now=now)

    @staticmethod
    def _failure_op(execution_id: str, error: BaseException, cancelled: bool) -> FinishOp:
        now = utcnow()
        if isinstance(error, StepbridgeError):
            data, trace = error.to_dict(), list(error.trace)
        else:  # not ours: keep the type name and message, never the object
            data, trace = {"type": "StepbridgeError", "message": f"{type(error).__name__}: {error}",
                           "details": {}}, []
        return FinishOp(execution_id=execution_id, status="cancelled" if cancelled else "failed",
                        values={"error": clean_json(data)[1]}, steps=step_rows(trace, execution_id, now),
                        note=_clean(str(data.get("type"))), now=now)

    def succeed(self, execution_id: str, result: RunResult) -> bool:
        """Compare-and-set ``running`` -> ``succeeded``. False (and nothing written) if it was not running."""
        return self._finish(self._success_op(execution_id, result))

    async def asucceed(self, execution_id: str, result: RunResult) -> bool:
        """:meth:`succeed`, group-committed."""
        return await self._afinish(self._success_op(execution_id, result))

    def fail(self, execution_id: str, error: StepbridgeError, *, cancelled: bool = False) -> bool:
        """Compare-and-set ``running`` -> ``failed``/``cancelled``, keeping the typed error and partial trace."""
        return self._finish(self._failure_op(execution_id, error, cancelled))

    async def afail(self, execution_id: str, error: StepbridgeError, *, cancelled: bool = False) -> bool:
        """:meth:`fail`, group-committed."""
        return await self._afinish(self._failure_op(execution_id, error, cancelled))

    def transition(self, execution_id: str, from_status: str | Iterable[str], to_status: str,
                   *, note: str | None = None) -> bool:
        """A general compare-and-set status change (e.g. ``pending`` -> ``cancelled``); False if the
        execution was not in ``from_status``."""
        olds = [from_status] if isinstance(from_status, str) else list(from_status)
        now = utcnow()

        def fn(conn: Connection) -> bool:
            for old in olds:
                got = conn.execute(
                    update(executions)
                    .where(executions.c.id == execution_id, executions.c.status == old)
                    .values(status=to_status, updated_at=now,
                            **({"finished_at": now} if to_status in ("succeeded", "failed", "cancelled",
                                                                      "interrupted") else {}))
                    .returning(executions.c.attempts)
                ).all()
                if got:
                    self._history(conn, execution_id, got[0].attempts, old, to_status, now, note)
                    return True
            return False

        return self.tx.write(fn, f"changing the status of {execution_id}")

    # -- reading executions ----------------------------------------------------------------------
    def _execution(self, row: Row[Any]) -> Execution:
        owner = None
        if row.owner_host is not None or row.owner_pid is not None:
            owner = {"host": row.owner_host, "pid": row.owner_pid, "marker": row.owner_marker}
        return Execution(
            id=row.id, program_hash=row.program_hash, program_name=row.program_name, backend=row.backend,
            status=row.status, inputs=row.inputs or {}, outputs=row.outputs, error=row.error, usage=row.usage,
            options=row.options, environment=row.environment, duration_ms=row.duration_ms,
            attempts=row.attempts, worker=row.worker, idempotency_key=row.idempotency_key, owner=owner,
            created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
        )

    def _steps(self, conn: Connection, eid: str, attempt: int | None) -> list[StepTrace]:
        if attempt is None:
            attempt = conn.execute(
                select(func.max(steps_t.c.attempt)).where(steps_t.c.execution_id == eid)
            ).scalar()
            if attempt is None:
                return []
        rows = conn.execute(
            select(steps_t.c.data).where(steps_t.c.execution_id == eid, steps_t.c.attempt == attempt)
            .order_by(steps_t.c.seq)
        ).scalars()
        out = []
        for data in rows:
            try:
                out.append(StepTrace.model_validate(data))
            except ValidationError as exc:
                raise StorageError(f"a stored trace step of execution {eid} is malformed: {exc.error_count()} "
                                   "problems") from None
        return out

    def _result(self, conn: Connection, row: Row[Any]) -> RunResult:
        return RunResult(
            outputs=row.outputs or {},
            trace=self._steps(conn, row.id, row.attempts),
            usage=Usage.model_validate(row.usage or {}),
            backend=row.backend,
            program_hash=row.program_hash,
            execution_id=row.id,
            duration_ms=row.duration_ms or 0.0,
            attempts=row.attempts,
            worker=row.worker,
        )

    def _find_execution(self, conn: Connection, eid: str) -> Row[Any] | None:
        row = conn.execute(select(executions).where(executions.c.id == eid)).first()
        if row is None and 6 <= len(eid) < 32 and eid.isalnum():
            rows = conn.execute(select(executions).where(executions.c.id.like(f"{eid}%")).limit(2)).all()
            if len(rows) > 1:
                raise StorageError(f"execution id prefix {eid!r} is ambiguous")
            row = rows[0] if rows else None
        return row

    def get_execution(self, execution_id: str) -> Execution | None:
        """One execution by id (or a unique id prefix of at least 6 characters); None if unknown."""

        def fn(conn: Connection) -> Execution | None:
            row = self._find_execution(conn, execution_id)
            return self._execution(row) if row is not None else None

        return self.tx.read(fn, f"reading execution {execution_id}")

    def get_result(self, execution_id: str) -> RunResult | None:
        """The :class:`RunResult` of a succeeded execution (None otherwise)."""

        def fn(conn: Connection) -> RunResult | None:
            row = self._find_execution(conn, execution_id)
            return self._result(conn, row) if row is not None and row.status == "succeeded" else None

        return self.tx.read(fn, f"reading execution {execution_id}")

    def execution_steps(self, execution_id: str, *, attempt: int | None = None) -> list[StepTrace]:
        """The stored trace of an execution (its latest attempt that recorded steps, by default)."""
        return self.tx.read(lambda conn: self._steps(conn, execution_id, attempt), "reading a trace")

    def status_history(self, execution_id: str) -> list[StatusChange]:
        """Every status change of an execution, in order."""

        def fn(conn: Connection) -> list[StatusChange]:
            rows = conn.execute(
                select(history_t).where(history_t.c.execution_id == execution_id).order_by(history_t.c.id)
            ).all()
            return [StatusChange(attempt=r.attempt, from_status=r.from_status, to_status=r.to_status, at=r.at,
                                 note=r.note) for r in rows]

        return self.tx.read(fn, "reading a status history")

    def list_executions(
        self,
        program: str | None = None,
        status: str | Iterable[str] | None = None,
        since: datetime | None = None,
        limit: int | None = 50,
    ) -> list[Execution]:
        """Newest first. ``program`` is a name or any program reference; ``status`` one or several."""

        def fn(conn: Connection) -> list[Execution]:
            q = select(executions)
            if program is not None:
                ref = parse_ref(program)
                if ref.kind == "name":
                    q = q.where(executions.c.program_name == ref.name)
                elif ref.kind in ("hash", "prefix") and ref.name is None:
                    q = q.where(executions.c.program_hash.like(f"{ref.hash}%"))
                else:
                    q = q.where(executions.c.program_hash == self.programs.find(conn, ref, program).hash)
            if status is not None:
                wanted = [status] if isinstance(status, str) else list(status)
                q = q.where(executions.c.status.in_(wanted))
            if since is not None:
                q = q.where(executions.c.created_at >= since)
            q = q.order_by(executions.c.created_at.desc(), executions.c.id.desc())
            if limit is not None:
                q = q.limit(limit)
            return [self._execution(r) for r in conn.execute(q)]

        return self.tx.read(fn, "listing executions")

    def count_executions(self, status: str | None = None) -> int:
        """How many executions there are (with ``status``, if given)."""
        def fn(conn: Connection) -> int:
            q = select(func.count()).select_from(executions)
            if status is not None:
                q = q.where(executions.c.status == status)
            return int(conn.execute(q).scalar() or 0)

        return self.tx.read(fn, "counting executions")

    # -- batches ---------------------------------------------------------------------------------
    def begin_batch(self, program: Program, inputs: Sequence[dict[str, Any]], options: Sequence[RunOptions],
                    backend: str) -> BatchBegun:
        """Record a batch and every row as a ``pending`` execution, in input order, in one transaction.

        A row whose execution id or idempotency key already exists is linked to that execution when
        it is the same submission (same program and inputs) and left to :meth:`begin` either way (its
        id in the answer is None). Each returned id starts with :meth:`begin` (pending -> running).
        """
        if len(inputs) != len(options):
            raise ValueError("begin_batch() needs one RunOptions per row")
        self.programs.ensure_stored(program)
        batch_id = new_execution_id()
        now = utcnow()
        ops = [self._begin_op(program, row, opts, backend, status="pending", now=now)
               for row, opts in zip(inputs, options, strict=True)]

        def fn(conn: Connection) -> dict[int, str]:
            conn.execute(insert(batches_t).values(id=batch_id, program_hash=program.content_hash,
                                                  program_name=program.name, backend=backend, size=len(ops),
                                                  created_at=now))
            created = self._recording.insert_executions(conn, [op.params for op in ops])
            links: dict[int, str] = {}
            for position, op in enumerate(ops):
                if op.execution_id in created:
                    links[position] = op.execution_id
                    continue
                existing = self._same_submission(conn, op)
                if existing is not None:
                    links[position] = existing
            for start in range(0, len(links), 500):
                chunk = list(links.items())[start:start + 500]
                conn.execute(insert(items_t), [{"batch_id": batch_id, "position": pos, "execution_id": eid}
                                               for pos, eid in chunk])
            pending = [self._recording._history_params(eid, ops[pos].attempt, None, "pending", now, None)
                       for pos, eid in links.items() if eid in created]
            if pending:
                self._recording._insert_many(conn, "history", pending)
            return {pos: eid for pos, eid in links.items() if eid in created}

        fresh = self.tx.write(fn, f"recording a batch of {len(ops)} rows")
        self._claimable.update(fresh.values())
        return BatchBegun(batch_id=batch_id, execution_ids=[fresh.get(i) for i in range(len(ops))])

    def _same_submission(self, conn: Connection, op: BeginOp) -> str | None:
        """The execution an unrecorded batch row already is (same id, or same key, program and inputs)."""
        row = conn.execute(select(executions).where(
            or_(executions.c.id == op.execution_id,
                and_(executions.c.idempotency_key.is_not(None),
                     executions.c.idempotency_key == op.idempotency_key))).limit(1)).first()
        if row is None or row.program_hash != op.program_hash:
            return None
        if row.id != op.execution_id:
            stored = row.inputs_hash if row.inputs_hash is not None else inputs_hash(row.inputs or {})
            if stored != op.params.get("b_inputs_hash"):
                return None
        return cast(str, row.id)

    def end_batch(self, batch_id: str) -> int:
        """Rows of ``batch_id`` this process recorded and never started are recorded ``cancelled``."""
        owner = current_owner()
        now = utcnow()
        error = clean(RunCancelledError("the batch was stopped before this row started").to_dict())

        def fn(conn: Connection) -> list[str]:
            rows = conn.execute(
                update(executions)
                .where(executions.c.status == "pending",
                       executions.c.id.in_(select(items_t.c.execution_id).where(items_t.c.batch_id == batch_id)),
                       executions.c.owner_host == owner.host, executions.c.owner_pid == owner.pid,
                       executions.c.owner_marker.is_not_distinct_from(owner.marker))
                .values(status="cancelled", error=error, finished_at=now, updated_at=now)
                .returning(executions.c.id, executions.c.attempts)
            ).all()
            for r in rows:
                self._history(conn, r.id, r.attempts, "pending", "cancelled", now, "batch stopped")
            return [r.id for r in rows]

        ids = self.tx.write(fn, f"stopping batch {batch_id}")
        self._claimable.difference_update(ids)
        return len(ids)

    def _batch(self, conn: Connection, row: Row[Any]) -> Batch:
        counts = conn.execute(
            select(executions.c.status, func.count())
            .select_from(items_t.join(executions, executions.c.id == items_t.c.execution_id))
            .where(items_t.c.batch_id == row.id).group_by(executions.c.status)
        ).all()
        return Batch(id=row.id, program_hash=row.program_hash, program_name=row.program_name, backend=row.backend,
                     size=row.size, counts={s: int(n) for s, n in counts}, created_at=row.created_at)

    def _find_batch(self, conn: Connection, batch_id: str) -> Row[Any] | None:
        row = conn.execute(select(batches_t).where(batches_t.c.id == batch_id)).first()
        if row is None and 6 <= len(batch_id) < 32 and batch_id.isalnum():
            rows = conn.execute(select(batches_t).where(batches_t.c.id.like(f"{batch_id}%")).limit(2)).all()
            if len(rows) > 1:
                raise StorageError(f"batch id prefix {batch_id!r} is ambiguous")
            row = rows[0] if rows else None
        return row

    def get_batch(self, batch_id: str) -> Batch | None:
        """A batch by id (or a unique prefix of at least 6 characters) with its rows counted by status."""

        def fn(conn: Connection) -> Batch | None:
            row = self._find_batch(conn, batch_id)
            return self._batch(conn, row) if row is not None else None

        return self.tx.read(fn, f"reading batch {batch_id}")

    def list_batches(self, limit: int | None = 50) -> list[Batch]:
        """Batches, newest first."""

        def fn(conn: Connection) -> list[Batch]:
            q = select(batches_t).order_by(batches_t.c.created_at.desc(), batches_t.c.id.desc())
            if limit is not None:
                q = q.limit(limit)
            return [self._batch(conn, r) for r in conn.execute(q).all()]

        return self.tx.read(fn, "listing batches")

    def batch_results(self, batch_id: str) -> list[BatchResult]:
        """Every recorded row of a batch, in input order, with its current status and outcome."""

        def fn(conn: Connection) -> list[BatchResult]:
            row = self._find_batch(conn, batch_id)
            if row is None:
                raise StorageError(f"no batch {batch_id!r}")
            rows = conn.execute(
                select(items_t.c.position, executions.c.id, executions.c.status, executions.c.attempts,
                       executions.c.inputs, executions.c.outputs, executions.c.error)
                .select_from(items_t.join(executions, executions.c.id == items_t.c.execution_id))
                .where(items_t.c.batch_id == row.id).order_by(items_t.c.position)
            ).all()
            return [BatchResult(index=r.position, execution_id=r.id, status=r.status, attempts=r.attempts,
                                inputs=r.inputs or {}, outputs=r.outputs, error=r.error) for r in rows]

        return self.tx.read(fn, f"reading batch {batch_id}")

    # -- crash recovery --------------------------------------------------------------------------
    def mark_interrupted(self) -> list[str]:
        """Mark ``running``/``pending`` executions whose owning process is gone as ``interrupted``.

        Only owners on this host that are certainly dead (no such pid, a different process under
        that pid, or a reboot since) count; live processes and other hosts are left alone. One
        compare-and-set per dead owner and status. Returns the ids marked.
        """
        owners = self.tx.read(
            lambda conn: conn.execute(
                select(executions.c.owner_host, executions.c.owner_pid, executions.c.owner_marker)
                .where(executions.c.status.in_(("running", "pending"))).distinct()
            ).all(),
            "finding interrupted executions",
        )
        marked: list[str] = []
        for host, pid, marker in owners:
            if owner_alive(host, pid, marker) is not False:
                continue
            note = f"owner pid {pid} on {host} is gone"
            now = utcnow()

            def fn(conn: Connection, host: Any = host, pid: Any = pid, marker: Any = marker,
                   note: str = note, now: datetime = now) -> list[str]:
                ids: list[str] = []
                for old in ("running", "pending"):
                    rows = conn.execute(
                        update(executions)
                        .where(executions.c.status == old, executions.c.owner_host == host,
                               executions.c.owner_pid == pid,
                               executions.c.owner_marker.is_not_distinct_from(marker))
                        .values(status="interrupted", finished_at=now, updated_at=now)
                        .returning(executions.c.id, executions.c.attempts)
                    ).all()
                    for r in rows:
                        self._history(conn, r.id, r.attempts, old, "interrupted", now, note)
                    ids.extend(r.id for r in rows)
                return ids

            marked.extend(self.tx.write(fn, "marking interrupted executions"))
        return marked

    def resumable(self, program: str | None = None) -> list[Execution]:
        """Interrupted executions, oldest first and a batch's rows in input order: what
        ``stepbridge executions resume`` re-runs."""
        found = self.list_executions(program=program, status="interrupted", limit=None)
        positions = self.batches_of([e.id for e in found])
        return sorted(found, key=lambda e: (e.created_at, positions.get(e.id, ("", 0)), e.id))

    def batches_of(self, execution_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """``execution id -> (batch id, position)`` for those that are rows of a batch."""
        ids = list(execution_ids)
        found: dict[str, tuple[str, int]] = {}

        def fn(conn: Connection) -> dict[str, tuple[str, int]]:
            found.clear()
            for start in range(0, len(ids), 500):
                q = select(items_t.c.execution_id, items_t.c.batch_id, items_t.c.position).where(
                    items_t.c.execution_id.in_(ids[start:start + 500]))
                for r in conn.execute(q):
                    found.setdefault(r.execution_id, (r.batch_id, r.position))
            return found

        return self.tx.read(fn, "reading batch rows") if ids else {}
