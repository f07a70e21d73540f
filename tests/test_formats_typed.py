"""Golden tests for format 2's types: stepbridge.formats against the real DSPy 3.4.1 adapters.

The DSPy side is what a DSPy user writes: hand-written pydantic models and ``Enum`` classes in the
signature, model instances / members / tuples as input values, ``dspy.History`` for history. Our side
is the ``types`` section of a program file, JSON values, and :class:`stepbridge.formats.Prompt`.
Messages must be equal byte for byte; parsing must give the same values (ours as JSON data).
"""

from __future__ import annotations

import enum
import os
import tempfile
import typing
from typing import Any, Literal, Optional, Union

_CACHE = tempfile.mkdtemp(prefix="stepbridge-dspy-cache-")
os.environ.setdefault("DSPY_CACHEDIR", _CACHE)
os.environ.setdefault("DSPY_FINETUNEDIR", _CACHE)
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import dspy  # noqa: E402
import pytest  # noqa: E402
from dspy.adapters.json_adapter import _get_structured_outputs_response_format  # noqa: E402
from dspy.clients.legacy_requests import _strict_json_schema  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydantic import BaseModel, Field, TypeAdapter  # noqa: E402
from stepbridge.errors import InputValidationError, LMParseError  # noqa: E402
from stepbridge.formats import Prompt, chain_of_thought, to_dspy_signature  # noqa: E402
from stepbridge.named_types import TypeSpace  # noqa: E402
from stepbridge.signature import Signature, TypeExpr  # noqa: E402

ADAPTERS: dict[str, Any] = {"chat": dspy.ChatAdapter(), "json": dspy.JSONAdapter(), "xml": dspy.XMLAdapter()}
NAMES = list(ADAPTERS)

# --------------------------------------------------------------------------------------------------
# The types, once as a program's section and once by hand
# --------------------------------------------------------------------------------------------------
SECTION = {
    "Sentiment": {"enum": ["positive", "negative", "neutral"]},
    "Role": {"description": "What someone does.", "enum": ["engineer", "manager", "a b", "x&<y"]},
    "Address": {"description": "A postal address.", "fields": {
        "street": "str", "city": {"type": "str", "desc": "the city name"}, "zip": "Optional[str]"}},
    "Person": {"description": "A person mentioned in the text.\n\n  Indented second paragraph.", "fields": {
        "name": {"type": "str", "desc": "full name"}, "age": "Optional[int]", "role": "Role",
        "address": "Optional[Address]", "emails": "list[str]"}},
    "Team": {"fields": {"lead": "Person", "members": "list[Person]", "mood": "Sentiment",
                        "scores": "dict[Sentiment, float]", "meta": "dict[str, Any]"}},
}
SPACE, _problems = TypeSpace.build(SECTION)
assert not _problems, _problems


class Sentiment(enum.Enum):
    positive = "positive"
    negative = "negative"
    neutral = "neutral"


class Role(str, enum.Enum):  # noqa: UP042  (a str-mixin enum, as many DSPy users write it)
    """What someone does."""

    engineer = "engineer"
    manager = "manager"
    a_b = "a b"  # stepbridge names members as a Python author would: the value with non-word characters as _
    x__y = "x&<y"


class Address(BaseModel):
    """A postal address."""

    street: str
    city: str = Field(description="the city name")
    zip: Optional[str] = None  # noqa: UP045


class Person(BaseModel):
    """A person mentioned in the text.

      Indented second paragraph."""

    name: str = Field(description="full name")
    age: Optional[int] = None  # noqa: UP045
    role: Role
    address: Optional[Address] = None  # noqa: UP045
    emails: list[str]


class Team(BaseModel):
    lead: Person
    members: list[Person]
    mood: Sentiment
    scores: dict[Sentiment, float]
    meta: dict[str, Any]


HAND: dict[str, Any] = {"Sentiment": Sentiment, "Role": Role, "Address": Address, "Person": Person, "Team": Team}


