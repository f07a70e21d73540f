"""Golden tests: best_of_n, refine and multi_chain_comparison against the real DSPy 3.4.1.

The same scripted LM replies go to a program written directly in DSPy and to the stepbridge program
on the native adapter (and the DSPy adapter); every request (messages and temperature) must be equal,
and so must the outputs."""

from __future__ import annotations

from typing import Any

import dspy
import pytest
from stepbridge.program import Program
from stepbridge.registry import metrics

from .conftest import ScriptedLM, chat, run_adapter, run_dspy


def one_word(example: dict[str, Any], prediction: dict[str, Any]) -> float:
    return 1.0 if len(prediction["answer"].split()) == 1 else 0.0


def _dspy_one_word(args: dict[str, Any], pred: Any) -> float:
    return one_word(args, dict(pred))


@pytest.fixture(autouse=True)
def _metric() -> Any:
    metrics.register("one_word", one_word)
    yield
    metrics.unregister("one_word")


def program(kind: str, inner: dict[str, Any], *, n: int = 3, threshold: float = 1.0,
            fail_count: int | None = None, signature: str = "question -> answer") -> Program:
    ens: dict[str, Any] = {"type": kind, "module": "qa", "n": n, "reward": {"metric": "one_word"},
                           "threshold": threshold}
    if fail_count is not None:
        ens["fail_count"] = fail_count
    outputs = [f.strip().split(":")[0] for f in signature.split("->")[1].split(",")]
    return Program.model_validate({
        "stepbridge": 2, "name": "ens", "signature": signature, "lm": {"temperature": 0.0},
        "modules": {"qa": inner, "best": ens},
        "steps": [{"call": "best", "with": {"question": "$inputs.question"}, "as": "r"},
                  {"return": {o: f"$r.{o}" for o in outputs}}],
    })


COT = {"type": "chain_of_thought", "signature": "question -> answer"}
PREDICT = {"type": "predict", "signature": "question -> answer", "instructions": "Answer in one word."}
QUESTION = {"question": "What is the capital of Belgium?"}


def _compare(ours: Any, theirs: Any) -> None:
    assert ours.messages == theirs.messages
    assert ours.temperatures == theirs.temperatures


CASES = {
    # the first attempt meets the threshold: one call
    "first_wins": [chat(reasoning="It is Brussels.", answer="Brussels")],
    # two misses, then a hit
    "third_wins": [chat(reasoning="r1", answer="two words"), chat(reasoning="r2", answer="three words here"),
                   chat(reasoning="r3", answer="Brussels")],
    # never meets the threshold: the best (first highest) is kept
    "none_wins": [chat(reasoning="r1", answer="two words"), chat(reasoning="r2", answer="three more words"),
                  chat(reasoning="r3", answer="four words at last")],
}


ADAPTERS = ["native", "dspy"]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("case", list(CASES))
def test_best_of_n_matches_dspy(scripted: ScriptedLM, case: str, adapter: str) -> None:
    replies = CASES[case]
    theirs = run_dspy(scripted, dspy.BestOfN(dspy.ChainOfThought("question -> answer"), N=3,
                                             reward_fn=_dspy_one_word, threshold=1.0), QUESTION, replies)
    ours = run_adapter(scripted, adapter, program("best_of_n", COT), QUESTION, replies)
    _compare(ours, theirs)
    assert len(ours.requests) == len(replies)
    assert ours.outputs.outputs == {"answer": theirs.outputs.answer}
    assert set(ours.temperatures) == {1.0}


