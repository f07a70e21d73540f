"""The signature grammar: DSPy's ``"a: list[str], b -> c: int"`` plus the long form, and TypeExpr."""

from __future__ import annotations

import contextlib
import math
import typing
from typing import Literal, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sb_types import SPACE, type_exprs2
from stepbridge.signature import (
    MAX_TYPE_DEPTH,
    FieldSpec,
    Signature,
    SignatureSyntaxError,
    TypeExpr,
    parse_signature,
    parse_type,
)

# -- strategies ----------------------------------------------------------------------------------

identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True)
literal_values = st.one_of(
    st.text(max_size=8),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
literal_types = st.lists(literal_values, min_size=1, max_size=4, unique_by=repr).map(
    lambda vs: TypeExpr("literal", tuple(vs))
)
scalar_types = st.sampled_from(["str", "int", "float", "bool"]).map(TypeExpr)


def _extend(inner: st.SearchStrategy[TypeExpr]) -> st.SearchStrategy[TypeExpr]:
    return st.one_of(
        inner.map(lambda t: TypeExpr("list", (t,))),
        inner.map(lambda t: TypeExpr("dict", (t,))),
        inner.filter(lambda t: t.kind != "optional").map(lambda t: TypeExpr("optional", (t,))),
    )


type_exprs = st.recursive(st.one_of(scalar_types, literal_types), _extend, max_leaves=4)

@st.composite
def signatures(draw: st.DrawFn) -> Signature:
    names = draw(st.lists(identifiers, min_size=1, max_size=6, unique=True))
    n_in = draw(st.integers(min_value=0, max_value=len(names) - 1))
    fields = {n: FieldSpec(type=str(draw(type_exprs))) for n in names}
    return Signature(inputs=dict(list(fields.items())[:n_in]), outputs=dict(list(fields.items())[n_in:]))


def values_of(t: TypeExpr) -> st.SearchStrategy[typing.Any]:
    """Plain JSON values of type ``t``."""
    if t.kind == "str":
        return st.text(max_size=5)
    if t.kind == "int":
        return st.integers()
    if t.kind == "float":
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers())
    if t.kind == "bool":
        return st.booleans()
    if t.kind == "list":
        return st.lists(values_of(t.args[0]), max_size=3)
    if t.kind == "dict":
        return st.dictionaries(st.text(max_size=3), values_of(t.args[0]), max_size=3)
    if t.kind == "optional":
        return st.one_of(st.none(), values_of(t.args[0]))
    return st.sampled_from(t.args)


# -- properties ----------------------------------------------------------------------------------


@given(type_exprs)
def test_type_str_parse_round_trip(t: TypeExpr) -> None:
    parsed = parse_type(str(t))
    assert parsed == t
    assert str(parsed) == str(t)  # also tells 1 from True and 1 from 1.0


@given(type_exprs2)
def test_format2_type_str_parse_round_trip(t: TypeExpr) -> None:
    parsed = parse_type(str(t))
    assert parsed == t
    assert str(parsed) == str(t)
    # DSPy's spellings parse to the same type
    assert parse_type(str(t).replace("Optional[", "typing.Optional[")) == t


def test_union_annotations_keep_the_written_order() -> None:
    import typing

    earlier = typing.Optional[typing.Union[float, typing.Any]]  # noqa: UP007, UP045
    # typing's cache hands back that equal union for the other order: DSPy would print Union[float, Any, ...]
    later = typing.Optional[typing.Union[typing.Any, float]]  # noqa: UP007, UP045
    assert typing.get_args(later) == typing.get_args(earlier) == (float, typing.Any, type(None))
    assert typing.get_args(parse_type("Optional[Union[typing.Any, float]]").annotation()) == (
        typing.Any, float, type(None))
    assert typing.get_args(parse_type("int | str | None").annotation()) == (int, str, type(None))
    assert typing.get_args(parse_type("Optional[str]").annotation()) == (str, type(None))


@given(type_exprs2)
def test_format2_annotation_round_trip_with_declared_types(t: TypeExpr) -> None:
    resolved = SPACE.resolve(t)
    annotation = resolved.annotation()
    assert TypeExpr.from_annotation(annotation) == resolved
    assert resolved.annotation() == annotation  # one class per declared type: built once, cached
    assert t.names() == resolved.names()


