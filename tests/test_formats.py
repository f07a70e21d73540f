"""Golden tests: stepbridge.formats against the real DSPy 3.4.1 ChatAdapter / JSONAdapter.

No mocks: every expected value comes from DSPy itself (``adapter.format``, ``adapter.parse``,
``dspy.ChainOfThought``, ``dspy.Predict`` driven by DSPy's own ``DummyLM``).
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any

# Keep DSPy (and LiteLLM, if anything pulls it in) off the network and out of the home directory.
_CACHE = tempfile.mkdtemp(prefix="stepbridge-dspy-cache-")
os.environ.setdefault("DSPY_CACHEDIR", _CACHE)
os.environ.setdefault("DSPY_FINETUNEDIR", _CACHE)
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import dspy  # noqa: E402
import pytest  # noqa: E402
from dspy.adapters.json_adapter import (  # noqa: E402
    _get_structured_outputs_response_format,
    _has_open_ended_mapping,
)
from dspy.clients.legacy_requests import _strict_json_schema  # noqa: E402
from dspy.utils.dummies import DummyLM  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from stepbridge.errors import LMParseError  # noqa: E402
from stepbridge.formats import (  # noqa: E402
    Prompt,
    chain_of_thought,
    parse_value,
    prompt_for,
    to_dspy_signature,
)
from stepbridge.signature import Signature, TypeExpr  # noqa: E402

S = Signature.model_validate
CHAT = dspy.ChatAdapter()
JSON = dspy.JSONAdapter()
ADAPTERS = {"chat": CHAT, "json": JSON}

# --------------------------------------------------------------------------------------------------
# The signature matrix
# --------------------------------------------------------------------------------------------------
SIGS: dict[str, Signature] = {
    "untyped": S("question -> answer"),
    "str_int": S("question: str -> answer: int"),
    "float": S("x: float, y -> z: float"),
    "bool": S("claim -> verdict: bool"),
    "list_str": S("topic -> items: list[str]"),
    "list_int": S("nums: list[int] -> total: int, parts: list[int]"),
    "dict": S("doc -> counts: dict[str, int]"),
    "literal": S("text -> label: Literal['a', 'b']"),
    "literal_mixed": S("""text -> label: Literal["it's", 'say "hi"', 'both \\' and "', 1, True]"""),
    "optional": S("text -> maybe: Optional[int]"),
    "optional_str": S("text -> note: Optional[str], tags: Optional[list[str]]"),
    "nested": S("grid: list[list[int]], table: dict[str, list[int]] -> rows: list[dict[str, int]]"),
    "context": S("context: list[str], question -> answer"),
    "no_inputs": S(" -> answer"),
    "described": Signature(
        instructions="Answer the question.\n    Be concise.\n\n  Cite the context when you can.",
        inputs={
            "context": {"type": "list[str]", "desc": "passages that may help"},
            "question": {"type": "str", "desc": "a question about the passages"},
        },
        outputs={
            "answer": {"type": "str", "desc": "short answer"},
            "confidence": {"type": "float", "desc": "between 0 and 1"},
            "sources": {"type": "list[int]"},
        },
    ),
    "unicode": Signature(
        instructions="Réponds en français, s'il te plaît 🇫🇷 — «merci»",
        inputs={"texte": {"desc": "le texte à résumer — ünïcödé 日本語"}},
        outputs={"resume_court": {"type": "str", "desc": "un résumé"}, "note": {"type": "int"}},
    ),
    "empty_instructions": Signature(instructions="", inputs={"a": {}}, outputs={"b": {"type": "bool"}}),
    "indented_instructions": Signature(
        instructions="\n        First line.\n            Indented more.\n        Back.\n    ",
        inputs={"a": {}},
        outputs={"b": {}},
    ),
}

SAMPLE: dict[str, list[Any]] = {
    "str": ["hello", "", "multi\nline «quoted»", "ünïcödé 日本語 🙂", "  padded  "],
    "int": [0, -7, 12345678901234567890],
    "float": [0.5, 1e-7, 3.0, float("inf"), 1e20],
    "bool": [True, False],
}


