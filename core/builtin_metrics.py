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

import re
import string
import unicodedata
from collections.abc import Mapping
from typing import Any

__all__ = ["exact_match", "normalize_text"]

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
        raise KeyError(f"the {what} has no field {field!r} (fields: {known})")
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
