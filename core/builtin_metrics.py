"""Built-in metrics: ``(example, prediction) -> float | bool``, found by exact name.

A metric scores one prediction against one example (both plain dicts of field -> value). Metrics are
looked up in the registry :data:`stepbridge.metrics` (explicit registrations, then the entry point
group ``stepbridge.metrics``); these built-ins are registered there through stepbridge's own entry
points, so a third-party package adds metrics the same way. ``best_of_n`` and ``refine`` modules use a metric
as their reward (called with the wrapped module's inputs and its outputs); evaluations call it with a
dataset row and the program's outputs.

A metric that compares one field takes it as the keyword ``field`` (default ``answer``), so
``NAME:FIELD`` on the command line binds it (:func:`stepbridge.registry.metric`).
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Mapping
from typing import Any

from .errors import did_you_mean

__all__ = [
    "contains",
    "exact_match",
    "json_field_equal",
    "normalize_text",
    "numeric_match",
    "passage_match",
    "token_f1",
]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(text: str) -> str:
    """DSPy's (SQuAD's) answer normalisation: NFD, lowercase, no punctuation, no articles, one space."""
    text = unicodedata.normalize("NFD", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _field(data: Mapping[str, Any], field: str, what: str) -> Any:
    if not isinstance(data, Mapping):
        raise TypeError(f"the {what} must be a mapping of field -> value, got {type(data).__name__}")
    if field not in data:
        known = ", ".join(map(str, data)) or "none"
        hint = did_you_mean(field, [k for k in data if isinstance(k, str)])
        raise KeyError(f"the {what} has no field {field!r} (fields: {known})"
                       + (f"; did you mean {hint!r}?" if hint else ""))
    return data[field]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def exact_match(example: Mapping[str, Any], prediction: Mapping[str, Any], *, field: str = "answer") -> bool:
    """Whether the prediction's ``field`` equals the example's after :func:`normalize_text` (DSPy's
    ``answer_exact_match``); the example's value may be a list of acceptable answers."""
    expected = _field(example, field, "example")
    predicted = _text(_field(prediction, field, "prediction"))
    answers = expected if isinstance(expected, list) else [expected]
    if not answers:
        return False
    normalized = normalize_text(predicted)
    return any(normalized == normalize_text(_text(answer)) for answer in answers)


def _answers(example: Mapping[str, Any], field: str) -> list[str]:
    expected = _field(example, field, "example")
    return [_text(a) for a in (expected if isinstance(expected, list) else [expected])]


def _f1(prediction: str, truth: str) -> float:
    """SQuAD token F1 after :func:`normalize_text` (DSPy's ``f1_score``: two empty sides score 0)."""
    pred_tokens = normalize_text(prediction).split()
    truth_tokens = normalize_text(truth).split()
    same = sum((Counter(pred_tokens) & Counter(truth_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(example: Mapping[str, Any], prediction: Mapping[str, Any], *, field: str = "answer") -> float:
    """The best SQuAD token F1 of the prediction's ``field`` against the example's answer(s) (DSPy's ``F1``)."""
    answers = _answers(example, field)
    predicted = _text(_field(prediction, field, "prediction"))
    return max((_f1(predicted, a) for a in answers), default=0.0)


def contains(example: Mapping[str, Any], prediction: Mapping[str, Any], *, field: str = "answer") -> bool:
    """Whether some expected answer, normalised, occurs in the normalised prediction as whole words."""
    predicted = f" {normalize_text(_text(_field(prediction, field, 'prediction')))} "
    return any(f" {normalize_text(a)} " in predicted for a in _answers(example, field) if normalize_text(a))


_TOKEN = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(unicodedata.normalize("NFD", normalize_text(text)))


def passage_match(example: Mapping[str, Any], prediction: Mapping[str, Any], *, field: str = "answer",
                  passages: str = "context") -> bool:
    """Whether a passage of the prediction's ``context`` (a list of texts) holds an expected answer as a run
    of whole tokens (DSPy's ``answer_passage_match``: SQuAD normalisation, then DPR's token match)."""
    found = _field(prediction, passages, "prediction")
    texts = [_text(p) for p in (found if isinstance(found, list) else [found])]
    wanted = [t for t in (_tokens(a) for a in _answers(example, field)) if t]
    for passage in texts:
        tokens = _tokens(passage)
        for answer in wanted:
            n = len(answer)
            if any(tokens[i:i + n] == answer for i in range(len(tokens) - n + 1)):
                return True
    return False


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def json_field_equal(example: Mapping[str, Any], prediction: Mapping[str, Any], *, field: str = "answer") -> bool:
    """Whether the two ``field`` values are equal as JSON (a string holding JSON is parsed first; key order
    and ``1`` vs ``1.0`` do not matter, types otherwise do)."""
    expected = _as_json(_field(example, field, "example"))
    predicted = _as_json(_field(prediction, field, "prediction"))
    return json.dumps(expected, sort_keys=True) == json.dumps(predicted, sort_keys=True) or expected == predicted


_NUMBER = re.compile(r"[-+]?(?:\d+(?:[.,]\d+)*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"the {what} is a boolean, not a number")
    if isinstance(value, int | float):
        return float(value)
    text = _text(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    found = _NUMBER.findall(text)
    if len(found) != 1:
        raise ValueError(f"the {what} {text[:80]!r} holds {'no' if not found else 'more than one'} number")
    return float(found[0].replace(",", ""))


def numeric_match(example: Mapping[str, Any], prediction: Mapping[str, Any], *, field: str = "answer",
                  rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Whether the prediction's number is within tolerance of the example's (``math.isclose``); a text with
    exactly one number in it (``"about 42 km"``) counts as that number."""
    expected = _number(_field(example, field, "example"), "expected value")
    try:
        predicted = _number(_field(prediction, field, "prediction"), "prediction")
    except ValueError:
        return False  # the model's fault, not the metric's: a wrong answer
    return math.isclose(predicted, expected, rel_tol=rel_tol, abs_tol=abs_tol)