def sample_value(t: TypeExpr, i: int) -> Any:
    if t.kind in SAMPLE:
        vals = SAMPLE[t.kind]
        return vals[i % len(vals)]
    if t.kind == "list":
        return [sample_value(t.args[0], i + j) for j in range(i % 4)]
    if t.kind == "dict":
        return {f"k{j}é": sample_value(t.args[0], i + j) for j in range(i % 3)}
    if t.kind == "literal":
        return t.args[i % len(t.args)]
    if t.kind == "optional":
        return None if i % 2 else sample_value(t.args[0], i)
    raise AssertionError(t)


def sample(sig: Signature, i: int, group: str = "both") -> dict[str, Any]:
    fields = {**sig.inputs, **sig.outputs} if group == "both" else getattr(sig, group)
    return {name: sample_value(spec.type_expr, i) for name, spec in fields.items()}


def dspy_messages(sig: Signature, demos: list[dict[str, Any]], inputs: dict[str, Any], adapter: str):
    return ADAPTERS[adapter].format(to_dspy_signature(sig), demos, inputs)


# --------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("adapter", ["chat", "json"])
@pytest.mark.parametrize("name", list(SIGS))
def test_messages_match_dspy(name: str, adapter: str) -> None:
    sig = SIGS[name]
    prompt = Prompt(sig, adapter=adapter)
    for i in range(6):
        inputs = sample(sig, i, "inputs")
        assert prompt.messages(inputs) == dspy_messages(sig, [], inputs, adapter)


@pytest.mark.parametrize("adapter", ["chat", "json"])
@pytest.mark.parametrize("name", list(SIGS))
def test_demos_complete_and_incomplete(name: str, adapter: str) -> None:
    sig = SIGS[name]
    first_in = next(iter(sig.inputs), None)
    first_out = next(iter(sig.outputs))
    demos: list[dict[str, Any]] = [sample(sig, 1), sample(sig, 2)]
    missing_out = sample(sig, 3)
    del missing_out[first_out]
    demos.append(missing_out)  # incomplete unless it had no other output
    none_out = sample(sig, 4)
    none_out[first_out] = None  # present but None: incomplete, rendered as "None"/null
    demos.append(none_out)
    if first_in is not None:
        missing_in = sample(sig, 5)
        del missing_in[first_in]
        demos.append(missing_in)
    demos.append(sample(sig, 6, "inputs"))  # no outputs at all: dropped
    demos.append({**sample(sig, 7), "unrelated": "ignored"})
    inputs = sample(sig, 0, "inputs")
    prompt = Prompt(sig, demos, adapter)
    assert prompt.messages(inputs) == dspy_messages(sig, demos, inputs, adapter)


@pytest.mark.parametrize("adapter", ["chat", "json"])
def test_missing_and_extra_inputs(adapter: str) -> None:
    sig = SIGS["described"]
    prompt = Prompt(sig, adapter=adapter)
    for inputs in ({}, {"question": "q?"}, {"question": "q?", "context": None, "extra": 1}):
        assert prompt.messages(inputs) == dspy_messages(sig, [], inputs, adapter)


INPUT_VALUES: list[Any] = [
    "plain", "", "  spaced\n\n", "«guillemets»", "new\nline", "ünï 日本 🙂", 0, -1, 2.5, 1e-9, float("nan"),
    float("inf"), True, False, None, [], ["one"], ["a", "b\nc", "«d»"], [{"k": 1}, {"k": 2}], {"a": [1, 2]},
    {"é": None, "x": {"y": "z"}}, (1, 2), {1: "int key"}, [1.5, None, True], {"nested": [{"deep": ["🙂"]}]},
]


@pytest.mark.parametrize("adapter", ["chat", "json"])
@pytest.mark.parametrize("type_str", ["str", "list[str]", "dict[str, int]", "int", "Optional[str]"])
def test_input_value_rendering(type_str: str, adapter: str) -> None:
    sig = Signature(inputs={"value": {"type": type_str}, "other": {}}, outputs={"out": {}})
    prompt = Prompt(sig, adapter=adapter)
    dsig = to_dspy_signature(sig)
    for value in INPUT_VALUES:
        if type_str == "str" and isinstance(value, list) and any(not isinstance(v, str | dict) for v in value):
            continue  # DSPy itself crashes ("'in <string>' requires string"); not a valid input
        inputs = {"value": value, "other": value if isinstance(value, str) else "x"}
        assert prompt.messages(inputs) == ADAPTERS[adapter].format(dsig, [], inputs), value


