"""The typed error hierarchy.

Every error stepbridge raises is a :class:`StepbridgeError`. Each one can be turned into a plain
dict (:meth:`StepbridgeError.to_dict`) and rebuilt from it (:func:`error_from_dict`) with its type
intact, so errors survive the process boundary (msgpack frames) and storage (JSON columns)
without pickle.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from .secrets import register_secret as register_secret
from .secrets import scrub

__all__ = [
    "ConfigurationError",
    "ContextWindowExceededError",
    "ConversionError",
    "ExecutionNotFound",
    "InputValidationError",
    "Issue",
    "LMError",
    "LMParseError",
    "OperationError",
    "PoolSaturatedError",
    "ProgramNotFound",
    "ProgramValidationError",
    "RunCancelledError",
    "RunTimeoutError",
    "StepError",
    "StepbridgeError",
    "StorageError",
    "UnsupportedCapabilityError",
    "WorkerLostError",
    "did_you_mean",
    "error_from_dict",
    "scrub_secrets",
]


# One scrubbing function for every path out (see stepbridge.secrets); the old names stay importable.
scrub_secrets = scrub


@dataclass(frozen=True)
class Issue:
    """One problem found in a program: where (JSON pointer, file line) and what, with a hint."""

    pointer: str
    message: str
    severity: str = "error"  # "error" | "warning"
    line: int | None = None
    suggestion: str | None = None

    def __str__(self) -> str:
        where = self.pointer or "/"
        if self.line is not None:
            where += f" (line {self.line})"
        text = f"{where}: {self.message}"
        if self.suggestion:
            text += f" (did you mean {self.suggestion}?)"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The issue as JSON-safe data (``stepbridge validate --json``)."""
        return asdict(self)


