"""RunResult and trace records: the fast constructor agrees with validation, JSON round trips."""

from __future__ import annotations

import pytest
from stepbridge.result import LMCall, RunResult, StepTrace, Usage, constructor, fast_construct


def test_fast_construct_equals_validated_model() -> None:
    call = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response": "r", "usage": {"a": 1},
            "latency_ms": 1.5, "cached": False, "error": None}
    assert fast_construct(LMCall, dict(call)) == LMCall(**call)
    assert constructor(LMCall)(dict(call)) == LMCall(**call)
    assert constructor(LMCall)(dict(call)).model_fields_set == LMCall(**call).model_fields_set
    step = {"step": 0, "kind": "call", "module": "m", "module_type": "predict", "inputs": {"q": 1},
            "outputs": {"a": 2}, "lm_calls": [LMCall(**call)], "children": [], "duration_ms": 2.0, "error": None,
                "pointer": "/steps/0/loop/steps/1", "passes": [2]}
    fast = fast_construct(StepTrace, dict(step))
    assert fast == StepTrace(**step)
    assert fast.model_dump() == StepTrace(**step).model_dump()
    prepared = constructor(StepTrace)(dict(step))
    assert prepared == StepTrace(**step)
    assert prepared.model_dump_json() == StepTrace(**step).model_dump_json()
    result = {"outputs": {"a": 2}, "trace": [fast], "usage": Usage(prompt_tokens=3), "backend": "native",
              "program_hash": "h", "execution_id": "e", "duration_ms": 1.0, "attempts": 1, "worker": None}
    built = fast_construct(RunResult, dict(result))
    assert built == RunResult(**result)
    # and it survives a JSON round trip as a validated model
    assert RunResult.model_validate_json(built.model_dump_json()) == built


def test_constructor_refuses_models_with_extra_fields() -> None:
    """Usage accepts extra counts: the names set on an object are its own, so it has no prepared constructor."""
    with pytest.raises(TypeError, match="extra"):
        constructor(Usage)


def test_usage_add_sums_tokens_and_calls() -> None:
    usage = Usage()
    usage.add({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    usage.add(Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2, lm_calls=1))
    usage.add(None)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.lm_calls) == (4, 3, 7, 1)
