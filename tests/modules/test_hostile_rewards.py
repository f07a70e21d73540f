"""Hostile rewards: metrics that raise, return NaN, text, None or booleans, and judges whose replies do not
parse. Each backend does what DSPy does with them (the same requests), and a run never ends untyped."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import dspy
import pytest
from stepbridge.errors import StepError
from stepbridge.program import Program
from stepbridge.registry import metrics

from .conftest import ScriptedLM, chat, run_adapter, run_dspy

QUESTION = {"question": "Capital of Belgium?"}
REPLIES = [chat(reasoning="r1", answer="a"), chat(reasoning="r2", answer="b"), chat(reasoning="r3", answer="c")]


def _program(reward: dict[str, Any], modules: dict[str, Any] | None = None) -> Program:
    return Program.model_validate({
        "stepbridge": 2, "name": "hostile", "signature": "question -> answer", "lm": {"temperature": 0.0},
        "modules": {"qa": {"type": "chain_of_thought", "signature": "question -> answer"}, **(modules or {}),
                    "best": {"type": "best_of_n", "module": "qa", "n": 3, "reward": reward, "threshold": 1.0}},
        "steps": [{"call": "best", "with": {"question": "$inputs.question"}, "as": "r"},
                  {"return": {"answer": "$r.answer"}}],
    })


REWARDS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Any]] = {
    "nan": lambda e, p: math.nan,
    "text": lambda e, p: "high",
    "none": lambda e, p: None,
    "true_on_b": lambda e, p: p["answer"] == "b",
    "nan_then_half": lambda e, p: math.nan if p["answer"] == "a" else 0.5,
    "raises_type_error": lambda e, p: e["no such field"],
}


@pytest.fixture
def reward_name() -> Iterator[str]:
    yield "sb_hostile"
    metrics.unregister("sb_hostile")


@pytest.mark.parametrize("adapter", ["native", "dspy"])
@pytest.mark.parametrize("kind", list(REWARDS))
def test_hostile_metric_rewards(scripted: ScriptedLM, reward_name: str, kind: str, adapter: str) -> None:
    reward = REWARDS[kind]
    metrics.register(reward_name, reward)
    module = dspy.BestOfN(dspy.ChainOfThought("question -> answer"), N=3,
                          reward_fn=lambda args, pred: reward(args, dict(pred)), threshold=1.0)
    try:
        theirs: Any = run_dspy(scripted, module, QUESTION, REPLIES).outputs
    except Exception as exc:
        theirs = exc
    their_requests = [r["messages"] for r in scripted.requests]
    try:
        ours: Any = run_adapter(scripted, adapter, _program({"metric": reward_name}), QUESTION, REPLIES).outputs
    except StepError as exc:
        ours = exc
    assert [r["messages"] for r in scripted.requests] == their_requests
    if isinstance(theirs, Exception):
        assert isinstance(ours, StepError)
    elif theirs is None:  # no attempt had a comparable reward: DSPy returns None, stepbridge fails the step
        assert isinstance(ours, StepError) and "none of the 3 attempts" in str(ours.cause)
        assert ours.cause is not None and type(ours.cause).__name__ == "StepbridgeError"
    else:
        assert ours.outputs == {"answer": theirs.answer}
    expected = {"nan": None, "text": None, "none": None, "true_on_b": "b", "nan_then_half": "b",
                "raises_type_error": None}[kind]
    if expected is not None:
        assert ours.outputs == {"answer": expected}


@pytest.mark.parametrize("adapter", ["native", "dspy"])
def test_a_judge_whose_replies_do_not_parse_fails_each_attempt(scripted: ScriptedLM, adapter: str) -> None:
    judge = {"judge": {"type": "predict", "signature": "question, answer -> score: float"}}
    replies = [chat(reasoning="r1", answer="a"), "no fields", "still none",
               chat(reasoning="r2", answer="b"), chat(score="2.5")]
    result = run_adapter(scripted, adapter, _program({"module": "judge", "field": "score"}, judge), QUESTION,
                         replies)
    assert result.outputs.outputs == {"answer": "b"}
    assert len(scripted.requests) == 5  # attempt, judge (chat + JSON fallback), attempt, judge


def test_failed_attempts_are_logged_not_printed(scripted: ScriptedLM, reward_name: str,
                                                capsys: pytest.CaptureFixture[str],
                                                caplog: pytest.LogCaptureFixture) -> None:
    """DSPy prints a failed attempt to stdout; under stepbridge (both backends) it is a log line, so a
    command's stdout (``--json``) carries only its output."""
    metrics.register(reward_name, REWARDS["raises_type_error"])
    for adapter in ("native", "dspy"):
        with pytest.raises(StepError):
            run_adapter(scripted, adapter, _program({"metric": reward_name}), QUESTION, REPLIES)
    assert capsys.readouterr().out == ""
    logged = [r.getMessage() for r in caplog.records if "Attempt" in r.getMessage()]
    assert any(m.startswith("BestOfN: Attempt 1 failed with rollout id 0") for m in logged)
    assert len(logged) == 6
