"""Backends, and the kit for writing one: everything an adapter author needs, from one place.

An adapter is any object with ``name``, ``capabilities``, ``prepare``, ``run`` and ``aclose`` (see
:class:`Adapter`); the core validates programs and inputs, checks capabilities and records runs
around it. The names below are the supported building blocks (``examples/third_party_adapter`` uses
nothing else): the program model, results and traces, the typed errors to raise, DSPy's prompt
format (:class:`Prompt`), the LM client with operator-owned profiles (:class:`LMPool`), value
references and the built-in retriever. Certify an adapter with :mod:`stepbridge.conformance`.

The built-in backends live beside this kit: :mod:`~stepbridge.adapters.native` (stepbridge's own
executor) and :mod:`~stepbridge.adapters.dspy` (real DSPy; needs ``stepbridge[dspy]``).
"""

from stepbridge.adapter import CAPABILITIES, Adapter, RunOptions
from stepbridge.errors import (
    InputValidationError,
    LMError,
    LMParseError,
    RunCancelledError,
    RunTimeoutError,
    StepbridgeError,
    StepError,
    UnsupportedCapabilityError,
    error_from_dict,
)
from stepbridge.formats import Prompt, chain_of_thought
from stepbridge.lm import ChatRequest, LMPool
from stepbridge.program import (
    CallStep,
    ChainOfThoughtModule,
    LMConfig,
    PredictModule,
    Program,
    RetrieveModule,
    ReturnStep,
)
from stepbridge.references import parse_value, resolve
from stepbridge.result import LMCall, RunResult, StepTrace, Usage
from stepbridge.retrieve import make_retriever

__all__ = [
    "CAPABILITIES",
    "Adapter",
    "CallStep",
    "ChainOfThoughtModule",
    "ChatRequest",
    "InputValidationError",
    "LMCall",
    "LMConfig",
    "LMError",
    "LMParseError",
    "LMPool",
    "PredictModule",
    "Program",
    "Prompt",
    "RetrieveModule",
    "ReturnStep",
    "RunCancelledError",
    "RunOptions",
    "RunResult",
    "RunTimeoutError",
    "StepError",
    "StepTrace",
    "StepbridgeError",
    "UnsupportedCapabilityError",
    "Usage",
    "chain_of_thought",
    "error_from_dict",
    "make_retriever",
    "parse_value",
    "resolve",
]
