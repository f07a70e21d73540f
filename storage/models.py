"""Tables (SQLModel) and the validated public models handed to callers.

SQLModel table classes skip pydantic validation, so nothing read from a table is returned as is:
rows are converted to the non-table models at the bottom of this module, which validate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field as SQLField
from sqlmodel import SQLModel

from .types import JSONType, UTCDateTime

__all__ = [
    "EXECUTION_STATUSES",
    "SOURCES",
    "TERMINAL_STATUSES",
    "AliasRow",
    "Batch",
    "BatchItemRow",
    "BatchResult",
    "BatchRow",
    "DataFileRow",
    "EvaluationRow",
    "EvaluationRowRow",
    "Execution",
    "ExecutionRow",
    "ExecutionStatus",
    "ExecutionStatusRow",
    "ExecutionStepRow",
    "OptimizationCandidateRow",
    "OptimizationRow",
    "ProgramDataRow",
    "ProgramRow",
    "ProgramSummary",
    "ProgramVersion",
    "ProgramVersionRow",
    "Source",
    "StatusChange",
]

Source = Literal["authored", "imported", "optimized"]
"""Where a stored version came from: written by hand, imported from DSPy, or produced by an optimization."""
SOURCES: tuple[str, ...] = ("authored", "imported", "optimized")
ExecutionStatus = Literal["pending", "running", "succeeded", "failed", "cancelled", "interrupted"]
"""An execution's state: ``pending`` (a batch row not started), ``running``, then one final status;
``interrupted`` marks a run whose process died, which ``stepbridge executions resume`` can continue."""
EXECUTION_STATUSES: tuple[str, ...] = ("pending", "running", "succeeded", "failed", "cancelled", "interrupted")
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

# A big-integer surrogate key that still autoincrements on SQLite (only INTEGER PRIMARY KEY does).
_BigId = BigInteger().with_variant(Integer(), "sqlite")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------
class ProgramRow(SQLModel, table=True):
    """A program name; its versions hang off it."""

    __tablename__ = "programs"

    name: str = SQLField(sa_column=Column(String(200), primary_key=True))
    created_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))


class ProgramVersionRow(SQLModel, table=True):
    """An immutable program version. The content hash is the identity; never updated after insert."""

    __tablename__ = "program_versions"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_program_versions_name_version"),
        CheckConstraint(_in("source", SOURCES), name="ck_program_versions_source"),
        CheckConstraint("version >= 1", name="ck_program_versions_version"),
    )

    hash: str = SQLField(sa_column=Column(String(64), primary_key=True))
    name: str = SQLField(
        sa_column=Column(String(200), ForeignKey("programs.name", ondelete="RESTRICT"), nullable=False)
    )
    # None: stored because it was run, not published as a version of its name (migration 0006)
    version: int | None = SQLField(default=None, sa_column=Column(Integer, nullable=True))
    parent_hash: str | None = SQLField(default=None, sa_column=Column(String(64), nullable=True))
    source: str = SQLField(sa_column=Column(String(16), nullable=False))
    message: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    program: dict[str, Any] = SQLField(sa_column=Column(JSONType, nullable=False))
    # Where the program file was (corpus paths are relative to it); not part of the identity.
    base_dir: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))


class DataFileRow(SQLModel, table=True):
    """A data file (a retrieval corpus) by content. A stored program reads its corpora from here,
    verified against the hash, never from the folder its row names (which no hash covers)."""

    __tablename__ = "data_files"
    __table_args__ = (CheckConstraint("size >= 0", name="ck_data_files_size"),)

    hash: str = SQLField(sa_column=Column(String(64), primary_key=True))
    size: int = SQLField(sa_column=Column(BigInteger, nullable=False))
    content: bytes = SQLField(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))


class ProgramDataRow(SQLModel, table=True):
    """Which data file a stored version reads at a corpus path (relative, as the program names it)."""

    __tablename__ = "program_data"

    program_hash: str = SQLField(
        sa_column=Column(String(64), ForeignKey("program_versions.hash", ondelete="CASCADE"), primary_key=True)
    )
    corpus: str = SQLField(sa_column=Column(String(1000), primary_key=True))
    data_hash: str = SQLField(
        sa_column=Column(String(64), ForeignKey("data_files.hash", ondelete="RESTRICT"), nullable=False)
    )


class AliasRow(SQLModel, table=True):
    """``name@alias`` -> a version of that name. Aliases move; versions do not."""

    __tablename__ = "aliases"

    name: str = SQLField(
        sa_column=Column(String(200), ForeignKey("programs.name", ondelete="RESTRICT"), primary_key=True)
    )
    alias: str = SQLField(sa_column=Column(String(100), primary_key=True))
    hash: str = SQLField(
        sa_column=Column(String(64), ForeignKey("program_versions.hash", ondelete="RESTRICT"), nullable=False)
    )
    updated_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))


class ExecutionRow(SQLModel, table=True):
    """One execution of a program version on some backend. Status changes are compare-and-set."""

    __tablename__ = "executions"
    __table_args__ = (
        CheckConstraint(_in("status", EXECUTION_STATUSES), name="ck_executions_status"),
        UniqueConstraint("idempotency_key", name="uq_executions_idempotency_key"),
        Index("ix_executions_program_hash", "program_hash"),
        Index("ix_executions_program_name_created", "program_name", "created_at"),
        Index("ix_executions_status_created", "status", "created_at"),
        Index("ix_executions_created_at", "created_at"),
    )

    id: str = SQLField(sa_column=Column(String(64), primary_key=True))
    program_hash: str = SQLField(
        sa_column=Column(String(64), ForeignKey("program_versions.hash", ondelete="RESTRICT"), nullable=False)
    )
    program_name: str = SQLField(sa_column=Column(String(200), nullable=False))
    backend: str = SQLField(sa_column=Column(String(200), nullable=False))
    status: str = SQLField(sa_column=Column(String(16), nullable=False))
    inputs: dict[str, Any] = SQLField(sa_column=Column(JSONType, nullable=False))
    outputs: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONType, nullable=True))
    error: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONType, nullable=True))
    usage: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONType, nullable=True))
    options: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONType, nullable=True))
    environment: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONType, nullable=True))
    duration_ms: float | None = SQLField(default=None, sa_column=Column(Float, nullable=True))
    attempts: int = SQLField(default=1, sa_column=Column(Integer, nullable=False))
    worker: str | None = SQLField(default=None, sa_column=Column(String(200), nullable=True))
    idempotency_key: str | None = SQLField(
        default=None, sa_column=Column(String(200), nullable=True, unique=True)
    )
    # sha256 of the canonical JSON of the (scrubbed) inputs, for runs with an idempotency key: a
    # key reused with different inputs is refused instead of returning the first run's result.
    inputs_hash: str | None = SQLField(default=None, sa_column=Column(String(64), nullable=True))
    # Who is running it: host + pid + a start marker (boot id and process start time), so a later
    # process can tell a dead owner from a live one even after pid reuse.
    owner_host: str | None = SQLField(default=None, sa_column=Column(String(255), nullable=True))
    owner_pid: int | None = SQLField(default=None, sa_column=Column(Integer, nullable=True))
    owner_marker: str | None = SQLField(default=None, sa_column=Column(String(200), nullable=True))
    created_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))
    started_at: datetime | None = SQLField(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    finished_at: datetime | None = SQLField(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    updated_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))


class BatchRow(SQLModel, table=True):
    """A batch (``stepbridge run --inputs``) as one recorded unit. Its rows are recorded up front, in
    input order, as ``pending`` executions (:class:`BatchItemRow`), so a batch killed at any point
    can be continued (``stepbridge executions resume``)."""

    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint("size >= 0", name="ck_batches_size"),
        Index("ix_batches_created_at", "created_at"),
    )

    id: str = SQLField(sa_column=Column(String(64), primary_key=True))
    program_hash: str = SQLField(
        sa_column=Column(String(64), ForeignKey("program_versions.hash", ondelete="RESTRICT"), nullable=False)
    )
    program_name: str = SQLField(sa_column=Column(String(200), nullable=False))
    backend: str = SQLField(sa_column=Column(String(200), nullable=False))
    size: int = SQLField(sa_column=Column(Integer, nullable=False))
    created_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))


class BatchItemRow(SQLModel, table=True):
    """Row ``position`` of a batch is this execution. Inserted with the batch, never updated."""

    __tablename__ = "batch_items"
    __table_args__ = (
        UniqueConstraint("execution_id", name="uq_batch_items_execution"),
        CheckConstraint("position >= 0", name="ck_batch_items_position"),
    )

    batch_id: str = SQLField(
        sa_column=Column(String(64), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    )
    position: int = SQLField(sa_column=Column(Integer, primary_key=True))
    execution_id: str = SQLField(
        sa_column=Column(String(64), ForeignKey("executions.id", ondelete="RESTRICT"), nullable=False)
    )


class ExecutionStepRow(SQLModel, table=True):
    """One trace step of one attempt. Append-only: rows are inserted, never updated."""

    __tablename__ = "execution_steps"
    __table_args__ = (UniqueConstraint("execution_id", "attempt", "seq", name="uq_execution_steps_seq"),)

    id: int | None = SQLField(default=None, sa_column=Column(_BigId, primary_key=True, autoincrement=True))
    execution_id: str = SQLField(
        sa_column=Column(String(64), ForeignKey("executions.id", ondelete="CASCADE"), nullable=False)
    )
    attempt: int = SQLField(sa_column=Column(Integer, nullable=False))
    seq: int = SQLField(sa_column=Column(Integer, nullable=False))
    step: int = SQLField(sa_column=Column(Integer, nullable=False))
    kind: str = SQLField(sa_column=Column(String(16), nullable=False))
    module: str | None = SQLField(default=None, sa_column=Column(String(200), nullable=True))
    module_type: str | None = SQLField(default=None, sa_column=Column(String(50), nullable=True))
    duration_ms: float | None = SQLField(default=None, sa_column=Column(Float, nullable=True))
    error: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONType, nullable=True))
    data: dict[str, Any] = SQLField(sa_column=Column(JSONType, nullable=False))
    created_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))


class ExecutionStatusRow(SQLModel, table=True):
    """Every status transition of an execution, in order (append-only audit trail)."""

    __tablename__ = "execution_status_history"
    __table_args__ = (Index("ix_execution_status_history_execution", "execution_id", "id"),)

    id: int | None = SQLField(default=None, sa_column=Column(_BigId, primary_key=True, autoincrement=True))
    execution_id: str = SQLField(
        sa_column=Column(String(64), ForeignKey("executions.id", ondelete="CASCADE"), nullable=False)
    )
    attempt: int = SQLField(sa_column=Column(Integer, nullable=False))
    from_status: str | None = SQLField(default=None, sa_column=Column(String(16), nullable=True))
    to_status: str = SQLField(sa_column=Column(String(16), nullable=False))
    note: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))


class EvaluationRow(SQLModel, table=True):
    """An evaluation: a program over a dataset with a metric on one backend (``stepbridge eval``). Its rows
    are :class:`EvaluationRowRow`; the runs are a recorded batch (``batch_id``), so a killed evaluation
    continues where it stopped. ``summary`` is written when every row is scored."""

    __tablename__ = "evaluations"
    __table_args__ = (
        CheckConstraint("size >= 0", name="ck_evaluations_size"),
        Index("ix_evaluations_created_at", "created_at"),
    )

    id: str = SQLField(sa_column=Column(String(64), primary_key=True))
    program_hash: str = SQLField(
        sa_column=Column(String(64), ForeignKey("program_versions.hash", ondelete="RESTRICT"), nullable=False)
    )
    program_name: str = SQLField(sa_column=Column(String(200), nullable=False))
    backend: str = SQLField(sa_column=Column(String(200), nullable=False))
    metric: str = SQLField(sa_column=Column(String(500), nullable=False))
    lm: str | None = SQLField(default=None, sa_column=Column(String(200), nullable=True))
    dataset_hash: str = SQLField(sa_column=Column(String(64), nullable=False))
    dataset_source: str | None = SQLField(default=None, sa_column=Column(Text, nullable=True))
    fields: dict[str, Any] = SQLField(sa_column=Column(JSONType, nullable=False))
    size: int = SQLField(sa_column=Column(Integer, nullable=False))
    status: str = SQLField(sa_column=Column(String(16), nullable=False))
    batch_id: str | None = SQLField(default=None, sa_column=Column(String(64), nullable=True))
    summary: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONType, nullable=True))
    created_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))


class EvaluationRowRow(SQLModel, table=True):
    """Row ``position`` of an evaluation: the example (inputs and labels), inserted with the evaluation,
    then scored once (``done``): prediction, score or error, execution id, latency and tokens."""

    __tablename__ = "evaluation_rows"
    __table_args__ = (CheckConstraint("position >= 0", name="ck_evaluation_rows_position"),)

    evaluation_id: str = SQLField(
        sa_column=Column(String(64), ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    )
    position: int = SQLField(sa_column=Column(Integer, primary_key=True))
    example: dict[str, Any] = SQLField(sa_column=Column(JSONType, nullable=False))
    done: bool = SQLField(default=False, sa_column=Column(Boolean, nullable=False))
    execution_id: str | None = SQLField(default=None, sa_column=Column(String(64), nullable=True))
    prediction: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONType, nullable=True))
    score: float | None = SQLField(default=None, sa_column=Column(Float, nullable=True))
    error: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONType, nullable=True))
    duration_ms: float | None = SQLField(default=None, sa_column=Column(Float, nullable=True))
    tokens: int | None = SQLField(default=None, sa_column=Column(Integer, nullable=True))


class OptimizationRow(SQLModel, table=True):
    """An optimization job (``stepbridge optimize``): settings, status, progress, the checkpoint it resumes
    from, and its result (a new program version, with the scores before and after)."""

    __tablename__ = "optimizations"
    __table_args__ = (Index("ix_optimizations_created_at", "created_at"),)

    id: str = SQLField(sa_column=Column(String(64), primary_key=True))
    program_hash: str = SQLField(
        sa_column=Column(String(64), ForeignKey("program_versions.hash", ondelete="RESTRICT"), nullable=False)
    )
    program_name: str = SQLField(sa_column=Column(String(200), nullable=False))
    optimizer: str = SQLField(sa_column=Column(String(100), nullable=False))
    settings: dict[str, Any] = SQLField(sa_column=Column(JSONType, nullable=False))
    metric: str = SQLField(sa_column=Column(String(500), nullable=False))
    backend: str = SQLField(sa_column=Column(String(200), nullable=False))
    lm: str | None = SQLField(default=None, sa_column=Column(String(200), nullable=True))
    train_hash: str = SQLField(sa_column=Column(String(64), nullable=False))
    val_hash: str | None = SQLField(default=None, sa_column=Column(String(64), nullable=True))
    data: dict[str, Any] = SQLField(sa_column=Column(JSONType, nullable=False))
    status: str = SQLField(sa_column=Column(String(16), nullable=False))
    progress: dict[str, Any] = SQLField(sa_column=Column(JSONType, nullable=False))
    checkpoint: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONType, nullable=True))
    result_hash: str | None = SQLField(default=None, sa_column=Column(String(64), nullable=True))
    score_before: float | None = SQLField(default=None, sa_column=Column(Float, nullable=True))
    score_after: float | None = SQLField(default=None, sa_column=Column(Float, nullable=True))
    error: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONType, nullable=True))
    created_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))


class OptimizationCandidateRow(SQLModel, table=True):
    """One candidate an optimization tried (its demos/instructions per module) and its score. Inserted once."""

    __tablename__ = "optimization_candidates"

    optimization_id: str = SQLField(
        sa_column=Column(String(64), ForeignKey("optimizations.id", ondelete="CASCADE"), primary_key=True)
    )
    seq: int = SQLField(sa_column=Column(Integer, primary_key=True))
    label: str = SQLField(sa_column=Column(String(200), nullable=False))
    modules: dict[str, Any] = SQLField(sa_column=Column(JSONType, nullable=False))
    score: float | None = SQLField(default=None, sa_column=Column(Float, nullable=True))
    details: dict[str, Any] | None = SQLField(default=None, sa_column=Column(JSONType, nullable=True))
    created_at: datetime = SQLField(sa_column=Column(UTCDateTime(), nullable=False))


# ------------------------------------------------------------------------------------------------
# public, validated models
# ------------------------------------------------------------------------------------------------
class _Public(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProgramVersion(_Public):
    """One immutable version of a named program (metadata only; :meth:`Store.load` gives the program)."""

    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str
    #: None for a program that was run but never published (a file run records its content, not a version)
    version: int | None = Field(default=None, ge=1)
    parent: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    source: Source
    message: str | None = None
    created_at: datetime
    aliases: list[str] = Field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}" if self.version is not None else self.hash[:12]

    @property
    def published(self) -> bool:
        return self.version is not None

    @property
    def short_hash(self) -> str:
        return self.hash[:12]


class ProgramSummary(_Public):
    """A program name with its latest version and aliases, for listings."""

    name: str
    versions: int = Field(ge=0)
    latest_version: int | None = None
    latest_hash: str | None = None
    aliases: dict[str, str] = Field(default_factory=dict, description="alias -> hash")
    created_at: datetime
    updated_at: datetime | None = None


class StatusChange(_Public):
    """One transition in an execution's history (:meth:`Store.status_history`): retries and recoveries
    stay visible after the final status overwrote the row's."""

    attempt: int
    from_status: ExecutionStatus | None
    to_status: ExecutionStatus
    at: datetime
    note: str | None = None


