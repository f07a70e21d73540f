"""The Python API without traps: readable batch items, ``b.item`` with or without the call, tools that
return a ``dict`` (annotated ``-> dict``) or a pydantic model."""

from __future__ import annotations

import pytest
import stepbridge as sb
from pydantic import BaseModel, Field
from stepbridge.registry import tool_signature, tools


class Forecast(BaseModel):
    summary: str = Field(description="one line")
    degrees: int


def forecast(city: str) -> Forecast:
    return Forecast(summary=f"sunny in {city}", degrees=21)


async def facts(city: str) -> dict:
    return {"city": city, "population": 3}


def test_batch_items_print_their_row_and_outcome() -> None:
    items = sb.batch("examples/classify.yaml", [{"ticket": "refund me"}, {"ticket": 5}])
    ok, bad = map(repr, items)
    assert ok.startswith("BatchItem(index=0, inputs={'ticket': 'refund me'}, outputs={") and "team" in ok
    assert bad == "BatchItem(index=1, inputs={'ticket': 5}, error=InputValidationError(\"input 'ticket' must " \
                  "be str, got 5\"))"


def test_item_is_accepted_with_or_without_the_call_and_other_functions_are_refused() -> None:
    dumped = []
    for item in ("called", "uncalled"):
        b = sb.ProgramBuilder("m", "xs: list[str] -> ys: list[str]")
        p = b.predict("p", "x -> y")
        r = b.map(p, b.inputs.xs, x=b.item() if item == "called" else b.item)
        dumped.append(b.returns(ys=r.y).build().to_dict())
    assert dumped[0] == dumped[1] and dumped[0]["steps"][0]["with"] == {"x": "$item"}
    b = sb.ProgramBuilder("m", "x -> y")
    p = b.predict("p", "x -> y")
    with pytest.raises(TypeError, match=r"ProgramBuilder.ref is a function, not a value: call it"):
        b.call(p, x=b.ref)


class Place(BaseModel):
    city: str
    country: str


def snapshot(city: str) -> Place:  # a field named like a parameter: the model stays one result
    return Place(city=city, country="FR")


def test_tools_may_return_pydantic_models_and_dicts() -> None:
    assert {k: f.type for k, f in tool_signature(forecast).outputs.items()} == {"summary": "str", "degrees": "int"}
    assert tool_signature(forecast).outputs["summary"].desc == "one line"
    assert {k: f.type for k, f in tool_signature(facts).outputs.items()} == {"result": "dict[str, Any]"}
    assert list(tool_signature(snapshot).outputs) == ["result"]
    tools.register("api_forecast", forecast)
    tools.register("api_facts", facts)
    b = sb.ProgramBuilder("weather", "city -> degrees: int, facts: dict[str, Any]")
    w, f = b.tool("w", "api_forecast"), b.tool("f", "api_facts")
    rw, rf = b.call(w, city=b.inputs.city), b.call(f, city=b.inputs.city)
    program = b.returns(degrees=rw.degrees, facts=rf.result).build()
    assert program.stepbridge == 2  # Any needs format 2: the builder chose it
    for backend in ("native", "dspy"):
        result = sb.run(program, {"city": "Oslo"}, backend=backend)
        assert result.outputs == {"degrees": 21, "facts": {"city": "Oslo", "population": 3}}, backend
