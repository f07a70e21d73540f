"""What the core asks of a store: the recording hook around every run, and program look-up.

Recording lives in the core (``stepbridge.runner``), not in adapters, so every backend is recorded
the same way. :class:`stepbridge.storage.Store` implements these protocols; anything else may too.

An :class:`AsyncRecorder` also offers ``abegin``/``asucceed``/``afail`` coroutines with the same
arguments; the Runner prefers them, which lets the store group-commit the writes of concurrent runs.

A :class:`ProgramSource` turns a stored reference (``name@alias``, a hash) into a validated program.

A :class:`BatchRecorder` also records a batch as one unit before any of its rows runs: every row
``pending``, in input order, so a batch killed at any point loses nothing and can be continued.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .adapter import RunOptions
from .errors import StepbridgeError
from .program import Program
from .result import RunResult

__all__ = ["AsyncRecorder", "BatchBegun", "BatchRecorder", "Begun", "ProgramSource", "Recorder"]


@dataclass
class Begun:
    """What :meth:`Recorder.begin` decided. If ``existing`` is set, the idempotency key was seen before
    and that finished result (or error) is returned instead of running again."""

    execution_id: str
    attempt: int = 1
    existing: RunResult | None = None
    existing_error: StepbridgeError | None = None
    in_progress: bool = False


@runtime_checkable
class Recorder(Protocol):
    """The hook a :class:`~stepbridge.runner.Runner` records through: one execution per run, begun before the
    adapter runs it and ended by a compare-and-set, so a crashed or duplicated run never overwrites a result."""

    def begin(self, program: Program, inputs: dict[str, Any], options: RunOptions, backend: str) -> Begun:
        """Record a new execution (status ``running``) or return the one with the same idempotency key."""
        ...

    def succeed(self, execution_id: str, result: RunResult) -> object:  # a store may answer whether it won the CAS
        """Compare-and-set ``running`` -> ``succeeded``; store outputs, usage, timings and trace steps."""
        ...

    def fail(self, execution_id: str, error: StepbridgeError, *, cancelled: bool = False) -> object:
        """Compare-and-set ``running`` -> ``failed`` (or ``cancelled``); store the typed error and partial trace."""
        ...


@runtime_checkable
class AsyncRecorder(Recorder, Protocol):
    """A :class:`Recorder` whose writes can be awaited (and so shared between concurrent runs)."""

    async def abegin(self, program: Program, inputs: dict[str, Any], options: RunOptions, backend: str) -> Begun:
        """Like :meth:`Recorder.begin`, awaited."""
        ...

    async def asucceed(self, execution_id: str, result: RunResult) -> object:
        """Like :meth:`Recorder.succeed`, awaited."""
        ...

    async def afail(self, execution_id: str, error: StepbridgeError, *, cancelled: bool = False) -> object:
        """Like :meth:`Recorder.fail`, awaited."""
        ...


@runtime_checkable
class ProgramSource(Protocol):
    """Where stored references come from, so ``stepbridge.run("name@prod", ...)`` needs no store API."""

    def load(self, ref: str) -> Program:
        """The stored program ``ref`` names, validated in full and checked against its hash; raises
        :class:`~stepbridge.errors.ProgramNotFound` when nothing matches."""
        ...


@dataclass
class BatchBegun:
    """What :meth:`BatchRecorder.begin_batch` recorded: the batch id and, per row in input order, the
    id of its ``pending`` execution (None for a row the recorder left to :meth:`Recorder.begin`, e.g.
    one whose idempotency key was used before)."""

    batch_id: str
    execution_ids: list[str | None]


@runtime_checkable
class BatchRecorder(Protocol):
    """Records a batch before any row runs, so a killed batch can be continued row by row."""

    def begin_batch(self, program: Program, inputs: Sequence[dict[str, Any]], options: Sequence[RunOptions],
                    backend: str) -> BatchBegun:
        """Record a batch and all its rows as ``pending`` executions, in order, in one transaction. A row
        then starts through :meth:`Recorder.begin` with its execution id (compare-and-set ``pending`` ->
        ``running``)."""
        ...

    def end_batch(self, batch_id: str) -> int:
        """The batch was stopped (cancelled, or its caller stopped reading): rows still ``pending`` are
        recorded ``cancelled``. Returns how many."""
        ...
