"""The ``types`` section: checking, resolving, and the pydantic models / Enums it materialises."""

from __future__ import annotations

import enum
import json
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, TypeAdapter
from stepbridge.named_types import (
    MAX_NESTING,
    EnumTypeSpec,
    ObjectTypeSpec,
    TypeSpace,
    UnknownTypeError,
    from_class,
    materialize,
)
from stepbridge.signature import TypeExpr, parse_type

SECTION = {
    "Address": {"description": "A postal address.", "fields": {
        "street": "str", "city": {"type": "str", "desc": "the city name"}}},
    "Person": {"fields": {"name": "str", "age": "Optional[int]", "address": "Address", "mood": "Sentiment",
                          "tags": "list[Sentiment]", "scores": "dict[Sentiment, float]"}},
    "Sentiment": {"enum": ["positive", "negative", "neutral"], "description": "How it feels."},
}


# the same types, written by hand as a DSPy user would
class Sentiment(enum.Enum):
    """How it feels."""

    positive = "positive"
    negative = "negative"
    neutral = "neutral"


class Address(BaseModel):
    """A postal address."""

    street: str
    city: str = Field(description="the city name")


class Person(BaseModel):
    name: str
    age: Optional[int] = None  # noqa: UP045
    address: Address
    mood: Sentiment
    tags: list[Sentiment]
    scores: dict[Sentiment, float]


def space() -> TypeSpace:
    built, problems = TypeSpace.build(SECTION)
    assert problems == []
    return built


@pytest.mark.parametrize("text, by_hand", [
    ("Person", Person), ("Address", Address), ("Sentiment", Sentiment), ("list[Person]", list[Person]),
    ("Optional[Person]", Optional[Person]), ("dict[str, Address]", dict[str, Address]),  # noqa: UP045
    ("Person | Address", Person | Address), ("tuple[Sentiment, int]", tuple[Sentiment, int]),
    ("dict[Sentiment, list[Optional[Address]]]", dict[Sentiment, list[Optional[Address]]]),  # noqa: UP045
])
def test_materialised_types_have_the_hand_written_json_schema(text: str, by_hand: Any) -> None:
    annotation = space().resolve(parse_type(text)).annotation()
    assert json.dumps(TypeAdapter(annotation).json_schema()) == json.dumps(TypeAdapter(by_hand).json_schema())


def test_declared_field_order_and_descriptions_are_kept() -> None:
    model = space().resolve(parse_type("Person")).annotation()
    assert list(model.model_fields) == ["name", "age", "address", "mood", "tags", "scores"]
    assert model.model_fields["age"].default is None and not model.model_fields["age"].is_required()
    assert model.model_fields["name"].is_required()
    address = space().resolve(parse_type("Address")).annotation()
    assert address.model_fields["city"].description == "the city name"
    assert address.__doc__ == "A postal address."
    assert [m.value for m in space().resolve(parse_type("Sentiment")).annotation()] == [
        "positive", "negative", "neutral"]


def test_classes_are_built_once_per_content() -> None:
    a = space().resolve(parse_type("Person")).annotation()
    b = space().resolve(parse_type("Person")).annotation()  # another program, same declaration
    assert a is b
    changed = {**SECTION, "Address": {"fields": {"street": "str"}}}
    other, problems = TypeSpace.build(changed)
    assert problems == []
    c = other.resolve(parse_type("Person")).annotation()
    assert c is not a  # Person's content changed through Address
    assert other.resolve(parse_type("Person")) != space().resolve(parse_type("Person"))
    assert other.resolve(parse_type("Sentiment")) == space().resolve(parse_type("Sentiment"))


def test_accepts_json_values_of_declared_types() -> None:
    person = space().resolve(parse_type("Person"))
    good = {"name": "Ada", "address": {"street": "1 Main", "city": "X"}, "mood": "positive", "tags": [],
            "scores": {"negative": 1.5}}
    assert person.accepts(good)
    assert person.accepts({**good, "age": None}) and person.accepts({**good, "age": 3})
    assert not person.accepts({**good, "age": "3"})
    assert not person.accepts({**good, "mood": "angry"})
    assert not person.accepts({**good, "extra": 1})
    assert not person.accepts({k: v for k, v in good.items() if k != "name"})
    assert not person.accepts({**good, "scores": {"angry": 1.0}})
    assert not person.accepts([good])
    # everything the model dumps is accepted back
    model = person.annotation()
    assert person.accepts(model.model_validate(good).model_dump(mode="json"))


