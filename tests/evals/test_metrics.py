"""Built-in metrics: by registered name, SQuAD-normalised like DSPy's (checked against dspy 3.4.1 itself)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stepbridge.builtin_metrics import (
    contains,
    exact_match,
    json_field_equal,
    numeric_match,
    passage_match,
    token_f1,
)
from stepbridge.registry import metric, metrics

words = st.lists(st.sampled_from(["the", "a", "Paris", "paris,", "Eiffel", "tower", "is", "in", "2", "an", "x!"]),
                 max_size=6).map(" ".join)


def test_registered_by_name() -> None:
    for name in ("exact_match", "token_f1", "contains", "passage_match", "json_field_equal", "numeric_match"):
        assert name in metrics.names()
    bound = metric("token_f1", "city")
    assert bound({"city": "Paris"}, {"city": "paris"}) == 1.0


@settings(max_examples=200, deadline=None)
@given(words, words)
def test_token_f1_and_exact_match_equal_dspy(pred: str, gold: str) -> None:
    from dspy.evaluate.metrics import EM, F1

    assert token_f1({"answer": gold}, {"answer": pred}) == pytest.approx(F1(pred, [gold]))
    assert exact_match({"answer": gold}, {"answer": pred}) == EM(pred, [gold])


def test_passage_match_like_dspy() -> None:
    import dspy
    from dspy.evaluate.metrics import answer_passage_match

    cases = [("Eiffel Tower", ["The Eiffel Tower is in Paris.", "x"]), ("tower", ["Towers of Hanoi"]),
             ("Paris", ["paris, France"]), ("New York", ["new-york city", "York, New"])]
    for answer, passages in cases:
        ours = passage_match({"answer": answer}, {"context": passages})
        theirs = answer_passage_match(dspy.Example(answer=answer), dspy.Prediction(context=passages))
        assert ours == bool(theirs), (answer, passages)


def test_contains_json_numeric() -> None:
    assert contains({"answer": "Paris"}, {"answer": "It is Paris, France."})
    assert not contains({"answer": "Par"}, {"answer": "It is Paris."})  # whole words only
    assert json_field_equal({"answer": '{"a": [1, 2], "b": null}'}, {"answer": {"b": None, "a": [1, 2]}})
    assert not json_field_equal({"answer": '{"a": 1}'}, {"answer": '{"a": "1"}'})
    assert numeric_match({"answer": 42}, {"answer": "about 42.0000000001 km"})
    assert not numeric_match({"answer": "42"}, {"answer": "41 or 42"})  # two numbers: not an answer
    assert numeric_match({"answer": "1,000"}, {"answer": 1000})
    with pytest.raises(KeyError, match="no field 'answer'"):
        exact_match({"answer": "x"}, {"other": "x"})
