"""Batched recording: the start and end writes of many runs applied with a handful of statements.

Recording a run used to cost more CPU than running it: every write built, cache-keyed and compiled
a fresh SQLAlchemy statement, and every string of a trace went through the secret patterns one by
one. Here:

* rows are prepared once, outside the writer, as plain parameter dicts; JSON columns are bound as
  ready-made JSON text produced by one C-encoder pass, which also serves as the secret check
  (:func:`clean_json`): the exact per-string scrub only runs when the text could hold a secret;
* statements are built once per store with ``bindparam`` placeholders, so SQLAlchemy memoises their
  cache keys and reuses their compiled form;
* a group of writes is applied together: one multi-row ``INSERT ... ON CONFLICT DO NOTHING
  RETURNING id`` for every new execution (conflicts alone take the slow path: read the row and
  decide), one ``SELECT ... WHERE id IN (...) AND status = 'running'`` for every finish (the rows
  are locked: SQLite holds the write lock under ``BEGIN IMMEDIATE``; PostgreSQL takes ``FOR
  UPDATE``) followed by ``executemany`` UPDATEs, and one ``executemany`` each for status history and
  trace steps.

The guarantees are unchanged: a finish only applies to a ``running`` row of that id (a duplicate in
the same group is a no-op returning False), idempotency keys return the existing execution, and a
failing write does not undo its neighbours (if the batched statements fail, the group falls back
to one SAVEPOINT per write).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any, cast

from pydantic_core import to_json, to_jsonable_python
from sqlalchemy import (
    ARRAY,
    JSON,
    Column,
    String,
    Table,
    Text,
    any_,
    bindparam,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import dialect as pg_dialect
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Dialect, Row
from sqlalchemy.engine.interfaces import BindTyping
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.expression import cast as sql_cast
from stepbridge.errors import StorageError
from stepbridge.recorder import Begun
from stepbridge.result import StepTrace
from stepbridge.secrets import might_hold_secret, scrub

from .models import ExecutionRow, ExecutionStatusRow, ExecutionStepRow
from .transactions import Transactions, transient

#: decides for an existing row with a start's id or key: take it over, return its outcome, or wait
TakeOver = Callable[[Connection, Row[Any], datetime], Begun]

__all__ = ["BeginOp", "FinishOp", "Recording", "clean", "clean_json", "inputs_hash"]

executions = cast(Table, ExecutionRow.__table__)  # type: ignore[attr-defined]
steps_t = cast(Table, ExecutionStepRow.__table__)  # type: ignore[attr-defined]
history_t = cast(Table, ExecutionStatusRow.__table__)  # type: ignore[attr-defined]

#: execution columns holding JSON (bound as JSON text by the prebuilt statements)
JSON_COLUMNS = frozenset(c.name for c in executions.columns if isinstance(c.type, JSON))


# ------------------------------------------------------------------------------------------------
# cleaning: JSON-safe and secret-free
# ------------------------------------------------------------------------------------------------
def clean(value: Any) -> Any:
    """JSON-safe and secret-free: what may go into a row. Non-JSON values become strings; NUL
    characters (rejected by PostgreSQL) and non-finite floats (not JSON) are replaced."""
    if isinstance(value, str):
        return scrub(value.replace("\x00", "\ufffd"))
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {clean(str(k)): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return clean(to_jsonable_python(value, fallback=str))


def _reject(value: Any) -> Any:
    raise TypeError("not plain JSON")


# One C-encoder pass over the value. Raises for anything ``clean`` would have to convert (non-JSON
# types, non-finite floats), so success means the value is already plain JSON.
_encode_plain = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                                 default=_reject).encode
_encode_safe = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode

# ``might_hold_secret`` holds on JSON text too: one test of the encoded value decides whether its
# strings must be scrubbed one by one.
_might_hold_secret = might_hold_secret


def clean_json(value: Any) -> tuple[Any, str]:
    """``(clean(value), its JSON text)``, cheaply when nothing needs cleaning.

    The fast path encodes once and checks the text; only a value that is not plain JSON, holds a
    NUL or a lone surrogate, or could hold a secret is cleaned string by string.
    """
    try:
        text: str | None = _encode_plain(value)
    except (TypeError, ValueError, RecursionError):
        text = None
    if text is not None and "\\u0000" not in text and not _might_hold_secret(text):
        if text.isascii():
            return value, text
        try:
            text.encode("utf-8")
            return value, text
        except UnicodeEncodeError:  # a lone surrogate: let the safe encoder escape it
            pass
    cleaned = clean(value)
    return cleaned, _encode_safe(cleaned)


_encode_canonical = json.JSONEncoder(ensure_ascii=True, allow_nan=False, sort_keys=True, separators=(",", ":")).encode


def inputs_hash(cleaned: Any) -> str:
    """sha256 (hex) of the canonical JSON (sorted keys, compact, ASCII) of already-cleaned inputs:
    what an idempotency key is bound to, besides its program."""
    try:
        text = _encode_canonical(cleaned)
    except (TypeError, ValueError):  # keys of mixed types cannot be sorted: compare them as strings
        text = _encode_canonical(clean(cleaned))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def clean_json_or_none(value: Any) -> str | None:
    """JSON text for a nullable JSON column: ``None`` stays SQL NULL."""
    return None if value is None else clean_json(value)[1]


def _step_dict(step: Any) -> dict[str, Any]:
    if isinstance(step, StepTrace):
        return step.model_dump(mode="json")
    if isinstance(step, dict):
        return step
    return {"step": -1, "kind": "unknown", "outputs": str(step)}


def _plain_step_json(step: StepTrace) -> str | None:
    """The step's JSON text straight from pydantic's serializer, if it needs no cleaning."""
    try:
        text = to_json(step, inf_nan_mode="constants").decode()
    except Exception:  # unknown types, lone surrogates...: the slow path says what to do
        return None
    if "NaN" in text or "Infinity" in text or "\\u0000" in text or _might_hold_secret(text):
        return None
    return text


def _str_or_none(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else str(value)


def _number_or_none(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def step_rows(trace: Sequence[Any], eid: str, at: datetime) -> list[dict[str, Any]]:
    """Parameters for the trace rows of one finish (``b_attempt`` is filled in when applied)."""
    rows = []
    for seq, step in enumerate(trace):
        text = _plain_step_json(step) if isinstance(step, StepTrace) else None
        if text is not None:
            number, kind, module, module_type = step.step, step.kind, step.module, step.module_type
            duration, error = step.duration_ms, step.error
        else:
            data, text = clean_json(_step_dict(step))
            number, kind, module, module_type = (data.get("step"), data.get("kind"), data.get("module"),
                                                 data.get("module_type"))
            duration, error = data.get("duration_ms"), data.get("error")
        rows.append({
            "b_eid": eid,
            "b_seq": seq,
            "b_step": number if isinstance(number, int) and not isinstance(number, bool) else seq,
            "b_kind": str(kind or "unknown")[:16],
            "b_module": _str_or_none(module),
            "b_module_type": _str_or_none(module_type),
            "b_duration_ms": _number_or_none(duration),
            "b_error": clean_json_or_none(error),
            "b_data": text,
            "b_at": at,
        })
    return rows


# ------------------------------------------------------------------------------------------------
# operations
# ------------------------------------------------------------------------------------------------
@dataclass
class BeginOp:
    """Record a new ``running`` execution (or find the existing one with this id / key)."""

    execution_id: str
    idempotency_key: str | None
    attempt: int
    program_hash: str
    now: datetime
    params: dict[str, Any]  # the prebuilt INSERT's parameters
    doing: str = "recording the start of a run"
    claim: bool = False  # the id is a pending batch row of this process: try pending -> running first


@dataclass
class FinishOp:
    """Compare-and-set ``running`` -> ``status`` with ``values``, history and trace rows."""

    execution_id: str
    status: str
    values: dict[str, Any]  # column -> bound value (JSON columns already as text)
    steps: list[dict[str, Any]]
    note: str | None
    now: datetime
    doing: str = field(default="")

    def __post_init__(self) -> None:
        if not self.doing:
            self.doing = f"recording the end of execution {self.execution_id}"

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(sorted(self.values))


Op = BeginOp | FinishOp | Callable[[Connection], Any]

# -- driver SQL, rendered from the table definitions (models.py is the only schema) -----------------
# The hot statements run as driver SQL over pre-converted parameters (no SQLAlchemy compile or
# per-row bind processing per call). Their text is rendered once from SQLAlchemy Core statements
# over the models' tables, or, for PostgreSQL's unnest() form, from the tables' columns and types.
_SQLITE_NAMED = sqlite_dialect(paramstyle="named")
_SQLITE_QMARK = sqlite_dialect()
_PG = pg_dialect()
_PG.bind_typing = BindTyping.NONE  # plain %(name)s placeholders, as the parameters are already converted


def _render(stmt: Any, dialect: Dialect, positions: Sequence[str] | None = None) -> str:
    """``stmt`` as driver SQL; for a positional dialect, checks the placeholders come in ``positions`` order."""
    compiled = stmt.compile(dialect=dialect)
    if positions is not None and list(compiled.positiontup or ()) != list(positions):
        raise AssertionError(f"unexpected parameter order in {compiled.string!r}")
    return str(compiled.string)


def _array_type(column: Column[Any]) -> str:
    """The element type a column's values are bound as in an unnest() array (JSON as text, cast per row)."""
    if isinstance(column.type, JSON):
        return "jsonb"
    stored = getattr(column.type, "impl_instance", column.type)  # a TypeDecorator: the type it stores as
    return {int: "int", float: "float8", datetime: "timestamptz"}.get(stored.python_type, "text")