REFINE_CASES = {
    "first_wins": [chat(reasoning="It is Brussels.", answer="Brussels")],
    "advice_then_hit": [
        chat(reasoning="r1", answer="two words"),
        chat(discussion="Too long.", advice={"predict": "Answer with one word."}),
        chat(reasoning="r2", answer="Brussels"),
    ],
    "advice_twice_then_miss": [
        chat(reasoning="r1", answer="two words"),
        chat(discussion="Too long.", advice={"predict": "One word only."}),
        chat(reasoning="r2", answer="still two"),
        chat(discussion="Still too long.", advice={"other": "N/A"}),
        chat(reasoning="r3", answer="three words now"),
    ],
}


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("case", list(REFINE_CASES))
def test_refine_matches_dspy(scripted: ScriptedLM, case: str, adapter: str) -> None:
    replies = REFINE_CASES[case]
    refine = dspy.Refine(dspy.ChainOfThought("question -> answer"), N=3, reward_fn=_dspy_one_word, threshold=1.0)
    from stepbridge.ensembles import metric_source

    refine.reward_fn_code = metric_source(one_word, "one_word")  # stepbridge's reward is the registered metric
    theirs = run_dspy(scripted, refine, QUESTION, replies)
    ours = run_adapter(scripted, adapter, program("refine", COT), QUESTION, replies)
    _compare(ours, theirs)
    assert len(ours.requests) == len(replies)
    assert ours.outputs.outputs == {"answer": theirs.outputs.answer}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_refine_over_predict_matches_dspy(scripted: ScriptedLM, adapter: str) -> None:
    replies = [chat(answer="two words"), chat(discussion="d", advice={"self": "Say one word."}),
               chat(answer="Brussels")]
    refine = dspy.Refine(dspy.Predict(dspy.Signature("question -> answer", "Answer in one word.")), N=2,
                         reward_fn=_dspy_one_word, threshold=1.0)
    from stepbridge.ensembles import metric_source

    refine.reward_fn_code = metric_source(one_word, "one_word")
    theirs = run_dspy(scripted, refine, QUESTION, replies)
    ours = run_adapter(scripted, adapter, program("refine", PREDICT, n=2), QUESTION, replies)
    _compare(ours, theirs)
    assert ours.outputs.outputs == {"answer": theirs.outputs.answer}


def raising_metric(example: dict[str, Any], prediction: dict[str, Any]) -> float:
    if prediction["answer"] == "boom":
        raise RuntimeError("metric failed")
    return one_word(example, prediction)


def _dspy_raising(args: dict[str, Any], pred: Any) -> float:
    return raising_metric(args, dict(pred))


FAILURES = {
    # unparseable replies (each failed attempt costs the chat call and DSPy's JSON fallback)
    "parse_errors_then_hit": (3, None, ["garbage", "more garbage", chat(reasoning="r", answer="Brussels")]),
    "fail_count_1_raises": (3, 1, ["garbage", "garbage", "garbage", "garbage", chat(reasoning="r", answer="x")]),
    "reward_raises_then_hit": (3, None, [chat(reasoning="r", answer="boom"), chat(reasoning="r", answer="Paris")]),
    "everything_fails": (2, None, ["bad", "bad", "bad", "bad"]),
}


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("kind", ["best_of_n", "refine"])
@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_attempts_match_dspy(scripted: ScriptedLM, kind: str, case: str, adapter: str) -> None:
    from stepbridge.errors import StepError

    n, fail_count, replies = FAILURES[case]
    metrics.register("one_word", raising_metric)
    cls = dspy.BestOfN if kind == "best_of_n" else dspy.Refine
    module = cls(dspy.ChainOfThought("question -> answer"), N=n, reward_fn=_dspy_raising, threshold=1.0,
                 fail_count=fail_count)
    try:
        theirs = run_dspy(scripted, module, QUESTION, replies)
        their_error = None
    except Exception as exc:
        their_error, theirs = exc, None
    their_requests = list(scripted.requests)
    try:
        ours = run_adapter(scripted, adapter, program(kind, COT, n=n, fail_count=fail_count), QUESTION, replies)
        our_error = None
    except StepError as exc:
        our_error, ours = exc, None
    our_requests = list(scripted.requests)
    assert [r["messages"] for r in our_requests] == [r["messages"] for r in their_requests]
    if their_error is not None:
        assert our_error is not None
    elif theirs is not None and theirs.outputs is None:  # DSPy returns None when no attempt succeeded
        assert our_error is not None and "none of the" in str(our_error.cause)
    else:
        assert ours is not None and ours.outputs.outputs == {"answer": theirs.outputs.answer}


