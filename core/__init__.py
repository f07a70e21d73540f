"""stepbridge: run DSPy-style LM programs, written down as data, on interchangeable backends."""

from .errors import (
    InputValidationError,
    Issue,
    LMError,
    PoolSaturatedError,
    ProgramValidationError,
    RunCancelledError,
    RunTimeoutError,
    StepbridgeError,
    StepError,
    StorageError,
    UnsupportedCapabilityError,
    WorkerLostError,
)
from .program import Program
from .result import LMCall, RunResult, StepTrace, Usage
from .signature import FieldSpec, Signature

__version__ = "0.1.0"

__all__ = [
    "FieldSpec",
    "InputValidationError",
    "Issue",
    "LMCall",
    "LMError",
    "PoolSaturatedError",
    "Program",
    "ProgramValidationError",
    "RunCancelledError",
    "RunResult",
    "RunTimeoutError",
    "Signature",
    "StepError",
    "StepTrace",
    "StepbridgeError",
    "StorageError",
    "UnsupportedCapabilityError",
    "Usage",
    "WorkerLostError",
    "__version__",
]