def _unnest_insert(table: Table, params: Mapping[str, str], tail: str = "") -> tuple[str, list[str]]:
    """PostgreSQL: ``INSERT INTO table (...) SELECT ... FROM unnest(<one array per column>)``.

    ``params`` maps each column of ``table`` to its parameter name. Parameters are bound in binary
    (``%(name)b``): text-format arrays are escaped element by element in Python. Returns the SQL and
    the parameter names in column order.
    """
    columns = [table.c[name] for name in params]
    types = [_array_type(c) for c in columns]
    names = [c.name for c in columns]
    arrays = ", ".join(f"%({p})b::{'text' if t == 'jsonb' else t}[]" for p, t in zip(params.values(), types,
                                                                                      strict=True))
    picks = ", ".join(f"u.{n}::jsonb" if t == "jsonb" else f"u.{n}" for n, t in zip(names, types, strict=True))
    sql = (f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {picks} FROM unnest({arrays}) "
           f"AS u({', '.join(names)}) {tail}").strip()
    return sql, list(params.values())


#: the columns a start writes, and the parameter each trace and history column is bound from
BEGIN_COLUMNS = tuple(c.name for c in executions.columns if c.name in {
    "id", "program_hash", "program_name", "backend", "status", "inputs", "options", "environment", "attempts",
    "idempotency_key", "inputs_hash", "owner_host", "owner_pid", "owner_marker", "created_at", "started_at",
    "updated_at"})
