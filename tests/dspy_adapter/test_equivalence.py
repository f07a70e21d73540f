"""Native and DSPy adapters send byte-identical chat messages and return equal outputs and steps."""

from __future__ import annotations

from typing import Any

import pytest
from sb_dspy import EXAMPLES, last_seq, logged_messages, run
from stepbridge import RunOptions, load_program
from stepbridge.program import LMConfig

QUESTION = {"question": "Who designed the Eiffel Tower?"}

TYPED_PROGRAMS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "typed_fields": ({
        "stepbridge": 1, "name": "typed", "signature": "text, numbers: list[int] -> total: int, ok: bool",
        "modules": {"sum": {"type": "predict",
                            "signature": "text, numbers: list[int] -> total: int, ok: bool, parts: list[str]"}},
        "steps": [{"call": "sum", "with": {"text": "$inputs.text", "numbers": "$inputs.numbers"}, "as": "s"},
                  {"return": {"total": "$s.total", "ok": "$s.ok"}}],
    }, {"text": "add 3 and 4", "numbers": [3, 4]}),
    "json_adapter": ({
        "stepbridge": 1, "name": "json_prog", "signature": "text -> label: Literal['a', 'b'], score: float",
        "lm": {"adapter": "json", "temperature": 0.0},
        "modules": {"judge": {"type": "chain_of_thought",
                              "signature": {"instructions": "Label the text.\n  Be strict.",
                                            "inputs": {"text": {"desc": "what to label"}},
                                            "outputs": {"label": {"type": "Literal['a', 'b']"},
                                                        "score": {"type": "float", "desc": "0..1"}}}}},
        "steps": [{"call": "judge", "with": {"text": "$inputs.text"}, "as": "j"},
                  {"return": {"label": "$j.label", "score": "$j.score"}}],
    }, {"text": "this is clearly b"}),
    "demos_optional_dict": ({
        "stepbridge": 1, "name": "demos", "signature": "doc -> counts: dict[str, int], note: Optional[str]",
        "lm": {"max_tokens": 300},
        "modules": {"count": {"type": "predict", "signature": "doc -> counts: dict[str, int], note: Optional[str]",
                              "instructions": "Count words. «ünïcödé» 日本語",
                              "demos": [{"doc": "a a b", "counts": {"a": 2, "b": 1}, "note": None},
                                        {"doc": "only input and one output", "counts": {"x": 1}}]}},
        "steps": [{"call": "count", "with": {"doc": "$inputs.doc"}, "as": "c"},
                  {"return": {"counts": "$c.counts", "note": "$c.note"}}],
    }, {"doc": "the cat and the hat"}),
}


def _compare(loop: Any, server: Any, native: Any, dspy_adapter: Any, program: Any, inputs: dict[str, Any],
             options: RunOptions | None = None) -> tuple[Any, Any]:
    start = last_seq(server)
    native_result = run(loop, native, program, inputs, options)
    middle = last_seq(server)
    dspy_result = run(loop, dspy_adapter, program, inputs, options)
    native_sent = logged_messages(server, start, until=middle)
    dspy_sent = logged_messages(server, middle)
    assert native_sent, "the native adapter sent nothing to the server"
    assert dspy_sent == native_sent
    assert dspy_result.outputs == native_result.outputs
    assert dspy_result.step_sequence() == native_result.step_sequence()
    # The traces have the same shape: per step inputs, outputs and the messages of every LM call.
    for n, d in zip(native_result.trace, dspy_result.trace, strict=True):
        assert (d.inputs, d.outputs, d.module_type) == (n.inputs, n.outputs, n.module_type)
        assert [c.messages for c in d.lm_calls] == [c.messages for c in n.lm_calls]
        assert [c.response for c in d.lm_calls] == [c.response for c in n.lm_calls]
        assert [c.usage for c in d.lm_calls] == [c.usage for c in n.lm_calls]
        assert [c.model for c in d.lm_calls] == [c.model for c in n.lm_calls]
        assert len(d.children) == len(n.children)
        for nc, dc in zip(n.children, d.children, strict=True):
            assert [c.messages for c in dc.lm_calls] == [c.messages for c in nc.lm_calls]
            assert dc.outputs == nc.outputs
    assert dspy_result.usage == native_result.usage
    assert dspy_result.backend == "dspy"
    return native_result, dspy_result


@pytest.mark.parametrize("example,inputs", [
    ("rag_qa", QUESTION),
    ("rag_qa", {"question": "Où est le Louvre? 🇫🇷"}),
    ("multihop", QUESTION),
    ("classify", {"ticket": "I was charged twice for my subscription, please refund"}),
    ("classify", {"ticket": "The app crashes on startup and I am blocked"}),
])
def test_examples_are_equivalent(loop: Any, server: Any, native_adapter: Any, dspy_adapter: Any, example: str,
                                 inputs: dict[str, Any]) -> None:
    program = load_program(EXAMPLES / f"{example}.yaml")
    _compare(loop, server, native_adapter, dspy_adapter, program, inputs)


@pytest.mark.parametrize("case", sorted(TYPED_PROGRAMS))
def test_typed_programs_are_equivalent(loop: Any, server: Any, native_adapter: Any, dspy_adapter: Any,
                                      case: str) -> None:
    data, inputs = TYPED_PROGRAMS[case]
    program = load_program(data)
    _compare(loop, server, native_adapter, dspy_adapter, program, inputs)


def test_run_time_lm_override_is_equivalent(loop: Any, server: Any, native_adapter: Any, dspy_adapter: Any) -> None:
    program = load_program(EXAMPLES / "classify.yaml")
    options = RunOptions(lm=LMConfig(adapter="json", temperature=0.5, max_tokens=123))
    _compare(loop, server, native_adapter, dspy_adapter, program, {"ticket": "Upgrade my plan to enterprise"}, options)
    assert server.log is not None
    body = server.log.entries()[-1]["body"]
    assert body["temperature"] == 0.5
    assert body["model"] == "reference"


def test_chat_parse_failure_falls_back_to_json_like_native(loop: Any, server: Any, native_adapter: Any,
                                                           dspy_adapter: Any) -> None:
    """A garbage chat reply: both adapters retry once with the JSON format, then fail the same way."""
    from stepbridge.errors import LMParseError, StepError

    program = load_program({
        "stepbridge": 1, "name": "garbage", "signature": "q -> a",
        "lm": {"model": "openai/reference/garbage"},
        "modules": {"m": {"type": "predict", "signature": "q -> a"}},
        "steps": [{"call": "m", "with": {"q": "$inputs.q"}, "as": "r"}, {"return": {"a": "$r.a"}}],
    })
    errors = []
    for adapter in (native_adapter, dspy_adapter):
        start = last_seq(server)
        with pytest.raises(StepError) as info:
            run(loop, adapter, program, {"q": "hello"})
        errors.append(info.value)
        assert isinstance(info.value.cause, LMParseError)
        assert len(server.log.entries(start)) == 2  # chat, then the JSON fallback
        assert [len(c.messages) > 0 for c in info.value.trace[0].lm_calls] == [True, True]
    native_calls = [c.messages for c in errors[0].trace[0].lm_calls]
    dspy_calls = [c.messages for c in errors[1].trace[0].lm_calls]
    assert native_calls == dspy_calls