@given(type_exprs)
def test_type_annotation_round_trip(t: TypeExpr) -> None:
    assert TypeExpr.from_annotation(t.annotation()) == t


@given(type_exprs, st.data())
def test_values_of_a_type_are_accepted_and_assignable_to_itself(t: TypeExpr, data: st.DataObject) -> None:
    assert t.accepts(data.draw(values_of(t)))
    assert t.assignable_to(t)
    assert t.assignable_to(TypeExpr("optional", (t,)) if t.kind != "optional" else t)


@given(signatures())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_signature_string_round_trip(sig: Signature) -> None:
    text = sig.to_string()
    again = parse_signature(text)
    assert again == sig
    assert Signature.model_validate(text).canonical() == sig.canonical()
    # the long form says the same thing
    assert Signature.model_validate(sig.canonical()) == sig


grammar_soup = st.lists(
    st.sampled_from(["Literal", "Optional", "dict", "list", "str", "int", "None", "typing.", "[", "]", ",", ":",
                     "'", '"', "->", " ", "|", "0", "1.5", "e", "\\", "_", "a", "b", "\n", "-", "True",
                     "Union", "Any", "tuple", "History", "dspy.", "Person", "...", "()"]),
    max_size=30,
).map("".join)


@given(st.one_of(st.text(max_size=80), grammar_soup))
def test_random_text_raises_only_syntax_errors(text: str) -> None:
    for parse in (parse_signature, parse_type, Signature.model_validate):
        with contextlib.suppress(SignatureSyntaxError, ValueError):  # ValidationError is a ValueError
            parse(text)


# -- the grammar ---------------------------------------------------------------------------------


def test_short_form_fields_types_and_order() -> None:
    sig = parse_signature("context: list[str], question -> answer: int, score: float")
    assert list(sig.inputs) == ["context", "question"]
    assert sig.inputs["context"].type == "list[str]"
    assert sig.inputs["question"].type == "str"  # untyped is str
    assert [(k, f.type) for k, f in sig.outputs.items()] == [("answer", "int"), ("score", "float")]


def test_no_inputs_is_allowed_but_no_outputs_is_not() -> None:
    assert parse_signature(" -> a").inputs == {}
    with pytest.raises(ValueError, match="at least one output"):
        parse_signature("a -> ")


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("List[str]", "list[str]"),
        ("typing.List[int]", "list[int]"),
        ("Dict[str, int]", "dict[str, int]"),
        ("dict[str,list[bool]]", "dict[str, list[bool]]"),
        ("int | None", "Optional[int]"),
        ("Optional[Optional[int]]", "Optional[int]"),
        ("Optional[int] | None", "Optional[int]"),
        ('Literal["a", "b"]', "Literal['a', 'b']"),
        ("Literal['it\\'s']", "Literal['it\\'s']"),
        ("Literal[1, 2.5, True]", "Literal[1, 2.5, True]"),
        ("Literal[1e20]", "Literal[1e+20]"),
        ("Literal[-3]", "Literal[-3]"),
    ],
)
def test_type_spellings_normalise(alias: str, canonical: str) -> None:
    assert str(parse_type(alias)) == canonical
    assert FieldSpec(type=alias).type == canonical


def test_literal_values_keep_their_python_type() -> None:
    t = parse_type("Literal[1, 2.0, True, 'x']")
    assert [type(v) for v in t.args] == [int, float, bool, str]
    assert t.annotation() == Literal[1, 2.0, True, "x"]