class Execution(_Public):
    """A recorded execution as callers see it. ``error`` is the typed error as a dict
    (rebuild it with :meth:`typed_error`)."""

    id: str
    program_hash: str
    program_name: str
    backend: str
    status: ExecutionStatus
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    duration_ms: float | None = None
    attempts: int = Field(ge=1)
    worker: str | None = None
    idempotency_key: str | None = None
    owner: dict[str, Any] | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def typed_error(self) -> Any:
        """The stored error rebuilt with its type (a :class:`stepbridge.StepbridgeError`), or None."""
        if self.error is None:
            return None
        from stepbridge.errors import error_from_dict

        return error_from_dict(self.error)


class Batch(_Public):
    """A recorded batch: its program, size and how many of its rows are in each status."""

    id: str
    program_hash: str
    program_name: str
    backend: str
    size: int = Field(ge=0)
    counts: dict[ExecutionStatus, int] = Field(default_factory=dict, description="status -> rows")
    created_at: datetime

    @property
    def done(self) -> bool:
        """Every row reached a terminal state."""
        return sum(n for s, n in self.counts.items() if s in TERMINAL_STATUSES) == self.size


class BatchResult(_Public):
    """One row of a batch, in input order (the shape of ``stepbridge run --inputs --json`` results)."""

    index: int = Field(ge=0)
    execution_id: str
    status: ExecutionStatus
    attempts: int = Field(ge=1)
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
