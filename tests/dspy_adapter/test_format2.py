"""Format-2 programs on the DSPy adapter: still a real dspy.Module whose predictors DSPy's optimizers
see, and runnable under plain DSPy (sync ``forward`` and async ``aforward``) through the shared
interpreter with the same outputs as the adapter."""

from __future__ import annotations

import asyncio
from typing import Any

import dspy
import pytest
from sb_dspy import EXAMPLES
from stepbridge import RunOptions, load_program
from stepbridge.adapters.dspy import DSPyAdapter, ProgramModule


@pytest.mark.parametrize("name, question", [
    ("multihop_loop", "Where was the designer of the Eiffel Tower born?"),
    ("router", "Which place is the Louvre museum in?"),
    ("router", "What is DSPy?"),
])
def test_format_2_program_runs_under_plain_dspy(server: Any, dspy_lm: Any, dspy_adapter: DSPyAdapter, name: str,
                                                question: str) -> None:
    program = load_program(EXAMPLES / f"{name}.yaml")
    module = ProgramModule(program)
    inputs = {"question": question}
    with dspy.context(lm=dspy_lm):
        sync = module(**inputs)
        asynchronous = asyncio.run(module.acall(**inputs))
    result = asyncio.run(dspy_adapter.run(program, inputs, RunOptions()))
    assert dict(sync) == dict(asynchronous) == result.outputs


def test_format_2_predictors_are_visible_to_optimizers(dspy_adapter: DSPyAdapter) -> None:
    module = dspy_adapter.module(load_program(EXAMPLES / "router.yaml"))
    assert isinstance(module, dspy.Module)
    assert sorted(name for name, _ in module.named_predictors()) == [
        "classify", "direct", "person_fact", "place_answer.predict"]


def test_sync_forward_runs_inside_a_running_event_loop(server: Any, dspy_lm: Any) -> None:
    """``module(...)`` from code that already runs an event loop (a notebook, an async app)."""
    program = load_program(EXAMPLES / "multihop_loop.yaml")
    module = ProgramModule(program)

    async def inside() -> Any:
        with dspy.context(lm=dspy_lm):
            return module(question="Where was the designer of the Eiffel Tower born?")

    assert "Dijon" in asyncio.run(inside()).answer
