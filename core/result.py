"""What a run returns: outputs, a per-step trace with every LM call, usage and timings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LMCall", "RunResult", "StepTrace", "Usage", "constructor", "fast_construct"]

_M = TypeVar("_M", bound=BaseModel)


class Usage(BaseModel):
    """Token counts, summed over LM calls."""

    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    lm_calls: int = 0

    @classmethod
    def zero(cls) -> Usage:
        """``Usage()`` without validation (one per run on the hot path)."""
        obj = _new(cls)
        _setattr(obj, "__dict__", {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "lm_calls": 0})
        _set_fields(obj, set())
        _set_extra(obj, {})
        _set_private(obj, None)
        return obj

    def add(self, other: Usage | dict[str, Any] | None, *, calls: int = 0) -> None:
        """Add token counts (an LM response's ``usage`` dict, or another Usage) and ``calls`` LM calls."""
        d = self.__dict__  # plain int bumps: this runs once per LM call on the hot path
        d["lm_calls"] += calls
        if other is None:
            return
        data = other if isinstance(other, dict) else other.__dict__
        for key in _COUNTS:
            value = data.get(key)
            if value:
                d[key] += value if type(value) is int else int(value)


_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens", "lm_calls")


class LMCall(BaseModel):
    """One chat-completions call as it went over the wire (or would have)."""

    model: str
    messages: list[dict[str, Any]]
    response: str | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    latency_ms: float = 0.0
    cached: bool = False
    error: dict[str, Any] | None = None


class StepTrace(BaseModel):
    """One record per executed step, in the order steps start (a ``map`` step's per-element calls and a
    ``parallel`` step's calls are in ``children``; the steps inside ``if``/``switch``/``loop`` follow it)."""

    step: int
    kind: str  # call | map | return | set | if | switch | loop | parallel
    module: str | None = None
    module_type: str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: Any = None
    lm_calls: list[LMCall] = Field(default_factory=list)
    children: list[StepTrace] = Field(default_factory=list)
    duration_ms: float = 0.0
    error: dict[str, Any] | None = None
    #: JSON pointer of the step in the program (``/steps/1/loop/steps/0``); ``step`` is its top-level index
    pointer: str = ""
    #: inside loops: the 0-based pass number of each enclosing loop, outermost first
    passes: list[int] = Field(default_factory=list)


class RunResult(BaseModel):
    """The result of one run on any backend. Equal programs and inputs give equal ``outputs``."""

    outputs: dict[str, Any]
    trace: list[StepTrace] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    backend: str
    program_hash: str
    execution_id: str
    duration_ms: float = 0.0
    attempts: int = 1
    worker: str | None = None

    def step_sequence(self) -> list[tuple[int, str, str | None]]:
        """(index, kind, module) per step: what equivalence across adapters compares."""
        return [(s.step, s.kind, s.module) for s in self.trace]

    def flow_sequence(self) -> list[tuple[str, str, str | None, tuple[int, ...]]]:
        """(pointer, kind, module, loop passes) per step: the same on every conformant adapter."""
        return [(s.pointer, s.kind, s.module, tuple(s.passes)) for s in self.trace]


def fast_construct(cls: type[_M], values: dict[str, Any]) -> _M:
    """Build a model from already-valid values with *every* field given, skipping validation.

    ``model_construct`` does the same but walks the fields and their defaults on each call, which
    shows up in the native executor's per-step overhead. ``tests/test_result.py`` checks that
    objects built this way equal validated ones.
    """
    obj = _new(cls)
    _setattr(obj, "__dict__", values)
    shared = _ALL_FIELDS.get(cls)
    if shared is None:
        shared = _ALL_FIELDS[cls] = _all_fields(cls)
    _set_fields(obj, shared if shared and len(values) == len(shared) else set(values))
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


def constructor(cls: type[_M]) -> Callable[[dict[str, Any]], _M]:
    """:func:`fast_construct` for ``cls``, prepared once: every field must be given (the per-step trace
    records and LM-call records, built several times per loop pass, skip its per-call lookups)."""
    fields = _all_fields(cls)
    if not fields:
        raise TypeError(f"{cls.__name__} accepts extra fields: use fast_construct")

    def construct(values: dict[str, Any]) -> _M:
        obj = _new(cls)
        _setattr(obj, "__dict__", values)
        _set_fields(obj, fields)
        _set_extra(obj, None)
        _set_private(obj, None)
        return obj

    return construct


#: Per model: the one set of all its field names that objects built with every field share (a set per
#: object was a GC-tracked container per trace record, kept as long as the result). Sharing is safe:
#: pydantic only ever adds a field name to it, and every name is already in it. Not for models that
#: accept extra fields (their names would be added).
_ALL_FIELDS: dict[type, set[str]] = {}


def _all_fields(cls: type[BaseModel]) -> set[str]:
    return set() if cls.model_config.get("extra") == "allow" else set(cls.model_fields)


# BaseModel's slots, set through their descriptors: half the cost of four object.__setattr__ calls
_new = object.__new__
_setattr = object.__setattr__
_set_fields = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


