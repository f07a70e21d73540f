"""The recording hook: how the core tells a store about every run, whatever the backend.

Recording lives in the core (``stepbridge.runner``), not in adapters, so every backend is recorded
the same way. :class:`stepbridge.storage.Store` implements this protocol; anything else may too.

A recorder may also offer ``abegin``/``asucceed``/``afail`` coroutines with the same arguments; the
Runner prefers them, which lets the store group-commit the writes of concurrent runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .adapter import RunOptions
from .errors import StepbridgeError
from .program import Program
from .result import RunResult

__all__ = ["Begun", "Recorder"]


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
    def begin(self, program: Program, inputs: dict[str, Any], options: RunOptions, backend: str) -> Begun:
        """Record a new execution (status ``running``) or return the one with the same idempotency key."""
        ...

    def succeed(self, execution_id: str, result: RunResult) -> object:  # a store may answer whether it won the CAS
        """Compare-and-set ``running`` -> ``succeeded``; store outputs, usage, timings and trace steps."""
        ...

    def fail(self, execution_id: str, error: StepbridgeError, *, cancelled: bool = False) -> object:
        """Compare-and-set ``running`` -> ``failed`` (or ``cancelled``); store the typed error and partial trace."""
        ...