def test_assignability_of_declared_types() -> None:
    s = space()
    person, address, mood = (s.resolve(parse_type(n)) for n in ("Person", "Address", "Sentiment"))
    assert person.assignable_to(person) and not person.assignable_to(address)
    assert person.assignable_to(parse_type("dict[str, Any]"))
    assert not person.assignable_to(parse_type("dict[str, str]"))
    assert mood.assignable_to(parse_type("str"))
    assert mood.assignable_to(parse_type("Literal['positive', 'negative', 'neutral', 'x']"))
    assert not mood.assignable_to(parse_type("Literal['positive']"))
    assert parse_type("Literal['positive']").assignable_to(mood)
    assert not parse_type("str").assignable_to(mood)
    assert person.assignable_to(s.resolve(parse_type("Person | Address")))
    assert not s.resolve(parse_type("Person | Address")).assignable_to(person)


@pytest.mark.parametrize("section, pointer, match, suggestion", [
    ({"A": {"fields": {"x": "Adress"}}, "Address": {"fields": {}}}, "/A/fields/x", "unknown type 'Adress'",
     "Address"),
    ({"A": {"fields": {"x": "Strr"}}}, "/A/fields/x", "unknown type 'Strr'", "str"),
    ({"A": {"fields": {"b": "B"}}, "B": {"fields": {"a": "list[Optional[A]]"}}}, "/A", "cycle.*A -> B -> A", None),
    ({"A": {"fields": {"a": "A"}}}, "/A", "cycle.*A -> A", None),
    ({"a": {"fields": {}}}, "/a", "invalid type name", None),
    ({"List": {"fields": {}}}, "/List", "built-in", None),
    ({"A": {"fields": {"_x": "int"}}}, "/A/fields/_x", "starts with '_'", None),
    ({"A": {"fields": {"model_dump": "int"}}}, "/A/fields/model_dump", "starts with 'model_'", None),
    ({"A": {"fields": {"json": "int"}}}, "/A/fields/json", "reserved", None),
    ({"A": {"fields": {"demos": "int"}}}, "/A/fields/demos", "reserved", None),
    ({"A": {"fields": {"model_post_init": "int"}}}, "/A/fields/model_post_init", "model_", None),
    ({"A": {"fields": {"1x": "int"}}}, "/A/fields/1x", "invalid field name", None),
    ({"A": {"fields": {"h": "History"}}}, "/A/fields/h", "History", None),
    ({"A": {"fields": {"x": "lst[int]"}}}, "/A/fields/x", "unknown type 'lst'", None),
    ({"A": {"fields": {"x": {"type": "int", "dsc": "typo"}}}}, "/A/fields/x/dsc", "unknown key 'dsc'", None),
    ({"A": {"enum": ["x", "x"]}}, "/A/enum", "duplicate enum value", None),
    ({"A": {"enum": []}}, "/A/enum", "at least 1", None),
    ({"A": {"enum": [""]}}, "/A/enum", "non-empty", None),
    ({"A": {"enum": [1]}}, "/A/enum/0", "valid string", None),
    ({"A": {"enum": ["x"], "fields": {}}}, "/A", "not both", None),
    ({"A": {"feilds": {}}}, "/A", "needs 'fields'", None),
    ({"A": {"fields": {}, "descripton": "x"}}, "/A/descripton", "unknown key", None),
    ({"A": {"fields": {"k": "dict[B, int]"}}, "B": {"fields": {}}}, "/A/fields/k", "dict keys", None),
    ({"A": "str"}, "/A", "a type is a mapping", None),
])
def test_section_problems_have_pointers_and_suggestions(
        section: dict[str, Any], pointer: str, match: str, suggestion: str | None) -> None:
    _, problems = TypeSpace.build(section)
    hits = [p for p in problems if p.pointer == pointer]
    assert hits, problems
    assert any(__import__("re").search(match, p.message) for p in hits), hits
    if suggestion is not None:
        assert hits[0].suggestion == suggestion


