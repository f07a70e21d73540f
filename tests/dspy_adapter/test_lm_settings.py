"""Per-module LM settings (n, adapter chat/json/xml, temperature, max_tokens) reach the request body as
DSPy sends them: the native executor and the DSPy adapter against one reference LM server's request log."""

from __future__ import annotations

from typing import Any

import pytest
from sb_dspy import last_seq, run
from stepbridge import RunOptions, load_program
from stepbridge.errors import UnsupportedCapabilityError
from stepbridge.program import LMConfig


def program(lm: dict[str, Any] | None = None, module_lm: dict[str, Any] | None = None,
            signature: str = "question -> answer, confidence: float, label: Literal['yes', 'no']",
            module_type: str = "predict") -> Any:
    data: dict[str, Any] = {
        "stepbridge": 1, "name": "settings", "signature": "question -> answer, label: Literal['yes', 'no']",
        "modules": {"m": {"type": module_type, "signature": signature}},
        "steps": [{"call": "m", "with": {"question": "$inputs.question"}, "as": "r"},
                  {"return": {"answer": "$r.answer", "label": "$r.label"}}],
    }
    if lm is not None:
        data["lm"] = lm
    if module_lm is not None:
        data["modules"]["m"]["lm"] = module_lm
    return load_program(data)


def bodies(server: Any, since: int, until: int | None = None) -> list[dict[str, Any]]:
    assert server.log is not None
    return [e["body"] for e in server.log.entries(since) if until is None or e["seq"] <= until]


def both(loop: Any, server: Any, native: Any, dspy_adapter: Any, prog: Any, inputs: dict[str, Any],
         options: RunOptions | None = None) -> tuple[Any, Any, list[dict[str, Any]], list[dict[str, Any]]]:
    start = last_seq(server)
    native_result = run(loop, native, prog, inputs, options)
    middle = last_seq(server)
    dspy_result = run(loop, dspy_adapter, prog, inputs, options)
    native_sent, dspy_sent = bodies(server, start, middle), bodies(server, middle)
    assert native_sent and [b["messages"] for b in dspy_sent] == [b["messages"] for b in native_sent]
    assert dspy_result.outputs == native_result.outputs
    assert dspy_result.step_sequence() == native_result.step_sequence()
    return native_result, dspy_result, native_sent, dspy_sent


def same_settings(native_body: dict[str, Any], dspy_body: dict[str, Any]) -> None:
    """What both send alike; DSPy's default engine (lm15) names max_tokens max_completion_tokens."""
    assert native_body.get("temperature") == dspy_body.get("temperature")
    assert native_body.get("max_tokens") == dspy_body.get("max_completion_tokens", dspy_body.get("max_tokens"))
    assert "n" not in native_body and "n" not in dspy_body


QUESTION = {"question": "Is Paris the capital of France?"}


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("temperature", [None, 0.0, 0.1, 0.9])
def test_n_completions_like_dspy_predict(loop: Any, server: Any, native_adapter: Any, dspy_adapter: Any, n: int,
                                         temperature: float | None) -> None:
    lm = {"n": n} if temperature is None else {"n": n, "temperature": temperature}
    prog = program(module_lm=lm)
    native, theirs, native_sent, dspy_sent = both(loop, server, native_adapter, dspy_adapter, prog, QUESTION)
    # one request per completion (DSPy's LM engine asks for n completions as n requests)
    assert len(native_sent) == len(dspy_sent) == n
    expected = 0.7 if temperature is None or temperature <= 0.15 else temperature  # dspy.Predict's rule
    for native_body, dspy_body in zip(native_sent, dspy_sent, strict=True):
        same_settings(native_body, dspy_body)
        assert native_body["temperature"] == expected
    # outputs from the first completion; every completion in the trace
    for result in (native, theirs):
        calls = result.trace[0].lm_calls
        assert len(calls) == n and all(c.response for c in calls)
        assert result.usage.lm_calls == n
    assert [c.response for c in theirs.trace[0].lm_calls] == [c.response for c in native.trace[0].lm_calls]


@pytest.mark.parametrize("adapter", ["chat", "json", "xml"])
def test_adapter_and_sampling_settings_reach_the_body(loop: Any, server: Any, native_adapter: Any, dspy_adapter: Any,
                                                      adapter: str) -> None:
    prog = program(lm={"temperature": 0.3, "max_tokens": 200}, module_lm={"adapter": adapter, "max_tokens": 321})
    _, _, native_sent, dspy_sent = both(loop, server, native_adapter, dspy_adapter, prog, QUESTION)
    assert len(native_sent) == len(dspy_sent) == 1
    same_settings(native_sent[0], dspy_sent[0])
    assert native_sent[0]["temperature"] == 0.3 and native_sent[0]["max_tokens"] == 321
    if adapter == "json":
        # DSPy's JSONAdapter asks for structured outputs where the LM takes a schema; lm15 does not know the
        # reference endpoint and sends none, the native client sends DSPy's strict schema (documented)
        assert native_sent[0]["response_format"]["type"] == "json_schema"
        assert native_sent[0]["response_format"]["json_schema"]["name"] == "DSPyProgramOutputs"
    else:
        assert "response_format" not in native_sent[0] and "response_format" not in dspy_sent[0]
    if adapter == "xml":
        assert "<question>\nIs Paris the capital of France?\n</question>" in native_sent[0]["messages"][-1]["content"]


def test_xml_garbage_falls_back_to_json_like_dspy(loop: Any, server: Any, native_adapter: Any,
                                                  dspy_adapter: Any) -> None:
    prog = program(lm={"model": "openai/reference/garbage", "adapter": "xml"})
    from stepbridge.errors import StepError

    sent = []
    for adapter in (native_adapter, dspy_adapter):
        start = last_seq(server)
        with pytest.raises(StepError):
            run(loop, adapter, prog, QUESTION)
        sent.append([b["messages"] for b in bodies(server, start)])
    assert len(sent[0]) == 2 and sent[0] == sent[1]  # the XML attempt, then the JSON one
    assert "Respond with the corresponding output fields wrapped in XML tags" in sent[0][0][-1]["content"]
    assert "Respond with a JSON object" in sent[0][1][-1]["content"]


def test_run_time_override_of_n_and_adapter(loop: Any, server: Any, native_adapter: Any, dspy_adapter: Any) -> None:
    prog = program()
    options = RunOptions(lm=LMConfig(n=2, adapter="xml", temperature=0.5))
    _, _, native_sent, dspy_sent = both(loop, server, native_adapter, dspy_adapter, prog, QUESTION, options)
    assert len(native_sent) == len(dspy_sent) == 2
    assert all(b["temperature"] == 0.5 for b in native_sent + dspy_sent)


def test_capabilities_are_required() -> None:
    from stepbridge.adapters.native import NativeAdapter
    from stepbridge.runner import Runner

    class OnlyChat(NativeAdapter):
        name = "only_chat"
        capabilities = frozenset({"async"})

    runner = Runner(OnlyChat())
    for lm, capability in (({"adapter": "xml"}, "xml_adapter"), ({"n": 2}, "ensembles"),
                           ({"adapter": "json"}, "json_adapter")):
        prog = program(module_lm=lm)
        assert capability in prog.required_capabilities
        with pytest.raises(UnsupportedCapabilityError) as info:
            runner.check(prog)
        assert info.value.capability == capability
    assert "ensembles" not in program(module_lm={"n": 1}).required_capabilities
    with pytest.raises(UnsupportedCapabilityError) as info:
        runner.check(program(), LMConfig(adapter="xml"))  # a run-time override needs it too
    assert info.value.capability == "xml_adapter"
