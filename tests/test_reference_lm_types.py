"""The reference LM answers typed fields (declared objects, enums, lists of objects, unions, tuples, dicts
with typed keys) with valid values, in the chat, JSON and XML formats, extracted from the inputs."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sb_types import SPACE as SPACE_FOR_STRATEGIES
from sb_types import type_exprs2
from stepbridge.formats import Prompt
from stepbridge.named_types import TypeSpace
from stepbridge.reference_lm import ReferenceModel, parse_system_message
from stepbridge.signature import FieldSpec, Signature, TypeExpr

SPACE, _problems = TypeSpace.build({
    "Role": {"enum": ["engineer", "manager", "scientist"]},
    "Address": {"fields": {"street": "Optional[str]", "city": {"type": "str", "desc": "the city name"}}},
    "Person": {"description": "A person named in the text.", "fields": {
        "name": "str", "age": "Optional[int]", "role": "Role", "email": "Optional[str]",
        "address": "Optional[Address]"}},
    "Contact": {"fields": {"name": "str", "age": "Optional[int]", "city": "Optional[str]"}},
    "Mood": {"enum": ["happy", "sad", "a b", "_x"]},
})
assert not _problems, _problems
TEXT = ("Ada Lovelace, 36, is an engineer from London (ada@example.org). "
        "Grace Hopper was a scientist aged 85 who lived in New York.")
MODEL = ReferenceModel()


def answer(sig: Signature, adapter: str, inputs: dict[str, Any], space: TypeSpace = SPACE) -> dict[str, Any]:
    """What a backend gets: the reply to its prompt, parsed; after the JSON fallback when the format failed."""
    prompt = Prompt(sig, adapter=adapter, types=space)  # type: ignore[arg-type]
    reply = MODEL.complete(prompt.messages(inputs), response_format=prompt.response_format())
    try:
        return prompt.parse(reply)
    except Exception:
        fallback = prompt.fallback()
        assert fallback is not None, reply
        return fallback.parse(MODEL.complete(fallback.messages(inputs), response_format=fallback.response_format()))


def test_extracts_a_nested_object_with_an_enum() -> None:
    sig = Signature.model_validate("text -> person: Person")
    for adapter in ("chat", "json"):
        person = answer(sig, adapter, {"text": TEXT})["person"]
        assert person["name"] == "Ada Lovelace" and person["age"] == 36 and person["role"] == "engineer"
        assert person["email"] == "ada@example.org" and person["address"]["city"] == "London"


def test_a_list_of_objects_has_one_object_per_person() -> None:
    sig = Signature.model_validate("text -> people: list[Contact], roles: list[Role]")
    for adapter in ("chat", "json", "xml"):
        out = answer(sig, adapter, {"text": TEXT})
        assert [p["name"] for p in out["people"]] == ["Ada Lovelace", "Grace Hopper"], adapter
        assert [p["age"] for p in out["people"]] == [36, 85], adapter
        assert [p["city"] for p in out["people"]] == ["London", "New York"], adapter
    people = answer(Signature.model_validate("text -> people: list[Person]"), "json", {"text": TEXT})["people"]
    assert [(p["role"], p["email"]) for p in people] == [("engineer", "ada@example.org"), ("scientist", None)]


def test_xml_answers_nested_fields_directly_when_the_tags_say_enough() -> None:
    sig = Signature.model_validate("text -> contact: Contact, role: Role, pair: tuple[str, int], n: int | str")
    prompt = Prompt(sig, adapter="xml", types=SPACE)
    reply = MODEL.complete(prompt.messages({"text": TEXT}))
    out = prompt.parse(reply)  # no fallback needed
    assert out["contact"]["name"] == "Ada Lovelace" and out["role"] == "engineer"
    assert out["pair"][1] == 36 and out["n"] == 36
    spec = parse_system_message(prompt.system)
    assert spec is not None and spec.format == "xml"
    assert [f.nested for f in spec.outputs] == [True, False, False, False]


def test_answers_are_deterministic_across_instances() -> None:
    sig = Signature.model_validate("text -> people: list[Person], mood: Mood")
    for adapter in ("chat", "json", "xml"):
        prompt = Prompt(sig, adapter=adapter, types=SPACE)  # type: ignore[arg-type]
        messages = prompt.messages({"text": TEXT})
        assert MODEL.complete(messages) == ReferenceModel().complete(messages)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(type_exprs2, min_size=1, max_size=3), st.sampled_from(["chat", "json", "xml"]),
       st.text(max_size=60))
def test_every_typed_answer_is_valid(types: list[TypeExpr], adapter: str, extra: str) -> None:
    outputs = {f"out{i}": FieldSpec(type=str(t)) for i, t in enumerate(types)}
    sig = Signature(inputs={"text": FieldSpec()}, outputs=outputs)
    out = answer(sig, adapter, {"text": TEXT + " " + extra}, SPACE_FOR_STRATEGIES)
    for name, spec in outputs.items():
        assert SPACE_FOR_STRATEGIES.resolve(spec.type_expr).accepts(out[name]), (name, spec.type, out[name])