def test_every_problem_at_once_and_broken_types_do_not_cascade() -> None:
    section = {"A": {"fields": {"x": "Nope"}}, "B": {"fields": {"a": "A"}}, "C": {"fields": {"_y": "int"}},
               "D": {"enum": ["d"]}}
    s, problems = TypeSpace.build(section)
    assert sorted(p.pointer for p in problems) == ["/A/fields/x", "/C/fields/_y"]
    assert "D" in s and "A" not in s and "B" not in s


def test_nesting_depth_is_bounded() -> None:
    section = {f"T{i}": {"fields": {"next": f"T{i + 1}"}} for i in range(MAX_NESTING + 5)}
    section[f"T{MAX_NESTING + 5}"] = {"fields": {"x": "int"}}
    _, problems = TypeSpace.build(section)
    assert problems and all("nest deeper" in p.message for p in problems)


def test_many_shared_types_stay_linear() -> None:
    # each type uses the previous one twice: expanded as a tree this would be 2**30 fields
    section: dict[str, Any] = {"T0": {"fields": {"x": "int"}}}
    for i in range(1, 31):
        section[f"T{i}"] = {"fields": {"a": f"T{i - 1}", "b": f"list[T{i - 1}]"}}
    s, problems = TypeSpace.build(section)
    assert problems == []
    top = s.resolve(parse_type("T30"))
    assert hash(top) == hash(s.resolve(parse_type("T30")))
    schema = TypeAdapter(top.annotation()).json_schema()
    assert len(schema["$defs"]) == 30


def test_cycles_and_hostile_sections_do_not_recurse() -> None:
    # a long cycle: the checker walks it without recursion
    section = {f"T{i}": {"fields": {"n": f"T{(i + 1) % 400}"}} for i in range(400)}
    _, problems = TypeSpace.build(section)
    assert len([p for p in problems if "cycle" in p.message]) == 1
    _, problems = TypeSpace.build({f"T{i}": {"enum": ["a"]} for i in range(10_000)})
    assert problems and "at most" in problems[0].message
    _, problems = TypeSpace.build(["not", "a", "mapping"])
    assert problems[0].pointer == ""


def test_unknown_names_in_signatures() -> None:
    with pytest.raises(UnknownTypeError, match="did you mean Person"):
        space().resolve(parse_type("list[Persn]"))
    with pytest.raises(UnknownTypeError):
        TypeSpace().resolve(parse_type("Person"))
    with pytest.raises(TypeError, match="not resolved"):
        parse_type("Person").annotation()


def test_enum_member_names() -> None:
    s, problems = TypeSpace.build({"E": {"enum": ["a b", "_x", "mro", "value_1", "1", "name"]}})
    assert problems == []
    cls = s.resolve(parse_type("E")).annotation()
    assert [m.value for m in cls] == ["a b", "_x", "mro", "value_1", "1", "name"]
    assert len({m.name for m in cls}) == 6


def test_section_models() -> None:
    spec = ObjectTypeSpec.model_validate({"fields": {"a": "int", "b": {"type": "str", "desc": "d"}}})
    assert spec.canonical() == {"description": None,
                                "fields": [["a", {"type": "int", "desc": None}], ["b", {"type": "str", "desc": "d"}]]}
    assert EnumTypeSpec.model_validate({"enum": ["x"]}).canonical() == {"description": None, "enum": ["x"]}


# -- from Python classes ----------------------------------------------------------------------------
def test_from_class_round_trips_hand_written_models() -> None:
    t = from_class(Person)
    assert t == space().resolve(parse_type("Person"))
    assert TypeExpr.from_annotation(list[Person]) == space().resolve(parse_type("list[Person]"))
    assert TypeExpr.from_annotation(Sentiment) == space().resolve(parse_type("Sentiment"))