@pytest.mark.parametrize(
    "text",
    [
        "x: Literal['a->b'] -> y",           # an arrow inside a Literal is not the separator
        "x: Literal['a, b'], z -> y",         # nor is a comma
        "x: Literal['a\\\\'], z -> y",        # a Literal ending in an escaped backslash
        'x: Literal["q\'uote", \'d"q\'] -> y',
    ],
)
def test_quoted_literals_do_not_split_the_signature(text: str) -> None:
    sig = parse_signature(text)
    assert next(iter(sig.inputs)) == "x"
    assert list(sig.outputs) == ["y"]
    assert parse_signature(sig.to_string()) == sig


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a, b", "exactly one '->'"),
        ("a -> b -> c", "exactly one '->'"),
        ("a: lst[str] -> b", "unknown type 'lst'"),
        ("a: dict[list[int], str] -> b", "dict keys must be"),
        ("a: dict[Literal[1], str] -> b", "Literal of strings"),
        ("a: dict[str] -> b", "takes two types"),
        ("a: list[str -> b", "expected"),
        ("a: Union[] -> b", "expected a type name"),
        ("a: Union[None] -> b", "other than None"),
        ("a: None -> b", "None is not a type on its own"),
        ("a: list[None] -> b", "None is only allowed"),
        ("a: set[int] -> b", "unknown type 'set'"),
        ("a: Person[int] -> b", "takes no"),
        ("a: os.path -> b", "unknown type 'os.path'"),
        ("a: _Private -> b", "unknown type '_Private'"),
        ("a: History | None -> b", "History cannot be part"),
        ("a: tuple[] -> b", "expected a type name"),
        ("a: Literal[1e999] -> b", "finite"),
        ("a: Literal[] -> b", "Literal values"),
        ("a: Literal[None] -> b", "Literal values"),
        ("a: Literal['x', 'x'] -> b", "duplicate Literal value"),
        ("1a -> b", "invalid field name"),
        ("a-b -> c", "invalid field name"),
        ("a, a -> b", "duplicate field 'a'"),
        ("a: int str -> b", "trailing text"),
        ("a: __import__('os') -> b", "unknown type"),
    ],
)
def test_syntax_errors_are_specific(text: str, match: str) -> None:
    with pytest.raises(SignatureSyntaxError, match=match):
        parse_signature(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a: list[History] -> b", "History is only the whole type"),
        ("a: dict[str, History] -> b", "History is only the whole type"),
        ("a -> b: History", "History is only the whole type"),
        ("a: History, b: History -> c", "at most one History"),
    ],
)
def test_history_only_as_the_whole_type_of_one_input(text: str, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        parse_signature(text)
    assert parse_signature("question, history: History -> answer").inputs["history"].type == "History"


def test_syntax_error_reports_the_position_of_the_bad_field() -> None:
    text = "question, ctx: lisst[str] -> answer"
    with pytest.raises(SignatureSyntaxError) as info:
        parse_signature(text)
    assert info.value.position == text.index(" ctx")
    assert info.value.text == text


def test_field_both_input_and_output_is_rejected() -> None:
    with pytest.raises(ValueError, match="both an input and an output"):
        parse_signature("a -> a")


def test_nesting_limit_and_length_limits() -> None:
    ok = "list[" * MAX_TYPE_DEPTH + "str" + "]" * MAX_TYPE_DEPTH
    assert parse_type(ok).kind == "list"
    too_deep = "list[" * (MAX_TYPE_DEPTH + 2) + "str" + "]" * (MAX_TYPE_DEPTH + 2)
    with pytest.raises(SignatureSyntaxError, match="nested deeper"):
        parse_type(too_deep)
    with pytest.raises(SignatureSyntaxError, match="too long"):
        parse_type("Literal['" + "x" * 3000 + "']")
    with pytest.raises(SignatureSyntaxError, match="too long"):
        parse_signature("a -> " + ", ".join(f"f{i}" for i in range(5000)))


@pytest.mark.parametrize("text", [
    "Union[" * 50 + "int" + "]" * 50,
    "Optional[" * 50 + "int" + "]" * 50,
    "tuple[" * 50 + "int" + "]" * 50,
    "dict[str, " * 50 + "int" + "]" * 50,
    "list[" * 3 + "int | " * 300 + "str" + "]" * 3,  # wide is fine within the length limit
    "Union[" + ", ".join(["int"] * 600) + "]",
    "Literal[" + ", ".join(map(str, range(3000))) + "]",
    "int | " * 5000 + "str",
    "[" * 10_000,
    "Person" * 1000,
])
def test_hostile_type_strings_are_bounded(text: str) -> None:
    try:
        t = parse_type(text)
    except SignatureSyntaxError as exc:
        assert any(word in str(exc) for word in ("nested deeper", "too long", "expected", "unknown type"))
    else:
        assert len(text) <= 2000
        assert sum(1 for _ in t.walk()) <= len(text)


def test_field_names_reject_trailing_newline_in_long_form() -> None:
    with pytest.raises(ValidationError, match="invalid field name"):
        Signature.model_validate({"inputs": {"q\n": {}}, "outputs": {"a": {}}})


# -- the long form and serialisation ---------------------------------------------------------------


def test_long_form_equals_short_form_and_serialises_short_when_possible() -> None:
    long = Signature.model_validate({"inputs": {"q": {"type": "str"}}, "outputs": {"a": {"type": "List[int]"}}})
    short = Signature.model_validate("q -> a: list[int]")
    assert long == short
    assert long.model_dump() == "q -> a: list[int]"


def test_long_form_with_descriptions_or_instructions_serialises_long() -> None:
    sig = Signature.model_validate({"instructions": "Be brief.", "inputs": {"q": {"desc": "the question"}},
                                    "outputs": {"a": {}}})
    dumped = sig.model_dump()
    assert dumped["instructions"] == "Be brief."
    assert dumped["inputs"]["q"] == {"type": "str", "desc": "the question"}
    assert Signature.model_validate(dumped) == sig
    assert sig.with_instructions(None).instructions is None


def test_long_form_rejects_unknown_keys_and_bad_types() -> None:
    with pytest.raises(ValidationError, match="extra"):
        Signature.model_validate({"inputs": {}, "outputs": {"a": {}}, "extra": 1})
    with pytest.raises(ValidationError, match="unknown type"):
        Signature.model_validate({"outputs": {"a": {"type": "set[int]"}}})


# -- TypeExpr semantics ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_text", "value", "ok"),
    [
        ("str", "x", True),
        ("str", 1, False),
        ("int", 3, True),
        ("int", True, False),
        ("int", 3.0, False),
        ("bool", 0, False),
        ("float", 3, True),
        ("float", 3.5, True),
        ("float", True, False),
        ("float", math.nan, False),
        ("float", math.inf, False),
        ("float", 10**400, True),  # a huge int is a number, not an OverflowError
        ("list[int]", [1, 2], True),
        ("list[int]", [1, "2"], False),
        ("list[int]", (1, 2), False),
        ("dict[str, int]", {"a": 1}, True),
        ("dict[str, int]", {1: 1}, False),
        ("Optional[int]", None, True),
        ("Optional[int]", "1", False),
        ("int", None, False),
        ("Literal['a', 'b']", "a", True),
        ("Literal['a', 'b']", "c", False),
        ("Literal[1]", True, False),
        ("Literal[1]", 1.0, False),
        ("Literal[True]", 1, False),
    ],
)
def test_accepts(type_text: str, value: object, ok: bool) -> None:
    assert parse_type(type_text).accepts(value) is ok


