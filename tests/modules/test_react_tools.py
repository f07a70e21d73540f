"""Golden tests: tools as ``dspy.Tool`` (DSPy 3.4.1) reads them — descriptions, argument schemas,
argument validation — against the real DSPy, over a matrix of tool signatures."""

from __future__ import annotations

import asyncio
import enum
from decimal import Decimal
from typing import Any, Literal, Optional

import dspy
import pytest
from pydantic import BaseModel, Field
from stepbridge.react import (
    finish_tool,
    react_instructions,
    tool_error_text,
    tool_spec,
)
from stepbridge.signature import Signature


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    city: str = Field(description="the city")


class Person(BaseModel):
    """A person."""

    name: str
    age: int | None = None
    address: Address
    tags: list[str] = []


def plain(query: str) -> str:
    """Search the web."""
    return query


def with_defaults(query: str, k: int = 3, exact: bool = False, ratio: float = 0.5, note: str | None = None):
    """Several defaults.

        Indented second line.
    """
    return query


def no_doc(x, y: int = 2):
    return x


def typed(items: list[int], table: dict[str, float], mode: Literal["a", "b"] = "a", color: Color = Color.RED,
          price: Decimal = Decimal("1.5"), maybe: Optional[list[str]] = None) -> dict:  # noqa: UP045
    """Typed args."""
    return {}


def models(person: Person, others: list[Address]) -> Person:
    """Takes models."""
    return person


def kwargs_tool(a: int, **rest: Any) -> int:
    """Takes extras."""
    return a


async def async_tool(city: str, days: int = 1) -> str:
    """An async tool."""
    return city


class Callable_:
    """A callable object."""

    def __call__(self, text: str, n: int = 1) -> str:
        return text * n


TOOLS = [plain, with_defaults, no_doc, typed, models, kwargs_tool, async_tool, Callable_()]
NAMES = ["plain", "with_defaults", "no_doc", "typed", "models", "kwargs_tool", "async_tool", "callable"]


@pytest.mark.parametrize(("name", "func"), list(zip(NAMES, TOOLS, strict=True)))
def test_tool_rendering_matches_dspy(name: str, func: Any) -> None:
    ours = tool_spec(name, func)
    theirs = dspy.Tool(func, name=name)
    assert ours.args == theirs.args
    assert ours.desc == (theirs.desc or None)
    assert str(ours) == str(theirs)
    assert ours.has_kwargs == theirs.has_kwargs


def test_finish_tool_matches_dspy() -> None:
    sig = Signature.model_validate("question, context: list[str] -> answer, score: float")
    react = dspy.ReAct("question, context: list[str] -> answer, score: float", tools=[plain])
    assert str(finish_tool(sig)) == str(react.tools["finish"])


@pytest.mark.parametrize("instructions", [None, "Answer well.", "  Line one.\n    Line two.\n\n"])
def test_react_instructions_match_dspy(instructions: str | None) -> None:
    sig = Signature.model_validate("question, context: list[str] -> answer, score: float")
    dsig = dspy.Signature("question, context: list[str] -> answer, score: float")
    if instructions is not None:
        sig = sig.with_instructions(instructions)
        dsig = dsig.with_instructions(instructions)
    tools = [tool_spec(n, f) for n, f in zip(NAMES, TOOLS, strict=True)]
    react = dspy.ReAct(dsig, tools=[dspy.Tool(f, name=n) for n, f in zip(NAMES, TOOLS, strict=True)])
    assert react_instructions(sig, tools) == react.react.signature.instructions


# -- argument validation -------------------------------------------------------------------------
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {"query": "x"}),
    ("plain", {"query": 3}),
    ("plain", {"quer": "x"}),
    ("plain", {}),
    ("with_defaults", {"query": "q", "k": "3"}),
    ("with_defaults", {"query": "q", "k": 2.5}),
    ("with_defaults", {"query": "q", "note": None}),
    ("typed", {"items": [1, "2"], "table": {}}),
    ("typed", {"items": [1, 2], "table": {"a": 1}, "mode": "c"}),
    ("typed", {"items": [1, 2], "table": {"a": 1}, "color": "blue", "price": 2}),
    ("models", {"person": {"name": "Ann", "address": {"street": "s", "city": "c"}}, "others": []}),
    ("models", {"person": {"name": "Ann"}, "others": []}),
    ("models", {"person": {"name": "Ann", "address": {"street": "s", "city": 1}}, "others": [{"street": 1}]}),
    ("kwargs_tool", {"a": 1, "b": 2}),
    ("no_doc", {"x": {"any": ["thing"]}, "y": 3}),
]


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except Exception as exc:
        return "error", f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize(("name", "kwargs"), CALLS)
def test_argument_validation_matches_dspy(name: str, kwargs: dict[str, Any]) -> None:
    func = TOOLS[NAMES.index(name)]
    ours = tool_spec(name, func)
    theirs = dspy.Tool(func, name=name)
    mine = _outcome(lambda: asyncio.run(ours.acall(kwargs)))
    dspys = _outcome(lambda: asyncio.run(theirs.acall(**kwargs)))
    assert mine == dspys


def test_pydantic_argument_arrives_as_model() -> None:
    seen: list[Any] = []

    def tool(person: Person) -> str:
        seen.append(person)
        return person.name

    spec = tool_spec("t", tool)
    out = asyncio.run(spec.acall({"person": {"name": "Bo", "address": {"street": "s", "city": "c"}}}))
    assert out == "Bo"
    assert isinstance(seen[0], Person) and seen[0].address.city == "c"


def test_tool_error_text_is_dspys_first_and_last_lines() -> None:
    """DSPy's observation for a failed call starts with the same header and ends with the same exception
    line; only the stack frames between them (file paths of the implementation) are left out."""
    react = dspy.ReAct("question -> answer", tools=[plain])
    try:
        react.tools["plain"](query=3)
    except Exception as exc:
        from dspy.utils.exceptions import format_error_for_lm

        theirs = f"Execution error in plain: {format_error_for_lm(exc, traceback_frames=5)}"
        ours = tool_error_text("plain", exc)
    assert ours.splitlines()[0] == theirs.splitlines()[0]
    assert ours.splitlines()[-1] == theirs.splitlines()[-1]
    assert "File " not in ours


class Node(BaseModel):
    value: int
    children: list[Node] = []


def test_recursive_model_argument_is_refused() -> None:
    def walk(tree: Node) -> int:
        return tree.value

    with pytest.raises(RecursionError):
        dspy.Tool(walk)  # DSPy cannot describe it either
    with pytest.raises(TypeError, match=r"refers to itself|no JSON schema"):
        tool_spec("walk", walk)