class StepbridgeError(Exception):
    """Base of every stepbridge error. ``retriable`` says whether running again may succeed."""

    retriable: ClassVar[bool] = False
    _registry: ClassVar[dict[str, type[StepbridgeError]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        StepbridgeError._registry[cls.__name__] = cls

    def __init__(self, message: str, *, trace: list[Any] | None = None, remote_traceback: str | None = None):
        message = scrub(message)  # str(exc), logs and CLI text never carry a secret, not only to_dict()
        super().__init__(message)
        self.message = message
        #: the partial trace of a failed run (list of StepTrace), when there is one
        self.trace: list[Any] = list(trace or [])
        #: the traceback text from another process, for debugging (secrets scrubbed)
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return self.message

    def details(self) -> dict[str, Any]:
        """Type-specific fields; the constructor accepts them back as keyword arguments."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """A JSON/msgpack-safe description of this error, secrets scrubbed."""
        data: dict[str, Any] = {
            "type": type(self).__name__,
            "message": scrub(self.message),
            "details": scrub(self.details()),
        }
        if self.remote_traceback:
            data["traceback"] = scrub(self.remote_traceback)
        return data


class ProgramValidationError(StepbridgeError):
    """The program is invalid; ``issues`` lists every problem at once."""

    def __init__(self, issues: list[Issue] | list[dict[str, Any]], message: str | None = None, **kw: Any):
        self.issues: list[Issue] = [i if isinstance(i, Issue) else Issue(**i) for i in issues]
        errors = [i for i in self.issues if i.severity == "error"]
        if message is None:
            lines = [f"invalid program: {len(errors)} problem{'s' if len(errors) != 1 else ''}"]
            lines += [f"  {i}" for i in errors]
            message = "\n".join(lines)
        super().__init__(message, **kw)

    def details(self) -> dict[str, Any]:
        return {"issues": [i.to_dict() for i in self.issues]}


class InputValidationError(StepbridgeError):
    """The run's inputs do not match the program signature (missing, unknown or mistyped fields)."""

    def __init__(self, message: str, *, field: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.field = field

    def details(self) -> dict[str, Any]:
        return {"field": self.field}


class LMError(StepbridgeError):
    """The LM endpoint failed or answered with something unusable."""

    def __init__(self, message: str, *, status: int | None = None, retriable: bool = False, **kw: Any):
        super().__init__(message, **kw)
        self.status = status
        self.retriable = retriable  # type: ignore[misc]

    def details(self) -> dict[str, Any]:
        return {"status": self.status, "retriable": self.retriable}


class StepError(StepbridgeError):
    """A step failed. ``cause`` is the typed error underneath (for example an :class:`LMError`)."""

    def __init__(
        self,
        message: str,
        *,
        step: int,
        module: str | None = None,
        cause: StepbridgeError | dict[str, Any] | None = None,
        pointer: str | None = None,
        **kw: Any,
    ):
        super().__init__(message, **kw)
        self.step = step
        self.module = module
        #: the JSON pointer of the failed step (``/steps/1/loop/steps/0``); ``step`` is its top-level index
        self.pointer = pointer if pointer is not None else f"/steps/{step}"
        self.cause: StepbridgeError | None = error_from_dict(cause) if isinstance(cause, dict) else cause
        if self.cause is not None:
            self.__cause__ = self.cause

    @property
    def retriable(self) -> bool:  # type: ignore[override]
        return bool(self.cause is not None and self.cause.retriable)

    def details(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "module": self.module,
            "cause": self.cause.to_dict() if self.cause is not None else None,
            "pointer": self.pointer,
        }


class OperationError(StepbridgeError):
    """A value operation got a value outside its domain, or a built value went over a size limit.

    ``pointer`` is the JSON pointer of the operation (or literal) in the program file."""

    def __init__(self, message: str, *, pointer: str | None = None, operation: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.pointer = pointer
        self.operation = operation

    def details(self) -> dict[str, Any]:
        return {"pointer": self.pointer, "operation": self.operation}


class RunTimeoutError(StepbridgeError):
    """The run did not finish within its deadline."""

    def __init__(self, message: str, *, timeout: float | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.timeout = timeout

    def details(self) -> dict[str, Any]:
        return {"timeout": self.timeout}


class RunCancelledError(StepbridgeError):
    """The run was cancelled by its caller."""


class WorkerLostError(StepbridgeError):
    """The worker running a request died or went silent, and the request could not be retried; or the
    pool has no worker to run it. ``retry_after`` (seconds), when known, says when capacity returns."""

    retriable = True

    def __init__(self, message: str, *, worker: str | None = None, attempts: int | None = None,
                 retry_after: float | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.worker = worker
        self.attempts = attempts
        self.retry_after = retry_after

    def details(self) -> dict[str, Any]:
        return {"worker": self.worker, "attempts": self.attempts, "retry_after": self.retry_after}


class PoolSaturatedError(StepbridgeError):
    """The pool's queue stayed full for longer than the caller was willing to wait."""

    retriable = True

    def __init__(self, message: str, *, queue_size: int | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.queue_size = queue_size

    def details(self) -> dict[str, Any]:
        return {"queue_size": self.queue_size}


class UnsupportedCapabilityError(StepbridgeError):
    """The program needs a capability the chosen adapter does not declare."""

    def __init__(self, message: str, *, capability: str | None = None, adapter: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.capability = capability
        self.adapter = adapter

    def details(self) -> dict[str, Any]:
        return {"capability": self.capability, "adapter": self.adapter}


class StorageError(StepbridgeError):
    """The store could not be read or written (or is newer than this code)."""


class ConfigurationError(StepbridgeError):
    """The operator's configuration is wrong (a config file, an LM profile name, a pool address, a CLI
    option value): caught before anything runs or is recorded. ``where`` names the file (and line) or
    the option; ``suggestion`` is the closest valid value, if any."""

    def __init__(self, message: str, *, where: str | None = None, suggestion: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.where = where
        self.suggestion = suggestion

    def details(self) -> dict[str, Any]:
        return {"where": self.where, "suggestion": self.suggestion}


def did_you_mean(value: str, known: Iterable[str]) -> str | None:
    """The closest of ``known`` to a mistyped ``value`` (difflib, cutoff 0.6), or None."""
    match = difflib.get_close_matches(value[:200], list(known), n=1, cutoff=0.6)
    return match[0] if match else None


class ProgramNotFound(StorageError):
    """No stored program matches the reference (typed, so a worker or client can tell "unknown" from
    "refused": a tampered or unreadable row is a plain :class:`StorageError`)."""


class ExecutionNotFound(StorageError):
    """No recorded execution has this id."""


class ConversionError(StepbridgeError):
    """A DSPy module could not be turned into a program: ``construct`` names what (a class, a field,
    a statement of ``forward``), ``file``/``line`` where it is written, ``hint`` what to do (the
    message says all three; the importer builds it)."""

    def __init__(self, message: str, *, construct: str | None = None, file: str | None = None,
                 line: int | None = None, hint: str | None = None, report: dict[str, Any] | None = None,
                 **kw: Any):
        super().__init__(message, **kw)
        self.construct = construct
        self.file = file
        self.line = line
        self.hint = hint
        self.report = dict(report or {})

    def details(self) -> dict[str, Any]:
        return {"construct": self.construct, "file": self.file, "line": self.line, "hint": self.hint,
                "report": self.report}


def error_from_dict(data: dict[str, Any]) -> StepbridgeError:
    """Rebuild a typed error from :meth:`StepbridgeError.to_dict` output.

    Unknown type names (a newer peer) degrade to :class:`StepbridgeError`, never to an import.
    """
    cls = StepbridgeError._registry.get(str(data.get("type")), StepbridgeError)
    raw_details = data.get("details")
    details = dict(raw_details) if isinstance(raw_details, dict) else {}
    message = str(data.get("message", ""))
    tb = data.get("traceback")
    try:
        if cls is ProgramValidationError:
            err: StepbridgeError = ProgramValidationError(details.get("issues") or [], message=message)
        elif cls is StepbridgeError:
            err = StepbridgeError(message)
        else:
            err = cls(message, **details)
    except TypeError:
        err = StepbridgeError(message)
    err.remote_traceback = tb
    return err


# Make the base class rebuildable by name as well.
StepbridgeError._registry["StepbridgeError"] = StepbridgeError



class LMParseError(LMError):
    """The LM answered, but not in the format the signature asked for (DSPy's AdapterParseError)."""

    def __init__(self, message: str, *, response: str | None = None, **kw: Any):
        kw.pop("status", None)
        kw.pop("retriable", None)
        super().__init__(message, status=None, retriable=False, **kw)
        self.response = response

    def details(self) -> dict[str, Any]:
        return {"response": scrub(self.response)[:2000] if self.response else None}


class ContextWindowExceededError(LMError):
    """The prompt is longer than the model's context window (OpenAI error code
    ``context_length_exceeded``; DSPy's ``ContextWindowExceededError``). ReAct drops old steps on it."""

    def __init__(self, message: str, **kw: Any):
        kw.pop("retriable", None)
        kw.setdefault("status", 400)
        super().__init__(message, retriable=False, **kw)