@pytest.mark.parametrize(
    ("producer", "consumer", "ok"),
    [
        ("int", "float", True),
        ("float", "int", False),
        ("int", "str", True),        # DSPy renders scalars as text
        ("list[str]", "str", False),
        ("str", "list[str]", False),
        ("int", "Optional[int]", True),
        ("Optional[int]", "int", False),
        ("Optional[int]", "Optional[float]", True),
        ("list[int]", "list[float]", True),
        ("list[float]", "list[int]", False),
        ("dict[str, int]", "dict[str, float]", True),
        ("dict[str, str]", "list[str]", False),
        ("Literal['a', 'b']", "str", True),
        ("Literal['a']", "Literal['a', 'b']", True),
        ("Literal['a', 'c']", "Literal['a', 'b']", False),
        ("str", "Literal['a']", False),
        ("bool", "int", False),
        ("Literal[1, 2]", "float", True),
    ],
)
def test_assignable_to(producer: str, consumer: str, ok: bool) -> None:
    assert parse_type(producer).assignable_to(parse_type(consumer)) is ok


def test_element_only_for_lists() -> None:
    assert parse_type("list[int]").element() == TypeExpr("int")
    assert parse_type("dict[str, int]").element() is None
    assert parse_type("str").element() is None


def test_annotations() -> None:
    assert parse_type("dict[str, list[int]]").annotation() == dict[str, list[int]]
    assert parse_type("Optional[str]").annotation() == Optional[str]  # noqa: UP045
    assert TypeExpr.from_annotation(int | None) == parse_type("Optional[int]")
    with pytest.raises(TypeError, match="unsupported type"):
        TypeExpr.from_annotation(set[int])
    with pytest.raises(TypeError, match="unsupported type"):
        TypeExpr.from_annotation(tuple[int, ...])
    with pytest.raises(TypeError, match="dict keys"):
        TypeExpr.from_annotation(dict[list[int], str])
    assert TypeExpr.from_annotation(int | str) == parse_type("Union[int, str]")