def test_string_signatures_agree_with_dspy_parser() -> None:
    """to_dspy_signature(our parse) formats exactly like DSPy's own string signature parsing."""
    for text in ["question -> answer", "a: int, b: list[str] -> c: dict[str, float], d: bool",
                 "x -> y: Literal['p', 'q']", "q: Optional[int] -> r: Optional[list[str]]"]:
        ours = Prompt(S(text))
        theirs = CHAT.format(dspy.Signature(text), [], {})
        assert ours.messages({}) == theirs


@pytest.mark.parametrize("adapter", ["chat", "json"])
@pytest.mark.parametrize("name", ["untyped", "described", "literal", "nested", "unicode", "optional"])
def test_chain_of_thought_matches_dspy(name: str, adapter: str) -> None:
    sig = SIGS[name]
    cot = dspy.ChainOfThought(to_dspy_signature(sig))
    dsig = cot.predict.signature
    ours = chain_of_thought(sig)
    assert list(ours.outputs) == list(dsig.output_fields)
    demos = [{**sample(sig, 1), "reasoning": "because"}, sample(sig, 2)]
    prompt = Prompt(ours, demos, adapter)
    inputs = sample(sig, 0, "inputs")
    assert prompt.messages(inputs) == ADAPTERS[adapter].format(dsig, demos, inputs)
    assert prompt_for(sig, demos=demos, adapter=adapter, cot=True).messages(inputs) == prompt.messages(inputs)
    # our CoT signature converts back to the same DSPy prompt
    assert ADAPTERS[adapter].format(to_dspy_signature(ours), demos, inputs) == prompt.messages(inputs)


def test_prompt_for_instructions_override() -> None:
    sig = SIGS["list_int"]
    prompt = prompt_for(sig, instructions="Add them up.")
    dsig = to_dspy_signature(sig).with_instructions("Add them up.")
    assert prompt.messages({"nums": [1, 2]}) == CHAT.format(dsig, [], {"nums": [1, 2]})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_input_formatting_property(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(SIGS)))
    adapter = data.draw(st.sampled_from(["chat", "json"]))
    sig = SIGS[name]
    inputs = {k: data.draw(values_for(spec.type_expr)) for k, spec in sig.inputs.items()}
    assert Prompt(sig, adapter=adapter).messages(inputs) == dspy_messages(sig, [], inputs, adapter)


