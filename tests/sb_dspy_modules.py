"""DSPy modules of every shape, registered by name for the security tests, and the adapter pool
workers host (``--backend sb_dspy_modules:make_adapter``), so workers know the same names.

Shapes: a bare ``dspy.Predict`` (its state has the predictor keys at the top), ``ChainOfThought``
(``predict``), a module nesting predictors in a sub-module, a list and a dict, and ``ReAct``.
"""

from __future__ import annotations

from typing import Any

import dspy
from stepbridge.adapters.dspy import DSPyAdapter
from stepbridge.registry import dspy_modules


class Nested(dspy.Module):
    """Predictors at every depth DSPy's named_parameters() knows: ``inner.predict``, ``hops[0]``,
    ``by_name['first']``."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = dspy.ChainOfThought("question -> answer")
        self.hops = [dspy.Predict("question -> query"), dspy.Predict("query -> answer")]
        self.by_name = {"first": dspy.Predict("question -> answer")}

    def forward(self, question: str) -> dspy.Prediction:
        return self.by_name["first"](question=question)


def lookup(query: str) -> str:
    """Look a query up."""
    return f"found {query}"


def react() -> dspy.Module:
    return dspy.ReAct("question -> answer", tools=[lookup], max_iters=2)


dspy_modules.register("sec_bare_predict", dspy.Predict("question -> answer"))
dspy_modules.register("sec_cot", dspy.ChainOfThought("question -> answer"))
dspy_modules.register("sec_nested", Nested)
dspy_modules.register("sec_react", react)


def make_adapter(**kwargs: Any) -> DSPyAdapter:
    return DSPyAdapter(**kwargs)


def program(module: str, state: Any, name: str = "attack") -> dict[str, Any]:
    """A program with one ``dspy`` step running ``module`` with ``state``."""
    return {
        "stepbridge": 1,
        "name": name,
        "signature": "question -> answer",
        "modules": {"m": {"type": "dspy", "module": module, "signature": "question -> answer", "state": state}},
        "steps": [{"call": "m", "with": {"question": "$inputs.question"}, "as": "r"},
                  {"return": {"answer": "$r.answer"}}],
    }