HISTORY_PARAMS = {"execution_id": "b_eid", "attempt": "b_attempt", "from_status": "b_from", "to_status": "b_to",
                  "at": "b_at", "note": "b_note"}
STEP_PARAMS = {"execution_id": "b_eid", "attempt": "b_attempt", "seq": "b_seq", "step": "b_step", "kind": "b_kind",
               "module": "b_module", "module_type": "b_module_type", "duration_ms": "b_duration_ms",
               "error": "b_error", "data": "b_data", "created_at": "b_at"}
RUNNING: ColumnElement[Any] = literal_column("'running'")


def _arrays(params: Sequence[str], rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    return {p: [row[p] for row in rows] for p in params}


def _sqlite_time(value: datetime | None) -> str | None:
    """A datetime as SQLAlchemy stores a :class:`~.types.UTCDateTime` on SQLite (naive UTC text)."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


@lru_cache(maxsize=1024)
def _in_list(head: str, tail: str, n: int) -> str:
    """A statement ending ``IN (`` + ``tail`` for ``n`` ids as driver SQL (``?`` each), rendered once per size."""
    return head + ", ".join("?" * n) + tail


_SQLITE_ROWS = 50  # rows per multi-row INSERT on SQLite (17 columns: well within 999 variables)


class BatchFailed(Exception):
    """A batched statement failed without a SAVEPOINT to fall back on: the transaction must be
    rolled back and the group applied again, isolated (see :meth:`Recording.apply`)."""


Outcome = tuple[bool, Any]  # (True, value) or (False, exception)


# ------------------------------------------------------------------------------------------------
# statements, built once per store
# ------------------------------------------------------------------------------------------------
class Recording:
    """Applies groups of :class:`BeginOp` / :class:`FinishOp` (and plain write callbacks) on one
    connection inside the caller's transaction."""

    def __init__(self, tx: Transactions, take_over: TakeOver):
        self.tx = tx
        self.take_over = take_over
        self.postgres = tx.postgres
        pg = self.postgres

        def js(name: str) -> ColumnElement[Any]:
            param = bindparam(name, type_=Text)
            return sql_cast(param, JSONB) if pg else param

        def values(table: Table, params: Mapping[str, str]) -> dict[str, Any]:
            return {c: js(p) if isinstance(table.c[c].type, JSON) else bindparam(p) for c, p in params.items()}

        self.begin_cols = BEGIN_COLUMNS
        self.insert_execution = (pg_insert if pg else sqlite_insert)(executions).values(
            values(executions, {c: f"b_{c}" for c in BEGIN_COLUMNS})
        ).on_conflict_do_nothing().returning(executions.c.id)
        self.insert_history = insert(history_t).values(values(history_t, HISTORY_PARAMS))
        self.insert_steps = insert(steps_t).values(values(steps_t, STEP_PARAMS))
        if pg:
            # a fixed statement over an array: an IN list differs with every group size
            self.select_running = select(executions.c.id, executions.c.attempts).where(
                executions.c.id == any_(bindparam("b_ids", type_=ARRAY(String))), executions.c.status == RUNNING
            ).order_by(executions.c.id).with_for_update()
        else:
            self.select_running = select(executions.c.id, executions.c.attempts).where(
                executions.c.id.in_(bindparam("b_ids", expanding=True)), executions.c.status == RUNNING)
        ids = (executions.c.id == any_(bindparam("b_ids", type_=ARRAY(String))) if pg
               else executions.c.id.in_(bindparam("b_ids", expanding=True)))
        self.claim_pending = update(executions).where(ids, executions.c.status == "pending").values(
            status="running", started_at=bindparam("b_now"), updated_at=bindparam("b_now"),
        ).returning(executions.c.id, executions.c.attempts)
        self.select_existing = select(executions).where(
            executions.c.id == bindparam("b_id")
        ).limit(1)
        self.select_existing_key = select(executions).where(
            or_(executions.c.id == bindparam("b_id"), executions.c.idempotency_key == bindparam("b_key"))
        ).limit(1)
        # Multi-row inserts on PostgreSQL as one fixed statement over arrays: a multi-row VALUES list
        # differs with every group size, and psycopg parses each new query text in Python.
        self.pg_insert_execution = _unnest_insert(executions, {c: f"b_{c}" for c in BEGIN_COLUMNS},
                                                  "ON CONFLICT DO NOTHING RETURNING id")
        self.pg_insert_history = _unnest_insert(history_t, HISTORY_PARAMS)
        self.pg_insert_steps = _unnest_insert(steps_t, STEP_PARAMS)
        self._js = js
        self._updates: dict[tuple[tuple[str, ...], bool], Any] = {}
        # Datetimes are bound as the column types store them (SQLite: naive UTC text as UTCDateTime
        # writes it; PostgreSQL: aware datetimes), JSON columns as text.
        self._driver_updates: dict[tuple[str, ...], str] = {}
        self._sqlite_inserts: dict[int, str] = {}
        self.sqlite_insert_history = _render(self.insert_history, _SQLITE_NAMED)
        self.sqlite_insert_steps = _render(self.insert_steps, _SQLITE_NAMED)
        one = _render(sqlite_insert(executions).values({c: bindparam(c) for c in BEGIN_COLUMNS})
                      .on_conflict_do_nothing().returning(executions.c.id), _SQLITE_QMARK, BEGIN_COLUMNS)
        row = "(" + ", ".join("?" * len(BEGIN_COLUMNS)) + ")"
        head, found, tail = one.partition(row)
        assert found and row not in tail, one
        self._sqlite_insert_parts = (head, row, tail)
        select_one = _render(select(executions.c.id, executions.c.attempts).where(
            executions.c.id.in_([bindparam("id")]), executions.c.status == RUNNING), _SQLITE_QMARK, ["id"])
        head, found, tail = select_one.partition("IN (?)")
        assert found, select_one
        self._sqlite_select_parts = (head + "IN (", ")" + tail)
        claim_one = _render(update(executions).where(
            executions.c.id.in_([bindparam("id")]), executions.c.status == literal_column("'pending'")
        ).values(status=RUNNING, started_at=bindparam("now"), updated_at=bindparam("now2"))
            .returning(executions.c.id, executions.c.attempts), _SQLITE_QMARK, ["now", "now2", "id"])
        head, found, tail = claim_one.partition("IN (?)")
        assert found and "IN (?)" not in tail, claim_one
        self._sqlite_claim_parts = (head + "IN (", ")" + tail)

    def driver_update(self, columns: tuple[str, ...]) -> str:
        """:meth:`update_finish` (without RETURNING) as driver SQL, rendered once per column set."""
        sql = self._driver_updates.get(columns)
        if sql is None:
            sql = self._driver_updates[columns] = _render(self.update_finish(columns, False),
                                                          _PG if self.postgres else _SQLITE_NAMED)
        return sql

    def _sqlite_insert_execution(self, n: int) -> str:
        """The start of ``n`` runs as one multi-row INSERT (positional: rows one after another); the
        one-row statement's VALUES group repeated, so a new group size costs no compile."""
        sql = self._sqlite_inserts.get(n)
        if sql is None:
            head, row, tail = self._sqlite_insert_parts
            sql = self._sqlite_inserts[n] = head + ", ".join([row] * n) + tail
        return sql

    def update_finish(self, columns: tuple[str, ...], returning: bool) -> Any:
        """``UPDATE executions SET status, finished_at, updated_at, <columns> WHERE id = :b_id AND
        status = 'running'`` (with ``RETURNING attempts`` for the one-by-one path), built once."""
        key = (columns, returning)
        stmt = self._updates.get(key)
        if stmt is None:
            values: dict[str, Any] = {"status": bindparam("b_status"), "finished_at": bindparam("b_now"),
                                      "updated_at": bindparam("b_now")}
            for c in columns:
                values[c] = self._js(f"b_{c}") if c in JSON_COLUMNS else bindparam(f"b_{c}")
            stmt = update(executions).where(
                executions.c.id == bindparam("b_id"), executions.c.status == RUNNING
            ).values(values)
            if returning:
                stmt = stmt.returning(executions.c.attempts)
            self._updates[key] = stmt
        return stmt

    # -- applying a group --------------------------------------------------------------------------
    def apply(self, conn: Connection, ops: Sequence[Op], *, isolate: bool | None = True) -> list[Outcome]:
        """Apply ``ops`` in ``conn``'s transaction; one outcome per op, in order.

        With ``isolate`` a failing op is rolled back alone (SAVEPOINTs) and reported in its outcome;
        without it (a group of one) errors propagate to the caller's retry loop. ``isolate=None`` is
        the optimistic way: the batched statements run without SAVEPOINTs (the success path) and a
        failure raises :class:`BatchFailed`: the caller rolls back and applies the group again with
        ``isolate=True`` (ops that take the one-by-one path still get their SAVEPOINT). Transient errors
        (lock contention, serialisation failures) always propagate: the whole transaction is retried.

        The group is applied as if in this order: starts, then finishes, then other callbacks (they
        were all submitted concurrently, so any order is a valid one).
        """
        out: list[Outcome | None] = [None] * len(ops)
        begins = [(i, op) for i, op in enumerate(ops) if isinstance(op, BeginOp)]
        finishes = [(i, op) for i, op in enumerate(ops) if isinstance(op, FinishOp)]
        if begins:
            self._begins(conn, begins, out, isolate)
        if finishes:
            self._finishes(conn, finishes, out, isolate)
        for i, op in enumerate(ops):
            if not isinstance(op, BeginOp | FinishOp):
                out[i] = self._guard(conn, partial(op, conn), "recording a run event", isolate)
        return cast(list[Outcome], out)

    def _guard(self, conn: Connection, fn: Callable[[], Any], doing: str, isolate: bool | None) -> Outcome:
        if isolate is False:
            return True, fn()
        try:
            with conn.begin_nested():
                return True, fn()
        except StorageError as exc:
            return False, exc
        except (DBAPIError, SQLAlchemyError) as exc:
            if isinstance(exc, DBAPIError) and transient(exc):
                raise
            return False, self.tx.error(exc, doing)

    def _batched(self, conn: Connection, fn: Callable[[], Any], isolate: bool | None) -> bool:
        """Run a batched step; False (rolled back) if it failed in a way one op could have caused.

        ``isolate=None`` (optimistic): no SAVEPOINT; a failure one op could have caused raises
        :class:`BatchFailed`, for the caller to roll back and apply the group again isolated.
        """
        if not isolate:
            if isolate is None:
                try:
                    fn()
                except StorageError as exc:
                    raise BatchFailed(str(exc)) from exc
                except (DBAPIError, SQLAlchemyError) as exc:
                    if isinstance(exc, DBAPIError) and transient(exc):
                        raise
                    raise BatchFailed(str(exc)) from exc
                return True
            fn()
            return True
        try:
            with conn.begin_nested():
                fn()
            return True
        except StorageError:
            return False
        except (DBAPIError, SQLAlchemyError) as exc:
            if isinstance(exc, DBAPIError) and transient(exc):
                raise
            return False

    # -- starts ------------------------------------------------------------------------------------
    def _begins(self, conn: Connection, ops: list[tuple[int, BeginOp]], out: list[Outcome | None],
                isolate: bool | None) -> None:
        fast: list[tuple[int, BeginOp]] = []
        slow: list[tuple[int, BeginOp]] = []
        ids: set[str] = set()
        keys: set[str] = set()
        for i, op in ops:
            # a second start with the same id or key in this group must see the first one's row
            if op.execution_id in ids or (op.idempotency_key is not None and op.idempotency_key in keys):
                slow.append((i, op))
                continue
            ids.add(op.execution_id)
            if op.idempotency_key is not None:
                keys.add(op.idempotency_key)
            fast.append((i, op))
        inserted: set[str] = set()

        def insert_all() -> None:
            inserted.clear()
            claimed = self._claim(conn, [op for _, op in fast if op.claim])
            for _, op in fast:
                if op.execution_id in claimed:
                    op.attempt = claimed[op.execution_id]
            inserted.update(claimed)
            inserted.update(self.insert_executions(conn, [op.params for _, op in fast if not op.claim]))
            history = [self._history_params(op.execution_id, op.attempt, "pending" if op.claim else None,
                                            "running", op.now, None)
                       for _, op in fast if op.execution_id in inserted]
            if history:
                self._insert_many(conn, "history", history)

        if fast and not self._batched(conn, insert_all, isolate):
            inserted.clear()  # rolled back: every op goes the one-by-one way, isolated
        for i, op in fast:
            if op.execution_id in inserted:
                out[i] = (True, Begun(execution_id=op.execution_id, attempt=op.attempt))
            else:
                slow.append((i, op))
        slow.sort(key=lambda item: item[0])
        for i, op in slow:
            out[i] = self._guard(conn, partial(self._begin_one, conn, op), op.doing, isolate)

    def insert_executions(self, conn: Connection, rows: list[dict[str, Any]]) -> set[str]:
        """Insert execution rows (prepared ``b_*`` parameters), skipping conflicts; the ids inserted."""
        inserted: set[str] = set()
        # RETURNING, not rowcount: rowcount is not reliable for ON CONFLICT across drivers.
        if self.postgres and len(rows) > 1:
            sql, names = self.pg_insert_execution
            inserted.update(r[0] for r in conn.exec_driver_sql(sql, _arrays(names, rows)))
        elif not self.postgres:
            names = [f"b_{c}" for c in BEGIN_COLUMNS]
            for start in range(0, len(rows), _SQLITE_ROWS):  # within SQLite's bound-variable limit
                chunk = rows[start:start + _SQLITE_ROWS]
                flat = tuple(_sqlite_time(v) if isinstance(v, datetime) else v
                             for row in chunk for v in (row[n] for n in names))
                inserted.update(r[0] for r in conn.exec_driver_sql(self._sqlite_insert_execution(len(chunk)),
                                                                   flat))
        elif rows:
            inserted.update(conn.execute(self.insert_execution, rows).scalars())
        return inserted

    def _claim(self, conn: Connection, ops: list[BeginOp]) -> dict[str, int]:
        """Compare-and-set ``pending`` -> ``running`` for pending batch rows: id -> attempt, for those claimed."""
        if not ops:
            return {}
        now = ops[0].now
        ids = [op.execution_id for op in ops]
        if self.postgres:
            got = conn.execute(self.claim_pending, {"b_ids": ids, "b_now": now}).all()
        else:
            text = _sqlite_time(now)
            got = conn.exec_driver_sql(_in_list(*self._sqlite_claim_parts, len(ids)), (text, text, *ids)).all()
        return {r[0]: r[1] for r in got}

    def _begin_one(self, conn: Connection, op: BeginOp) -> Begun:
        got = conn.execute(self.insert_execution, op.params).all()
        if got:
            conn.execute(self.insert_history,
                         self._history_params(op.execution_id, op.attempt, None, "running", op.now, None))
            return Begun(execution_id=op.execution_id, attempt=op.attempt)
        if op.idempotency_key is not None:
            row = conn.execute(self.select_existing_key,
                               {"b_id": op.execution_id, "b_key": op.idempotency_key}).first()
        else:
            row = conn.execute(self.select_existing, {"b_id": op.execution_id}).first()
        if row is None:
            raise StorageError(f"execution {op.execution_id} conflicts with a row that vanished")
        if row.program_hash != op.program_hash:
            raise StorageError(
                f"execution {row.id} (idempotency key {row.idempotency_key!r}) belongs to program "
                f"{row.program_hash[:12]}, not {op.program_hash[:12]}"
            )
        # Matched through the idempotency key (another submission, not a re-start of this execution
        # id): the key is bound to the inputs it was first used with. A row written before inputs were
        # hashed (NULL) is compared through its stored inputs.
        expected = op.params.get("b_inputs_hash")
        if row.id != op.execution_id and expected is not None and row.idempotency_key is not None:
            stored = row.inputs_hash if row.inputs_hash is not None else inputs_hash(row.inputs or {})
            if stored != expected:
                raise StorageError(
                    f"idempotency key {row.idempotency_key!r} was already used for different inputs "
                    f"(execution {row.id}); use a new key for new inputs"
                )
        return self.take_over(conn, row, op.now)

    # -- ends --------------------------------------------------------------------------------------
    def _finishes(self, conn: Connection, ops: list[tuple[int, FinishOp]], out: list[Outcome | None],
                  isolate: bool | None) -> None:
        first: list[tuple[int, FinishOp]] = []
        repeats: list[int] = []
        seen: set[str] = set()
        for i, op in ops:
            if op.execution_id in seen:
                repeats.append(i)  # the first finish of this id in the group wins; this one is a no-op
            else:
                seen.add(op.execution_id)
                first.append((i, op))
        running: dict[str, int] = {}

        def finish_all() -> None:
            running.clear()
            ids = [op.execution_id for _, op in first]
            if self.postgres:
                rows = conn.execute(self.select_running, {"b_ids": ids}).all()
            else:
                rows = conn.exec_driver_sql(_in_list(*self._sqlite_select_parts, len(ids)), tuple(ids)).all()
            running.update((r[0], r[1]) for r in rows)
            updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            history: list[dict[str, Any]] = []
            steps: list[dict[str, Any]] = []
            for _, op in first:
                attempt = running.get(op.execution_id)
                if attempt is None:
                    continue
                updates.setdefault(op.columns, []).append(self._update_params(op, not self.postgres))
                history.append(self._history_params(op.execution_id, attempt, "running", op.status, op.now,
                                                    op.note))
                steps.extend({**row, "b_attempt": attempt} for row in op.steps)
            for columns, params in updates.items():
                conn.exec_driver_sql(self.driver_update(columns), params)
            if history:
                self._insert_many(conn, "history", history)
            if steps:
                self._insert_many(conn, "steps", steps)

        if self._batched(conn, finish_all, isolate):
            for i, op in first:
                out[i] = (True, op.execution_id in running)
            for i in repeats:
                out[i] = (True, False)
            return
        # the batched statements failed: one by one, each in its own SAVEPOINT
        for i, op in ops:
            out[i] = self._guard(conn, partial(self._finish_one, conn, op), op.doing, isolate)

    def _finish_one(self, conn: Connection, op: FinishOp) -> bool:
        got = conn.execute(self.update_finish(op.columns, True), self._update_params(op)).all()
        if len(got) != 1:
            return False
        attempt = got[0][0]
        conn.execute(self.insert_history,
                     self._history_params(op.execution_id, attempt, "running", op.status, op.now, op.note))
        if op.steps:
            self._insert_many(conn, "steps", [{**row, "b_attempt": attempt} for row in op.steps])
        return True

    def _insert_many(self, conn: Connection, table: str, rows: list[dict[str, Any]]) -> None:
        if self.postgres and len(rows) > 1:
            sql, names = self.pg_insert_history if table == "history" else self.pg_insert_steps
            conn.exec_driver_sql(sql, _arrays(names, rows))
        elif not self.postgres:
            at: dict[int, str | None] = {}  # rows of one op share their datetime: convert it once
            for row in rows:
                value = row["b_at"]
                if isinstance(value, datetime):
                    text = at.get(id(value))
                    if text is None:
                        text = at[id(value)] = _sqlite_time(value)
                    row["b_at"] = text
            conn.exec_driver_sql(self.sqlite_insert_history if table == "history" else self.sqlite_insert_steps,
                                 rows)
        else:
            conn.execute(self.insert_history if table == "history" else self.insert_steps, rows)

    @staticmethod
    def _update_params(op: FinishOp, sqlite_driver: bool = False) -> dict[str, Any]:
        params = {f"b_{c}": v for c, v in op.values.items()}
        params["b_id"] = op.execution_id
        params["b_status"] = op.status
        params["b_now"] = _sqlite_time(op.now) if sqlite_driver else op.now
        return params

    @staticmethod
    def _history_params(eid: str, attempt: int, old: str | None, new: str, at: datetime,
                        note: str | None) -> dict[str, Any]:
        return {"b_eid": eid, "b_attempt": attempt, "b_from": old, "b_to": new, "b_at": at,
                "b_note": clean(note) if note else None}

