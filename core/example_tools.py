"""Two small tools the examples use (``examples/react_agent.yaml``), registered with stepbridge itself.

They are installed with stepbridge under the entry point group ``stepbridge.tools`` as
``country_facts`` and ``calculate``, so ``stepbridge run examples/react_agent.yaml`` finds them by
name like any tool of an installed package (a program never names an import path). A tool you
register yourself under the same name (``stepbridge.tools.register``) takes precedence.

Both are pure and offline: ``country_facts`` reads a small built-in table; ``calculate`` reads an
arithmetic expression with :mod:`ast` and computes it with bounded numbers (no ``eval``).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

__all__ = ["calculate", "country_facts"]

_COUNTRIES: dict[str, dict[str, Any]] = {
    "Argentina": {"capital": "Buenos Aires", "population_millions": 46.2, "currency": "peso",
                  "continent": "South America"},
    "Australia": {"capital": "Canberra", "population_millions": 26.6, "currency": "Australian dollar",
                  "continent": "Oceania"},
    "Brazil": {"capital": "Brasília", "population_millions": 216.4, "currency": "real", "continent": "South America"},
    "Canada": {"capital": "Ottawa", "population_millions": 40.1, "currency": "Canadian dollar",
               "continent": "North America"},
    "Egypt": {"capital": "Cairo", "population_millions": 112.7, "currency": "Egyptian pound", "continent": "Africa"},
    "France": {"capital": "Paris", "population_millions": 68.2, "currency": "euro", "continent": "Europe"},
    "Germany": {"capital": "Berlin", "population_millions": 84.5, "currency": "euro", "continent": "Europe"},
    "India": {"capital": "New Delhi", "population_millions": 1428.6, "currency": "Indian rupee", "continent": "Asia"},
    "Japan": {"capital": "Tokyo", "population_millions": 124.5, "currency": "yen", "continent": "Asia"},
    "Kenya": {"capital": "Nairobi", "population_millions": 55.1, "currency": "Kenyan shilling", "continent": "Africa"},
    "Mexico": {"capital": "Mexico City", "population_millions": 128.5, "currency": "Mexican peso",
               "continent": "North America"},
    "Nigeria": {"capital": "Abuja", "population_millions": 223.8, "currency": "naira", "continent": "Africa"},
    "Norway": {"capital": "Oslo", "population_millions": 5.5, "currency": "Norwegian krone", "continent": "Europe"},
    "Spain": {"capital": "Madrid", "population_millions": 48.4, "currency": "euro", "continent": "Europe"},
}


def country_facts(country: str) -> dict[str, Any]:
    """Look up a country: its capital, population in millions, currency and continent.

    `country` is a country name, or any text that mentions one."""
    text = country.lower()
    for name, facts in _COUNTRIES.items():
        if re.search(rf"(?<!\w){re.escape(name.lower())}(?!\w)", text):
            return {"country": name, **facts}
    known = ", ".join(_COUNTRIES)
    raise LookupError(f"no facts about {country!r}; known countries: {known}")


_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPRESSION = 200
_MAX_MAGNITUDE = 1e15


def calculate(expression: str) -> float:
    """Compute an arithmetic expression: numbers, + - * / // % ** and parentheses (e.g. "124.5 * 2")."""
    if len(expression) > _MAX_EXPRESSION:
        raise ValueError(f"expression longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from exc
    value = _compute(tree.body)
    return float(round(value, 10))


def _compute(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return _bounded(float(node.value))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_compute(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _compute(node.left), _compute(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or (abs(left) > 1e6 and right > 1)):
            raise ValueError("exponent too large")
        if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise ZeroDivisionError("division by zero")
        return _bounded(_BINARY[type(node.op)](left, right))
    raise ValueError(f"not allowed in an arithmetic expression: {ast.dump(node)[:60]}")


def _bounded(x: Any) -> float:
    if isinstance(x, complex) or not math.isfinite(x) or abs(x) > _MAX_MAGNITUDE:
        raise ValueError("number out of range")
    return float(x)
