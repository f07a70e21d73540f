"""The reference LM plays ReAct, MultiChainComparison and Refine's advice step: driven here by the real
DSPy over HTTP (a real reference LM server on loopback), deterministic answers asserted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dspy
import pytest
from stepbridge.example_tools import calculate, country_facts
from stepbridge.reference_lm import running_server


@pytest.fixture(scope="module")
def lm() -> Iterator[Any]:
    with running_server() as url:
        yield dspy.LM("openai/reference", api_base=str(url), api_key="unused", cache=False, temperature=0.0)


def _agent(max_iters: int = 5) -> Any:
    return dspy.ReAct("question -> answer", tools=[dspy.Tool(country_facts, name="country_facts"),
                                                  dspy.Tool(calculate, name="calculate")], max_iters=max_iters)


@pytest.mark.parametrize(("question", "tools", "answer"), [
    ("What is the capital of Japan?", ["country_facts"], "Tokyo"),
    ("What currency does Kenya use?", ["country_facts"], "Kenyan shilling"),
    ("How many people live in France, in millions, times 2?", ["country_facts", "calculate"], "136.4"),
    ("What is 17 plus 25?", ["calculate"], "42"),
])
def test_agent_chooses_tools_then_finishes(lm: Any, question: str, tools: list[str], answer: str) -> None:
    with dspy.context(lm=lm):
        prediction = _agent()(question=question)
    trajectory = prediction.trajectory
    called = [v for k, v in trajectory.items() if k.startswith("tool_name_")]
    assert called == [*tools, "finish"]
    assert prediction.answer == answer
    assert not any(str(v).startswith("Execution error") for k, v in trajectory.items() if "observation" in k)


def test_agent_is_deterministic_and_bounded(lm: Any) -> None:
    with dspy.context(lm=lm):
        first = _agent(max_iters=1)(question="How many people live in France, in millions, times 2?")
        again = _agent(max_iters=1)(question="How many people live in France, in millions, times 2?")
    assert first.trajectory == again.trajectory
    assert [k for k in first.trajectory if k.startswith("tool_name_")] == ["tool_name_0"]


def test_agent_finishes_after_a_tool_error(lm: Any) -> None:
    def broken(query: str) -> str:
        """Search for anything."""
        raise RuntimeError("backend down")

    agent = dspy.ReAct("question -> answer", tools=[dspy.Tool(broken, name="search")], max_iters=10)
    with dspy.context(lm=lm):
        prediction = agent(question="Who wrote Hamlet?")
    called = [v for k, v in prediction.trajectory.items() if k.startswith("tool_name_")]
    assert called == ["search", "finish"]


def test_agent_with_no_tools_finishes_at_once(lm: Any) -> None:
    agent = dspy.ReAct("question -> answer", tools=[], max_iters=10)
    with dspy.context(lm=lm):
        prediction = agent(question="What is two plus two?")
    assert [v for k, v in prediction.trajectory.items() if k.startswith("tool_name_")] == ["finish"]


def test_comparison_takes_the_majority(lm: Any) -> None:
    completions = [{"reasoning": "r", "answer": "Brussels"}, {"reasoning": "r", "answer": "Antwerp"},
                   {"reasoning": "r", "answer": "Brussels"}]
    with dspy.context(lm=lm):
        prediction = dspy.MultiChainComparison("question -> answer", M=3)(completions=completions,
                                                                          question="Capital of Belgium?")
    assert prediction.answer == "Brussels"
    assert "2 of 3" in prediction.rationale


def test_comparison_of_numbers_answers_a_number(lm: Any) -> None:
    completions = [{"reasoning": "r", "total": 4}, {"reasoning": "r", "total": 4}]
    with dspy.context(lm=lm):
        prediction = dspy.MultiChainComparison("question -> total: int", M=2)(completions=completions,
                                                                              question="2+2?")
    assert prediction.total == 4


def test_refine_gets_advice_for_each_predictor(lm: Any) -> None:
    from dspy.predict.refine import OfferFeedback

    with dspy.context(lm=lm):
        advice = dspy.Predict(OfferFeedback)(
            program_code="class X: ...", modules_defn="...", program_inputs="{}", program_trajectory="[]",
            program_outputs="{}", reward_code="def r(a, p): return 0.0", target_threshold="1.0",
            reward_value="0.0", module_names='[\n  "react",\n  "extract.predict"\n]').advice
    assert set(advice) == {"react", "extract.predict"}
    assert all("0.0" in text for text in advice.values())


def test_context_fault_is_a_context_window_error_on_every_path() -> None:
    """``reference/context-<n>``: the server answers 400 ``context_length_exceeded`` (DSPy raises its
    ContextWindowExceededError), the native HTTP and in-process clients raise stepbridge's."""
    from stepbridge.errors import ContextWindowExceededError
    from stepbridge.lm import ChatRequest, HTTPLMClient, InProcessLMClient, LMProfile

    long = [{"role": "user", "content": "x" * 200}]
    short = [{"role": "user", "content": "hi"}]
    with running_server() as url:
        lm = dspy.LM("openai/reference/context-100", api_base=str(url), api_key="unused", cache=False,
                     num_retries=0)
        with pytest.raises(dspy.ContextWindowExceededError):
            lm(messages=long)
        assert lm(messages=short)

        async def native() -> None:
            for client in (HTTPLMClient(LMProfile(name="p", base_url=str(url), max_retries=0)), InProcessLMClient()):
                try:
                    with pytest.raises(ContextWindowExceededError, match="maximum context length is 100"):
                        await client.complete(ChatRequest(model="reference/context-100", messages=long))
                    assert (await client.complete(ChatRequest(model="reference/context-100", messages=short))).text
                finally:
                    await client.aclose()

        import asyncio

        asyncio.run(native())