def test_messages_are_fresh_copies() -> None:
    prompt = Prompt(SIGS["untyped"], [sample(SIGS["untyped"], 1)])
    first = prompt.messages({"question": "a"})
    first[0]["content"] = "tampered"
    first[1]["content"] = "tampered"
    assert prompt.messages({"question": "a"}) == dspy_messages(SIGS["untyped"], [sample(SIGS["untyped"], 1)],
                                                               {"question": "a"}, "chat")


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------
def strict(value: Any) -> Any:
    """A comparable form that tells 1, 1.0 and True apart and treats NaN as equal to itself."""
    if isinstance(value, dict):
        return ("dict", tuple((k, strict(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(strict(v) for v in value))
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


def both_parse(sig: Signature, adapter: str, text: str) -> tuple[Any, Any]:
    try:
        theirs: Any = ("ok", strict(ADAPTERS[adapter].parse(to_dspy_signature(sig), text)))
    except Exception as exc:  # AdapterParseError, or an untyped error DSPy leaks (we type it)
        theirs = ("error", type(exc).__name__ if not isinstance(exc, dspy.AdapterParseError) else "parse")
    try:
        ours: Any = ("ok", strict(Prompt(sig, adapter=adapter).parse(text)))
    except LMParseError as exc:
        assert exc.response == text
        ours = ("error", "parse")
    if theirs[0] == "error" and theirs[1] != "parse":
        theirs = ("error", "parse")
    return ours, theirs


def assert_same_parse(sig: Signature, adapter: str, text: str) -> Any:
    ours, theirs = both_parse(sig, adapter, text)
    assert ours == theirs, text
    return ours


@pytest.mark.parametrize("adapter", ["chat", "json"])
@pytest.mark.parametrize("name", list(SIGS))
def test_parse_generated_completions(name: str, adapter: str) -> None:
    sig = SIGS[name]
    dsig = to_dspy_signature(sig)
    for i in range(6):
        outputs = sample(sig, i, "outputs")
        text = ADAPTERS[adapter].format_assistant_message_content(dsig, outputs)
        result = assert_same_parse(sig, adapter, text)
        exact = adapter == "json" and all(spec.type_expr.kind != "str" for spec in sig.outputs.values())
        if exact and not any(isinstance(v, float) and not math.isfinite(v) for v in outputs.values()):
            assert result == ("ok", strict(outputs))


TRICKY_CHAT = [
    "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]",
    "[[ ## answer ## ]] 42",
    "Sure! Here you go.\n[[ ## answer ## ]]\n  forty two  \n[[ ## completed ## ]]\ntrailing",
    "[[ ## answer ## ]]\nfirst\n[[ ## answer ## ]]\nsecond",
    "   [[ ## answer ## ]]   inline after header   \nmore\n",
    "[[ ## other ## ]]\nx",
    "no headers at all",
    '{"answer": "json in chat mode"}',
    "[[ ## answer ## ]]\n",
    "[[ ##  answer ## ]]\nbad spacing",
    "[[ ## answer ## ]]\r\nwindows\r\nlines\r\n[[ ## completed ## ]]",
    "[[ ## answer ## ]]\nline\u2028sep",
]
TRICKY_VALUES = [
    "42", " 42 ", "42.0", "4.2e1", "forty two", "'42'", '"42"', "[1, 2", "[1, 2, 3]", "['a', 'b']",
    "{'a': 1}", '{"a": 1, "b": "2"}', "True", "true", "False", "no", "yes", "None", "null", "", "a",
    "Literal['a']", "str[b]", "'b'", "1", "`a`", "{[]: 1}", "[" * 200 + "]" * 200, "NaN", "inf",
    "- item one\n- item two", "1, 2, 3", '["x", 2]', "3.5", "1e400", "0x10", "1_000",
]


@pytest.mark.parametrize("adapter", ["chat", "json"])
@pytest.mark.parametrize("name", list(SIGS))
def test_parse_tricky_values(name: str, adapter: str) -> None:
    sig = SIGS[name]
    outs = list(sig.outputs)
    for value in TRICKY_VALUES:
        if adapter == "chat":
            text = "\n\n".join(f"[[ ## {k} ## ]]\n{value}" for k in outs) + "\n\n[[ ## completed ## ]]"
            assert_same_parse(sig, adapter, text)
            assert_same_parse(sig, adapter, f"[[ ## {outs[0]} ## ]]\n{value}")  # later fields missing
        else:
            import json

            for raw in (value, _try_json(value)):
                assert_same_parse(sig, adapter, json.dumps({k: raw for k in outs}))
            assert_same_parse(sig, adapter, "{" + ", ".join(f'"{k}": {value}' for k in outs) + "}")


def _try_json(value: str) -> Any:
    import json

    try:
        return json.loads(value)
    except ValueError:
        return value


@pytest.mark.parametrize("name", ["untyped", "str_int", "optional", "literal", "described"])
def test_parse_tricky_chat_texts(name: str) -> None:
    sig = SIGS[name]
    out = next(iter(sig.outputs))
    for text in TRICKY_CHAT:
        assert_same_parse(sig, "chat", text.replace("answer", out))


TRICKY_JSON = [
    '{"answer": "x"}', 'Here is the JSON:\n```json\n{"answer": "x"}\n```', '{"answer": "x",}', "{'answer': 'x'}",
    '{"answer": "x"', '[{"answer": "x"}]', '"just a string"', "42", "not json", "{ unbalanced { {\"answer\": 1}",
    'prefix {"a": {"b": 1}} suffix {"answer": 2}', '{"answer": null}', '{"ANSWER": "x"}', "{}",
    '{"answer": "x", "answer": "y"}', '{"answer": ["a", "b"]}', '{"answer": {"nested": true}}', "{{}}",
    '{"answer": "x"} trailing text', "null", "[]",
]


@pytest.mark.parametrize("name", ["untyped", "str_int", "optional", "literal", "list_str", "dict", "optional_str"])
def test_parse_tricky_json_texts(name: str) -> None:
    sig = SIGS[name]
    out = next(iter(sig.outputs))
    for text in TRICKY_JSON:
        assert_same_parse(sig, "json", text.replace("answer", out))


@pytest.mark.parametrize("adapter", ["chat", "json"])
def test_empty_reply_is_a_parse_error(adapter: str) -> None:
    prompt = Prompt(SIGS["optional"], adapter=adapter)
    with pytest.raises(LMParseError, match="empty"):
        prompt.parse("")


def test_parse_error_message_is_clear() -> None:
    prompt = Prompt(SIGS["str_int"])
    with pytest.raises(LMParseError) as info:
        prompt.parse("[[ ## answer ## ]]\nforty two")
    assert "answer" in str(info.value) and "forty two" in str(info.value)
    with pytest.raises(LMParseError, match=r"Expected to find output fields .*\[answer\]"):
        prompt.parse("nothing useful")


def test_parse_value_helper() -> None:
    assert parse_value("[1, 2]", "list[int]") == [1, 2]
    assert parse_value(" 'b' ", "Literal['a', 'b']") == "b"
    assert parse_value("None", "Optional[int]") is None
    with pytest.raises(ValueError):
        parse_value("x", "int")


def values_for(t: TypeExpr) -> st.SearchStrategy[Any]:
    if t.kind == "str":
        return st.text(max_size=30)
    if t.kind == "int":
        return st.integers(-(10**12), 10**12)
    if t.kind == "float":
        return st.floats(allow_nan=False, allow_infinity=False)
    if t.kind == "bool":
        return st.booleans()
    if t.kind == "list":
        return st.lists(values_for(t.args[0]), max_size=4)
    if t.kind == "dict":
        return st.dictionaries(st.text(max_size=6), values_for(t.args[0]), max_size=3)
    if t.kind == "literal":
        return st.sampled_from(t.args)
    if t.kind == "optional":
        return st.none() | values_for(t.args[0])
    raise AssertionError(t)


EXACT_ROUND_TRIP = {"int", "float", "bool", "literal"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parse_round_trip_property(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(SIGS)))
    adapter = data.draw(st.sampled_from(["chat", "json"]))
    sig = SIGS[name]
    outputs = {k: data.draw(values_for(spec.type_expr)) for k, spec in sig.outputs.items()}
    # How an LM answers in the requested format (DSPy's own rendering of an assistant turn).
    text = ADAPTERS[adapter].format_assistant_message_content(to_dspy_signature(sig), outputs)
    result = assert_same_parse(sig, adapter, text)
    for k, spec in sig.outputs.items():
        kind = spec.type_expr.kind
        inner = spec.type_expr.args[0].kind if kind in ("list", "optional") else kind
        if result[0] == "ok" and kind in EXACT_ROUND_TRIP | {"list", "optional"} and inner in EXACT_ROUND_TRIP:
            assert dict(result[1][1])[k] == strict(outputs[k])


@settings(max_examples=100, deadline=None)
@given(value=st.text(max_size=40), type_str=st.sampled_from(
    ["int", "float", "bool", "list[int]", "list[str]", "dict[str, int]", "Literal['a', 'b', 1]", "Optional[int]"]))
def test_parse_arbitrary_field_text(value: str, type_str: str) -> None:
    sig = Signature(inputs={"q": {}}, outputs={"a": {"type": type_str}})
    assert_same_parse(sig, "chat", f"[[ ## a ## ]]\n{value}\n\n[[ ## completed ## ]]")
    assert_same_parse(sig, "json", value)


# --------------------------------------------------------------------------------------------------
# JSON fallback, response_format, end to end through dspy.Predict
# --------------------------------------------------------------------------------------------------
def test_fallback_is_the_json_prompt() -> None:
    sig = SIGS["described"]
    demos = [sample(sig, 1)]
    chat = Prompt(sig, demos)
    fb = chat.fallback()
    assert fb is not None and fb.adapter == "json" and fb.fallback() is None
    assert chat.fallback() is fb
    inputs = sample(sig, 0, "inputs")
    assert fb.messages(inputs) == JSON.format(to_dspy_signature(sig), demos, inputs)
    assert chat.response_format() is None


@pytest.mark.parametrize("name", list(SIGS))
def test_response_format_matches_dspy(name: str) -> None:
    sig = SIGS[name]
    dsig = to_dspy_signature(sig)
    prompt = Prompt(sig, adapter="json")
    assert prompt.response_format(structured=False) == {"type": "json_object"}
    if _has_open_ended_mapping(dsig):
        assert prompt.response_format() == {"type": "json_object"}
        return
    model = _get_structured_outputs_response_format(dsig)
    expected = {"type": "json_schema", "json_schema": {
        "name": model.__name__, "schema": _strict_json_schema(model.model_json_schema()), "strict": True}}
    assert prompt.response_format() == expected


@pytest.mark.parametrize("module", ["predict", "cot"])
@pytest.mark.parametrize("name", ["described", "list_int", "literal", "unicode"])
def test_end_to_end_through_dspy_predict(name: str, module: str) -> None:
    sig = SIGS[name]
    dsig = to_dspy_signature(sig)
    ours = chain_of_thought(sig) if module == "cot" else sig
    demos = [sample(ours, 1), sample(ours, 2, "inputs") | {next(iter(ours.outputs)): "x"}]
    answer = sample(ours, 3, "outputs")
    lm = DummyLM([answer])
    pred = dspy.ChainOfThought(dsig) if module == "cot" else dspy.Predict(dsig)
    inputs = sample(sig, 0, "inputs")
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        result = pred(**inputs, demos=[dspy.Example(**d) for d in demos])
    prompt = Prompt(ours, demos)
    sent = lm.history[-1]["messages"]
    assert prompt.messages(inputs) == sent
    assert strict(prompt.parse(lm.history[-1]["outputs"][0])) == strict(dict(result.items()))


def test_dspy_falls_back_to_json_exactly_like_our_fallback() -> None:
    sig = SIGS["str_int"]
    dsig = to_dspy_signature(sig)
    # The LM answers in JSON; ChatAdapter cannot parse it and DSPy retries through JSONAdapter.
    lm = DummyLM([{"answer": 7}, {"answer": 7}], adapter=dspy.JSONAdapter())
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        result = dspy.Predict(dsig)(question="q")
    assert len(lm.history) == 2
    chat = Prompt(sig)
    reply = lm.history[0]["outputs"][0]
    with pytest.raises(LMParseError):
        chat.parse(reply)
    fb = chat.fallback()
    assert fb is not None
    assert chat.messages({"question": "q"}) == lm.history[0]["messages"]
    assert fb.messages({"question": "q"}) == lm.history[1]["messages"]
    assert fb.parse(lm.history[1]["outputs"][0]) == {"answer": result.answer} == {"answer": 7}


def test_native_path_does_not_need_dspy() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import stepbridge.formats as f\n"
        "from stepbridge.signature import Signature\n"
        "p = f.Prompt(f.chain_of_thought(Signature.model_validate('q -> a: int')), adapter='json')\n"
        "p.messages({'q': 'x'}); p.parse('{\"reasoning\": \"r\", \"a\": 1}'); p.response_format()\n"
        "assert 'dspy' not in sys.modules, 'dspy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


_field_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(alphabet=" \n\t\r\u2028ab[]#é", max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=300)
@given(st.sampled_from(list(SIGS)), st.sampled_from(["chat", "json"]), st.data())
def test_main_user_message_is_the_general_one(name: str, adapter: str, data: st.DataObject) -> None:
    """The per-call user message (fields given or not, any values, edge whitespace) is the text the general
    renderer (demos, history) gives."""
    prompt = Prompt(SIGS[name], adapter=adapter)
    names = list(SIGS[name].inputs)
    given_names = data.draw(st.lists(st.sampled_from(names), unique=True) if names else st.just([]))
    inputs = {n: data.draw(_field_values) for n in given_names}

    def outcome(render: Any) -> Any:
        try:
            return render()
        except Exception as exc:  # values inputs validation would refuse: the same failure either way
            return type(exc).__name__

    assert outcome(lambda: prompt._main_content(inputs)) == outcome(
        lambda: prompt._user_content(prompt._in, inputs, "", True))
