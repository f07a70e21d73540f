"""The metrics registry (``stepbridge.metrics``) and the built-in metrics, against DSPy's own."""

from __future__ import annotations

from typing import Any

import dspy
import pytest
import stepbridge
from dspy.evaluate.metrics import answer_exact_match, normalize_text
from hypothesis import given, settings
from hypothesis import strategies as st
from stepbridge.builtin_metrics import exact_match
from stepbridge.builtin_metrics import normalize_text as our_normalize
from stepbridge.registry import metric

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_normalisation_is_dspys(text: str) -> None:
    assert our_normalize(text) == normalize_text(text)


@settings(max_examples=300, deadline=None)
@given(TEXT, st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=3)))
def test_exact_match_agrees_with_dspy(predicted: str, expected: str | list[str]) -> None:
    theirs = answer_exact_match(dspy.Example(answer=expected), dspy.Prediction(answer=predicted))
    assert exact_match({"answer": expected}, {"answer": predicted}) == theirs


@pytest.mark.parametrize(("expected", "predicted", "result"), [
    ("Paris", "paris", True),
    ("The Eiffel Tower", "eiffel tower!", True),
    (["Louvre", "Eiffel Tower"], "the eiffel  tower", True),
    ("Paris", "Paris, France", False),
    ("4", 4, True),  # a non-text prediction is compared as its text
    ([], "x", False),
])
def test_exact_match_cases(expected: Any, predicted: Any, result: bool) -> None:
    assert exact_match({"answer": expected}, {"answer": predicted}) is result


def test_exact_match_on_another_field() -> None:
    bound = metric("exact_match", "label")
    assert bound({"label": "Positive"}, {"label": "positive."}) is True
    with pytest.raises(KeyError, match="no field 'label'"):
        bound({"label": "x"}, {"answer": "x"})


def test_registry_is_exact_names_only() -> None:
    assert "exact_match" in stepbridge.metrics
    assert "exact_matc" not in stepbridge.metrics
    assert "stepbridge.builtin_metrics:exact_match" not in stepbridge.metrics
    with pytest.raises(KeyError, match="no metric registered as 'exact'"):
        stepbridge.metrics.get("exact")


def test_register_and_bind() -> None:
    @stepbridge.metrics.register("sb_test_len")
    def by_length(example: dict[str, Any], prediction: dict[str, Any]) -> float:
        return float(len(prediction["answer"]))

    try:
        assert stepbridge.metrics.get("sb_test_len") is by_length
        assert "sb_test_len" in stepbridge.metrics.names()
        with pytest.raises(TypeError, match="compares no single field"):
            metric("sb_test_len", "answer")
        with pytest.raises(TypeError, match="must be callable"):
            stepbridge.metrics.register("sb_test_bad", 3)
    finally:
        stepbridge.metrics.unregister("sb_test_len")
    assert "sb_test_len" not in stepbridge.metrics