def hand(t: TypeExpr) -> Any:
    """The annotation a DSPy user writes for a resolved type (independent of stepbridge's classes)."""
    k = t.kind
    if k in ("str", "int", "float", "bool"):
        return {"str": str, "int": int, "float": float, "bool": bool}[k]
    if k == "any":
        return Any
    if k in ("object", "enum"):
        return HAND[t.args[0]]
    if k == "history":
        return dspy.History
    if k == "list":
        return list[hand(t.args[0])]  # type: ignore[misc]
    if k == "dict":
        return dict[hand(t.key), hand(t.args[0])]  # type: ignore[misc]
    if k == "tuple":
        return tuple[tuple(hand(a) for a in t.args)]  # type: ignore[misc]
    # unions in the order written (typing's cache may otherwise hand back an equal union in another order)
    if k == "optional":
        inner = t.args[0]
        members = inner.args if inner.kind == "union" else (inner,)
        return typing._UnionGenericAlias(Union, (*(hand(a) for a in members), type(None)))  # type: ignore[attr-defined]
    if k == "union":
        return typing._UnionGenericAlias(Union, tuple(hand(a) for a in t.args))  # type: ignore[attr-defined]
    if k == "literal":
        return Literal[t.args]
    raise AssertionError(t)


def dspy_signature(sig: Signature) -> Any:
    fields: dict[str, Any] = {}
    for group, make in ((sig.inputs, dspy.InputField), (sig.outputs, dspy.OutputField)):
        for name, spec in group.items():
            kwargs = {"desc": spec.desc} if spec.desc is not None else {}
            fields[name] = (hand(SPACE.resolve(spec.type_expr)), make(**kwargs))
    return dspy.Signature(fields, sig.instructions)


def typed(sig: Signature, values: dict[str, Any]) -> dict[str, Any]:
    """JSON input values as the Python values a DSPy user passes (model instances, members, History)."""
    out = {}
    for name, value in values.items():
        t = SPACE.resolve(sig.inputs[name].type_expr)
        out[name] = dspy.History(messages=value["messages"]) if t.kind == "history" else (
            TypeAdapter(hand(t)).validate_python(value))
    return out


S = Signature.model_validate
SIGS: dict[str, Signature] = {
    "object_out": S("text -> person: Person"),
    "nested_out": S("text: str, hint: Optional[str] -> team: Team, confidence: float"),
    "list_of_objects": S("text -> people: list[Person]"),
    "optional_object": S("text -> person: Optional[Person]"),
    "enum_out": S("text -> mood: Sentiment, role: Role"),
    "enum_in": S("mood: Sentiment, role: Optional[Role] -> reply"),
    "object_in": S("person: Person, team: Team -> summary, ok: bool"),
    "union_scalar": S("q -> value: int | str, maybe: Union[float, bool, None]"),
    "union_objects": S("q -> thing: Person | Address, label: Literal['a', 'b'] | int"),
    "tuple": S("pair: tuple[int, str] -> out: tuple[str, Sentiment, float], n: int"),
    "dict_keys": S("counts: dict[int, str] -> by_mood: dict[Sentiment, list[int]], flags: dict[bool, str]"),
    "any": S("blob: Any, items: list[Any] -> result: Any, table: dict[str, Any]"),
    "history": S("question, history: History -> answer, mood: Sentiment"),
    "history_objects": S("text, history: History, who: Person -> person: Person, ok: bool"),
    "described": Signature(
        instructions="Extract the people.\n  Keep their order.",
        inputs={"text": {"desc": "free text"}, "context": {"type": "list[Address]", "desc": "known places"}},
        outputs={"people": {"type": "list[Person]", "desc": "everyone named"},
                 "mood": {"type": "Sentiment", "desc": "overall tone"}},
    ),
}


# --------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=False, allow_infinity=False, width=32), texts)
json_any = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(texts, inner, max_size=3)),
                        max_leaves=6)