# -- multi_chain_comparison -------------------------------------------------------------------------
COMPLETIONS = [
    {"reasoning": "Brussels is the capital.\nMore lines.", "answer": "Brussels"},
    {"rationale": "  Belgium's capital is Brussels  ", "reasoning": "ignored", "answer": "Brussels\nsecond line"},
    {"reasoning": "Maybe Antwerp?", "answer": 3},
]


def mcc_program(m: int = 3, lm: dict[str, Any] | None = None, signature: str = "question -> answer") -> Program:
    """A program as a user writes it (validated): its input ``drafts`` is the module's ``completions``
    (``completions`` itself is a reserved field name: ``dspy.Prediction.completions``)."""
    from stepbridge.loader import load_program

    module: dict[str, Any] = {"type": "multi_chain_comparison", "signature": signature, "m": m}
    if lm is not None:
        module["lm"] = lm
    outputs = [f.strip().split(":")[0] for f in signature.split("->")[1].split(",")]
    return load_program({
        "stepbridge": 2, "name": "mcc", "signature": f"drafts: list[dict[str, Any]], {signature}",
        "lm": {"temperature": 0.0},
        "modules": {"cmp": module},
        "steps": [{"call": "cmp", "with": {"completions": "$inputs.drafts", "question": "$inputs.question"},
                   "as": "r"},
                  {"return": {o: f"$r.{o}" for o in outputs}}],
    })


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("temperature", [None, 0.2])
def test_multi_chain_comparison_matches_dspy(scripted: ScriptedLM, temperature: float | None, adapter: str) -> None:
    replies = [chat(rationale="All say Brussels.", answer="Brussels")]
    kwargs = {} if temperature is None else {"temperature": temperature}
    theirs = run_dspy(scripted, dspy.MultiChainComparison("question -> answer", M=3, **kwargs),
                      {"completions": COMPLETIONS, **QUESTION}, replies)
    lm = None if temperature is None else {"temperature": temperature}
    ours = run_adapter(scripted, adapter, mcc_program(lm=lm), {"drafts": COMPLETIONS, **QUESTION}, replies)
    _compare(ours, theirs)
    assert ours.temperatures == [0.7 if temperature is None else temperature]
    assert ours.outputs.outputs == {"answer": "Brussels"}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_multi_chain_comparison_two_outputs_matches_dspy(scripted: ScriptedLM, adapter: str) -> None:
    completions = [{"reasoning": "r1", "answer": "A", "confidence": 0.5},
                   {"reasoning": "r2", "answer": "B", "confidence": 0.25}]
    replies = [chat(rationale="Mixed.", answer="A", confidence="0.75")]
    sig = "question -> answer, confidence: float"
    theirs = run_dspy(scripted, dspy.MultiChainComparison(sig, M=2), {"completions": completions, **QUESTION},
                      replies)
    ours = run_adapter(scripted, adapter, mcc_program(m=2, signature=sig), {"drafts": completions, **QUESTION},
                       replies)
    _compare(ours, theirs)
    assert ours.outputs.outputs == {"answer": "A", "confidence": 0.75}


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("completions", "message"), [
    (COMPLETIONS[:2], "has 2 elements"),
    ([{"answer": "x"}, *COMPLETIONS[1:]], "needs a text 'reasoning'"),
    ([{"reasoning": "r"}, *COMPLETIONS[1:]], "has no field 'answer'"),
    ("not a list", "must be a list"),
])
def test_multi_chain_comparison_refuses_unusable_completions(scripted: ScriptedLM, completions: Any,
                                                             message: str, adapter: str) -> None:
    from stepbridge.errors import StepError

    with pytest.raises(StepError, match=message) as info:
        run_adapter(scripted, adapter, mcc_program(), {"drafts": completions, **QUESTION}, [])
    assert scripted.requests == []  # refused before any LM call
    assert info.value.step == 0