def test_from_class_refuses_what_a_section_cannot_say() -> None:
    class WithDefault(BaseModel):
        n: int = 3

    class Node(BaseModel):
        kids: list[Node]

    class Numbers(enum.Enum):
        one = 1

    class lower(BaseModel):
        x: int

    class Aliased(BaseModel):
        x: int = Field(alias="y")

    assert from_class(WithDefault).decl.required == ()  # type: ignore[union-attr]  (defaults are declarable)
    for cls, match in [(Node, "refers to itself"), (Numbers, "string values"),
                       (lower, "invalid type name"), (Aliased, "cannot be declared")]:
        with pytest.raises(TypeError, match=match):
            from_class(cls)


def test_dspy_history_is_the_history_type() -> None:
    import dspy

    assert TypeExpr.from_annotation(dspy.History) == TypeExpr("history")
    assert materialize(TypeExpr("history")).__name__ == "History"
    assert TypeExpr("history").accepts({"messages": [{"q": "a"}]})
    assert not TypeExpr("history").accepts({"messages": [{"q": "a"}], "x": 1})
    assert not TypeExpr("history").accepts([{"q": "a"}])


@settings(max_examples=60)
@given(st.lists(st.sampled_from(["positive", "negative", "neutral"]), max_size=4), st.integers(), st.text(max_size=5))
def test_model_dump_of_any_valid_value_is_accepted(tags: list[str], age: int, name: str) -> None:
    person = space().resolve(parse_type("Person"))
    value = {"name": name, "age": age, "address": {"street": name, "city": "c"}, "mood": "neutral", "tags": tags,
             "scores": {t: 1.0 for t in tags}}
    assert person.accepts(value)
    dumped = person.annotation().model_validate(value).model_dump(mode="json")
    assert person.accepts(dumped)
    assert list(dumped) == ["name", "age", "address", "mood", "tags", "scores"]


def test_builder_declares_hand_written_classes_and_sections() -> None:
    from stepbridge.builder import ProgramBuilder
    from stepbridge.named_types import declarations

    assert declarations(Person) == {
        "Person": {"fields": {"name": "str", "age": "Optional[int]", "address": "Address", "mood": "Sentiment",
                              "tags": "list[Sentiment]", "scores": "dict[Sentiment, float]"}},
        "Address": {"description": "A postal address.",
                    "fields": {"street": "str", "city": {"type": "str", "desc": "the city name"}}},
        "Sentiment": {"description": "How it feels.", "enum": ["positive", "negative", "neutral"]},
    }
    b = ProgramBuilder("typed", "text -> person: Person, mood: Sentiment")
    assert b.declare(Person) == "Person"
    extract = b.predict("extract", "text -> person: Person, mood: Sentiment")
    found = b.call(extract, text=b.inputs.text)
    program = b.returns(person=found.person, mood=found.mood).build()
    assert program.stepbridge == 2 and "typed_objects" in program.required_capabilities
    # the section declares exactly the hand-written classes: the same JSON schemas
    assert TypeAdapter(program.type_space.get("Person").annotation()).json_schema() == TypeAdapter(
        Person).json_schema()
    b2 = ProgramBuilder("typed2", "text -> mood: Feeling")
    b2.enum("Feeling", ["up", "down"], description="How it goes.")
    b2.object_type("Unused", {"x": "int", "y": {"type": "Feeling", "desc": "why"}})
    with pytest.raises(ValueError, match="already declared"):
        b2.enum("Feeling", ["other"])
    m = b2.predict("m", "text -> mood: Feeling")
    program2 = b2.returns(mood=b2.call(m, text=b2.inputs.text).mood).build()
    assert program2.types["Feeling"].canonical() == {"description": "How it goes.", "enum": ["up", "down"]}


# -- the types section in a program ------------------------------------------------------------------
def _program(types: Any, signature: str = "text -> person: Person", version: int = 2,
             module_signature: str | None = None) -> dict[str, Any]:
    return {"stepbridge": version, "name": "typed", "signature": signature, "types": types,
            "modules": {"m": {"type": "predict", "signature": module_signature or signature}},
            "steps": [{"call": "m", "with": {"text": "$inputs.text"}, "as": "r"},
                      {"return": {name: f"$r.{name}" for name in ("person",)}}]}