def values_for(t: TypeExpr) -> st.SearchStrategy[Any]:
    """JSON values of a resolved type."""
    k = t.kind
    if k == "str":
        return texts
    if k == "int":
        return st.integers(-10**9, 10**9)
    if k == "float":
        return st.floats(allow_nan=False, allow_infinity=False, width=32)
    if k == "bool":
        return st.booleans()
    if k == "any":
        return json_any
    if k == "list":
        return st.lists(values_for(t.args[0]), max_size=3)
    if k == "tuple":
        return st.tuples(*(values_for(a) for a in t.args)).map(list)
    if k == "dict":
        key = t.key
        keys: st.SearchStrategy[str] = (
            texts if key.kind == "str" else st.integers(-99, 99).map(str) if key.kind == "int"
            else st.sampled_from(["true", "false"]) if key.kind == "bool" else values_for(key))
        return st.dictionaries(keys, values_for(t.args[0]), max_size=3)
    if k == "optional":
        return st.one_of(st.none(), values_for(t.args[0]))
    if k == "union":
        return st.one_of(*(values_for(a) for a in t.args))
    if k == "literal":
        return st.sampled_from(t.args)
    if k == "enum":
        return st.sampled_from(t.decl.values)  # type: ignore[union-attr]
    if k == "object":
        decl = t.decl
        required = {f.name: values_for(f.type) for f in decl.fields if f.name in decl.required}  # type: ignore[union-attr]
        optional = {f.name: values_for(f.type) for f in decl.fields if f.name not in decl.required}  # type: ignore[union-attr]
        return st.fixed_dictionaries(required, optional=optional)
    raise AssertionError(t)


def history_values(sig: Signature) -> st.SearchStrategy[Any]:
    fields = {n: values_for(SPACE.resolve(s.type_expr)) for n, s in (*sig.inputs.items(), *sig.outputs.items())
              if SPACE.resolve(s.type_expr).kind != "history"}
    message = st.fixed_dictionaries({}, optional=fields)
    return st.lists(message, max_size=3).map(lambda ms: {"messages": ms})


def inputs_for(sig: Signature) -> st.SearchStrategy[dict[str, Any]]:
    strategies = {}
    for name, spec in sig.inputs.items():
        t = SPACE.resolve(spec.type_expr)
        strategies[name] = history_values(sig) if t.kind == "history" else values_for(t)
    return st.fixed_dictionaries(strategies)


def outputs_for(sig: Signature) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({n: values_for(SPACE.resolve(s.type_expr)) for n, s in sig.outputs.items()})


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("adapter", NAMES)
@pytest.mark.parametrize("name", list(SIGS))
def test_system_message_matches_dspy(name: str, adapter: str) -> None:
    sig = SIGS[name]
    ours = Prompt(sig, adapter=adapter, types=SPACE).messages({})
    theirs = ADAPTERS[adapter].format(dspy_signature(sig), [], {})
    assert ours == theirs


