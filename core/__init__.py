"""stepbridge: run DSPy-style LM programs, written down as data, on interchangeable backends."""

from .adapter import Adapter, RunOptions
from .builder import ProgramBuilder
from .datasets import Dataset, load_dataset
from .errors import (
    ConfigurationError,
    InputValidationError,
    Issue,
    LMError,
    LMParseError,
    OperationError,
    PoolSaturatedError,
    ProgramNotFound,
    ProgramValidationError,
    RunCancelledError,
    RunTimeoutError,
    StepbridgeError,
    StepError,
    StorageError,
    UnsupportedCapabilityError,
    WorkerLostError,
)
from .evaluation import EvaluationResult, aevaluate, evaluate
from .loader import load_program
from .optimization import OptimizationResult, aoptimize, optimize
from .program import LMConfig, Program
from .recorder import AsyncRecorder, BatchRecorder, ProgramSource, Recorder
from .registry import dspy_modules, load_adapter, metrics, retrievers, tools
from .result import LMCall, RunResult, StepTrace, Usage
from .runner import BatchItem, Runner, batch, load, run
from .signature import FieldSpec, Signature
from .validate import check_inputs, validate

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "AsyncRecorder",
    "BatchItem",
    "BatchRecorder",
    "ConfigurationError",
    "Dataset",
    "EvaluationResult",
    "FieldSpec",
    "InputValidationError",
    "Issue",
    "LMCall",
    "LMConfig",
    "LMError",
    "LMParseError",
    "OperationError",
    "OptimizationResult",
    "PoolSaturatedError",
    "Program",
    "ProgramBuilder",
    "ProgramNotFound",
    "ProgramSource",
    "ProgramValidationError",
    "Recorder",
    "RunCancelledError",
    "RunOptions",
    "RunResult",
    "RunTimeoutError",
    "Runner",
    "Signature",
    "StepError",
    "StepTrace",
    "StepbridgeError",
    "StorageError",
    "UnsupportedCapabilityError",
    "Usage",
    "WorkerLostError",
    "__version__",
    "aevaluate",
    "aoptimize",
    "batch",
    "check_inputs",
    "dspy_modules",
    "evaluate",
    "load",
    "load_adapter",
    "load_dataset",
    "load_program",
    "metrics",
    "optimize",
    "retrievers",
    "run",
    "tools",
    "validate",
]