def test_program_validation_reports_type_problems_with_pointers() -> None:
    from stepbridge.validate import validate

    issues = validate(_program({"Person": {"fields": {"name": "str", "home": "Adress", "_x": "int"}},
                                "Address": {"fields": {"city": "str"}}}, "text -> person: Persn",
                                module_signature="text -> person: Person"))
    found = {(i.pointer, i.suggestion) for i in issues if i.severity == "error"}
    assert ("/types/Person/fields/home", "Address") in found
    assert ("/types/Person/fields/_x", None) in found
    assert ("/signature/outputs/person", "Person") in found
    # a declared but broken type is reported once, where it is declared
    assert not any(i.pointer == "/modules/m/signature/outputs/person" for i in issues)
    v1 = validate(_program({"Person": {"fields": {"name": "str"}}}, version=1))
    assert {i.pointer for i in v1 if i.severity == "error"} >= {"/types", "/signature/outputs/person"}
    any_in_v1 = validate({**_program({}, "text -> person: Any", version=1), "types": None})
    assert any("needs format 2" in i.message for i in any_in_v1)


def test_program_identity_and_round_trip() -> None:
    from stepbridge import load_program

    section = {"Person": {"fields": {"name": "str", "age": {"type": "Optional[int]", "desc": "years"}}},
               "Mood": {"enum": ["up", "down"]}}
    program = load_program(_program(section))
    assert "typed_objects" in program.required_capabilities
    again = load_program(program.to_dict())
    assert again.content_hash == program.content_hash
    assert program.to_dict()["types"]["Person"]["fields"]["name"] == "str"  # short form kept
    reordered_types = load_program(_program(dict(reversed(list(section.items())))))
    assert reordered_types.content_hash == program.content_hash  # the order of declarations is not content
    swapped = {**section, "Person": {"fields": {"age": {"type": "Optional[int]", "desc": "years"}, "name": "str"}}}
    assert load_program(_program(swapped)).content_hash != program.content_hash  # field order is (the prompt)
    enum_order = {**section, "Mood": {"enum": ["down", "up"]}}
    assert load_program(_program(enum_order)).content_hash != program.content_hash


def test_run_inputs_of_declared_types_are_checked() -> None:
    from stepbridge import load_program
    from stepbridge.errors import InputValidationError
    from stepbridge.validate import check_inputs

    program = load_program({**_program({"Person": {"fields": {"name": "str"}}}, "who: Person -> ok: bool"),
                            "steps": [{"call": "m", "with": {"who": "$inputs.who"}, "as": "r"},
                                      {"return": {"ok": "$r.ok"}}]})
    assert check_inputs(program, {"who": {"name": "Ada"}})
    with pytest.raises(InputValidationError) as info:
        check_inputs(program, {"who": {"nom": "Ada"}})
    assert info.value.field == "who"


def test_field_defaults_as_a_pydantic_model_has_them() -> None:
    class Place(BaseModel):
        city: str
        country: str = "FR"
        mood: Sentiment = Sentiment.neutral
        tags: list[str] = ["a"]
        note: Optional[str] = "n/a"  # noqa: UP045

    t = TypeExpr.from_annotation(Place)
    assert t.decl.required == ("city",)  # type: ignore[union-attr]
    assert t.accepts({"city": "Paris"}) and not t.accepts({"country": "FR"})
    assert TypeAdapter(t.annotation()).json_schema() == TypeAdapter(Place).json_schema()
    section = {"Place": {"fields": {"city": "str", "country": {"type": "str", "default": "FR"},
                                    "mood": {"type": "Sentiment", "default": "neutral"}}},
               "Sentiment": SECTION["Sentiment"]}
    s, problems = TypeSpace.build(section)
    assert problems == []
    model = s.resolve(parse_type("Place")).annotation()
    assert model(city="x").country == "FR" and model(city="x").mood.value == "neutral"
    _, problems = TypeSpace.build({"P": {"fields": {"n": {"type": "int", "default": "three"}}}})
    assert problems[0].pointer == "/P/fields/n/default"
    _, problems = TypeSpace.build({"P": {"fields": {"m": {"type": "Sentiment", "default": "angry"}}},
                                   "Sentiment": SECTION["Sentiment"]})
    assert problems and "not a Sentiment" in problems[0].message

    class Factory(BaseModel):
        tags: list[str] = Field(default_factory=list)

    with pytest.raises(TypeError, match="default_factory"):
        from_class(Factory)