@pytest.mark.parametrize("adapter", NAMES)
@pytest.mark.parametrize("name", list(SIGS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_messages_match_dspy(name: str, adapter: str, data: st.DataObject) -> None:
    sig = SIGS[name]
    inputs = data.draw(inputs_for(sig))
    demo_in = data.draw(inputs_for(sig))
    demo_out = data.draw(outputs_for(sig))
    demos = [{**demo_in, **demo_out}, {**demo_in, **{k: v for k, v in list(demo_out.items())[:1]}}]
    demos = [{k: v for k, v in d.items() if SPACE.resolve(
        (sig.inputs.get(k) or sig.outputs[k]).type_expr).kind != "history"} for d in demos]
    ours = Prompt(sig, demos, adapter, SPACE).messages(inputs)
    theirs = ADAPTERS[adapter].format(dspy_signature(sig), demos, typed(sig, inputs))
    assert ours == theirs


@pytest.mark.parametrize("adapter", NAMES)
@pytest.mark.parametrize("name", ["object_out", "history", "enum_out", "union_objects"])
def test_chain_of_thought_matches_dspy(name: str, adapter: str) -> None:
    sig = SIGS[name]
    cot = dspy.ChainOfThought(dspy_signature(sig))
    ours = Prompt(chain_of_thought(sig), adapter=adapter, types=SPACE)
    inputs = {n: v for n, v in {"text": "Ada", "q": "?", "question": "why?",
                                "history": {"messages": [{"question": "a?", "answer": "b", "reasoning": "r"}]}}.items()
              if n in sig.inputs}
    assert ours.messages(inputs) == ADAPTERS[adapter].format(cot.predict.signature, [], typed(sig, inputs))


def test_history_turns_as_dspy_expands_them() -> None:
    sig = SIGS["history"]
    history = {"messages": [
        {"question": "What is 1+1?", "answer": "2", "mood": "neutral"},  # a full turn
        {"question": "And 2+2?"},  # an input-only turn: assistant says None
        {"answer": "output only"},  # an output-only event: no user turn
        {" question ": "keys are stripped as dspy.History strips them", "answer": "ok"},
        {},
    ]}
    for adapter in NAMES:
        ours = Prompt(sig, adapter=adapter, types=SPACE).messages({"question": "now?", "history": history})
        theirs = ADAPTERS[adapter].format(dspy_signature(sig), [], typed(sig, {"question": "now?",
                                                                               "history": history}))
        assert ours == theirs
        roles = [m["role"] for m in ours]
        assert roles[0] == "system" and roles[-1] == "user" and "assistant" in roles
    # no history given: just the question
    ours = Prompt(sig, types=SPACE).messages({"question": "now?"})
    assert ours == ADAPTERS["chat"].format(dspy_signature(sig), [], {"question": "now?"})


def test_bad_typed_inputs_are_typed_errors() -> None:
    prompt = Prompt(SIGS["object_in"], types=SPACE)
    with pytest.raises(InputValidationError) as info:
        prompt.messages({"person": {"name": "x"}, "team": {}})
    assert info.value.field == "person"
    with pytest.raises(InputValidationError, match="History"):
        Prompt(SIGS["history"], types=SPACE).messages({"question": "q", "history": {"messages": "nope"}})
    with pytest.raises(InputValidationError, match="tool calls"):
        Prompt(SIGS["history"], types=SPACE).messages(
            {"question": "q", "history": {"messages": [{"answer": {"tool_calls": []}}]}})


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------
def theirs_parse(sig: Signature, adapter: str, text: str) -> Any:
    dsig = dspy_signature(sig)
    try:
        parsed = ADAPTERS[adapter].parse(dsig, text)
    except Exception as exc:  # AdapterParseError, or an untyped error DSPy leaks (we type it)
        return ("error", type(exc).__name__)
    return ("ok", {k: TypeAdapter(dsig.output_fields[k].annotation).dump_python(v, mode="json")
                   for k, v in parsed.items()})


def ours_parse(sig: Signature, adapter: str, text: str) -> Any:
    try:
        return ("ok", Prompt(sig, adapter=adapter, types=SPACE).parse(text))
    except LMParseError as exc:
        assert exc.response == text
        return ("error", "AdapterParseError")


def assert_same_parse(sig: Signature, adapter: str, text: str) -> Any:
    theirs = theirs_parse(sig, adapter, text)
    ours = ours_parse(sig, adapter, text)
    if theirs[0] == "error":
        assert ours[0] == "error", (text, ours)
    else:
        assert ours == theirs, text
    return ours


OUTPUT_SIGS = [n for n in SIGS if n not in ("history", "history_objects")] + ["history"]


@pytest.mark.parametrize("adapter", NAMES)
@pytest.mark.parametrize("name", OUTPUT_SIGS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parse_replies_written_by_dspy(name: str, adapter: str, data: st.DataObject) -> None:
    """A reply in the adapter's own format (DSPy's assistant turn) parses to the same values."""
    sig = SIGS[name]
    dsig = dspy_signature(sig)
    outputs = data.draw(outputs_for(sig))
    python = {k: TypeAdapter(dsig.output_fields[k].annotation).validate_python(v) for k, v in outputs.items()}
    text = ADAPTERS[adapter].format_assistant_message_content(dsig, python)
    assert_same_parse(sig, adapter, text)


TRICKY: dict[str, list[tuple[str, str]]] = {
    "enum_out": [
        ("chat", "[[ ## mood ## ]]\npositive\n\n[[ ## role ## ]]\na_b\n\n[[ ## completed ## ]]"),  # by name
        ("chat", "[[ ## mood ## ]]\nPositive\n\n[[ ## role ## ]]\nengineer"),
        ("chat", "[[ ## mood ## ]]\n 'positive' \n\n[[ ## role ## ]]\nx&<y"),
        ("json", '{"mood": "negative", "role": "a b"}'),
        ("json", '{"mood": ["negative"], "role": "a b"}'),
        ("json", '{"mood": 1, "role": "a b"}'),
        ("xml", "<mood>neutral</mood><role>x&amp;&lt;y</role>"),
        ("xml", "<mood>\n  neutral \n</mood>\n<role>manager</role>"),
        ("xml", "<mood>happy</mood><role>manager</role>"),
        ("xml", "<mood>neutral</mood>"),
    ],
    "object_out": [
        ("chat", '[[ ## person ## ]]\n{"name": "Ada", "role": "engineer", "emails": []}\n[[ ## completed ## ]]'),
        ("chat", "[[ ## person ## ]]\n{'name': 'Ada', 'role': 'engineer', 'emails': ['a@b']}"),
        ("chat", '[[ ## person ## ]]\n```json\n{"name": "Ada", "role": "manager", "emails": [], "x": 1}\n```'),
        ("chat", '[[ ## person ## ]]\n{"name": "Ada", "role": "boss", "emails": []}'),
        ("chat", '[[ ## person ## ]]\n{"name": "Ada", "age": "41", "role": "engineer", "emails": []}'),
        ("json", '{"person": {"name": "Ada", "role": "engineer", "emails": [], "address": {"street": "s", '
                 '"city": "c"}}}'),
        ("json", 'Here: {"person": {"name": "Ada", "role": "engineer", "emails": ["x"]}} done'),
        ("json", '{"person": "{\\"name\\": \\"Ada\\", \\"role\\": \\"engineer\\", \\"emails\\": []}"}'),
        ("xml", "<person><name>Ada</name><role>engineer</role><emails><item>a@b</item></emails></person>"),
        ("xml", "<person><name>Ada</name><age>41</age><role>engineer</role><emails /></person>"),
        ("xml", "<person><name>Ada</name><role>engineer</role><address><street>s</street><city>c</city>"
                "</address><emails><item>a</item><item>b</item></emails></person>"),
        ("xml", '<person>{"name": "Ada", "role": "engineer", "emails": []}</person>'),
        ("xml", "<person><name>Ada</name></person>"),
        ("xml", "<person><name>Ada</person>"),
    ],
    "union_scalar": [
        ("chat", "[[ ## value ## ]]\n42\n\n[[ ## maybe ## ]]\ntrue"),
        ("chat", "[[ ## value ## ]]\nforty-two\n\n[[ ## maybe ## ]]\n1.5"),
        ("chat", "[[ ## value ## ]]\n42"),
        ("json", '{"value": "42", "maybe": null}'),
        ("json", '{"value": 4.5, "maybe": "x"}'),
        ("xml", "<value>42</value><maybe>0</maybe>"),
        ("xml", "<value>abc</value><maybe></maybe>"),
    ],
    "tuple": [
        ("chat", '[[ ## out ## ]]\n["a", "positive", 1.5]\n\n[[ ## n ## ]]\n3'),
        ("chat", "[[ ## out ## ]]\n('a', 'positive', 1)\n\n[[ ## n ## ]]\n3"),
        ("json", '{"out": ["a", "positive"], "n": 3}'),
        ("xml", "<out><item>a</item><item>negative</item><item>2</item></out><n>1</n>"),
    ],
    "dict_keys": [
        ("chat", '[[ ## by_mood ## ]]\n{"positive": [1, 2]}\n\n[[ ## flags ## ]]\n{"true": "y"}'),
        ("json", '{"by_mood": {"angry": []}, "flags": {}}'),
        ("xml", "<by_mood><positive><item>1</item></positive></by_mood><flags><entry key=\"true\">y</entry>"
                "</flags>"),
    ],
    "any": [
        ("chat", '[[ ## result ## ]]\n{"a": [1, "two", null]}\n\n[[ ## table ## ]]\n{}'),
        ("chat", "[[ ## result ## ]]\njust text\n\n[[ ## table ## ]]\n{\"k\": {\"deep\": true}}"),
        ("json", '{"result": null, "table": {"x": 1}}'),
        ("xml", "<result><a>1</a><b><c>2</c></b></result><table><k>v</k></table>"),
        ("xml", "<result>plain</result><table />"),
    ],
    "list_of_objects": [
        ("chat", '[[ ## people ## ]]\n[{"name": "A", "role": "engineer", "emails": []}, '
                 '{"name": "B", "role": "manager", "emails": ["b@c"]}]'),
        ("xml", "<people><item><name>A</name><role>engineer</role><emails /></item></people>"),
        ("xml", "<people></people>"),
        ("xml", "<people>[]</people>"),
    ],
}


@pytest.mark.parametrize("name, adapter, text", [(n, a, t) for n, cases in TRICKY.items() for a, t in cases])
def test_parse_lenient_and_broken_replies_like_dspy(name: str, adapter: str, text: str) -> None:
    assert_same_parse(SIGS[name], adapter, text)


@pytest.mark.parametrize("adapter", NAMES)
def test_outputs_are_json_data(adapter: str) -> None:
    sig = SIGS["nested_out"]
    dsig = dspy_signature(sig)
    team = Team(lead=Person(name="A", role=Role.engineer, emails=[]), members=[], mood=Sentiment.positive,
                scores={Sentiment.negative: 0.5}, meta={"k": [1, 2]})
    text = ADAPTERS[adapter].format_assistant_message_content(dsig, {"team": team, "confidence": 0.9})
    parsed = Prompt(sig, adapter=adapter, types=SPACE).parse(text)
    assert ("ok", parsed) == theirs_parse(sig, adapter, text)
    if adapter == "xml":  # XML has no types: an Any value comes back as DSPy reads it
        assert parsed["team"]["meta"] == {"k": {"item": ["1", "2"]}}
        parsed["team"]["meta"] = team.meta
    assert parsed == {"team": team.model_dump(mode="json"), "confidence": 0.9}
    assert parsed["team"]["mood"] == "positive" and parsed["team"]["scores"] == {"negative": 0.5}
    assert SPACE.resolve(sig.outputs["team"].type_expr).accepts(parsed["team"])


def test_hostile_xml_replies_are_typed_errors() -> None:
    prompt = Prompt(SIGS["any"], adapter="xml", types=SPACE)
    deep = "<result>" + "<a>" * 5000 + "x" + "</a>" * 5000 + "</result><table />"
    with pytest.raises(LMParseError):
        prompt.parse(deep)
    for text in ['<!DOCTYPE x [<!ENTITY a "aaaa">]><result>&a;</result>', "<result>&undefined;</result>",
                 "<result><![CDATA[x]]></result><table>", "\x00", "<result>" * 3]:
        with pytest.raises(LMParseError):
            prompt.parse(text)


# --------------------------------------------------------------------------------------------------
# response_format
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SIGS))
def test_response_format_matches_dspy(name: str) -> None:
    sig = SIGS[name]
    dsig = dspy_signature(sig)
    prompt = Prompt(sig, adapter="json", types=SPACE)
    if any(typing.get_origin(f.annotation) is dict for f in dsig.output_fields.values()):
        assert prompt.response_format() == {"type": "json_object"}
        return
    model = _get_structured_outputs_response_format(dsig)
    expected = {"type": "json_schema", "json_schema": {
        "name": model.__name__, "schema": _strict_json_schema(model.model_json_schema()), "strict": True}}
    assert prompt.response_format() == expected
    assert Prompt(sig, adapter="xml", types=SPACE).response_format() is None


def test_to_dspy_signature_uses_real_history_and_declared_classes() -> None:
    dsig = to_dspy_signature(SIGS["history_objects"], types=SPACE)
    assert dsig.input_fields["history"].annotation is dspy.History
    assert TypeAdapter(dsig.output_fields["person"].annotation).json_schema() == TypeAdapter(Person).json_schema()
    for adapter in NAMES:
        assert ADAPTERS[adapter].format(dsig, [], {}) == ADAPTERS[adapter].format(
            dspy_signature(SIGS["history_objects"]), [], {})
