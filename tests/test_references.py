"""References in step arguments: ``$inputs.f``, ``$name.f``, ``$item``; ``$$`` escapes a dollar."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stepbridge.errors import OperationError
from stepbridge.references import Ref, ReferenceSyntaxError, find_refs, has_refs, parse_value, resolve

identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
refs = st.builds(Ref, identifiers, st.one_of(st.none(), identifiers))
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=10,
)


def escape(value: Any) -> Any:
    """How a file writes literal data: a string starting with ``$`` gets one more ``$``."""
    if isinstance(value, str):
        return "$" + value if value.startswith("$") else value
    if isinstance(value, list):
        return [escape(v) for v in value]
    if isinstance(value, dict):
        return {k: escape(v) for k, v in value.items()}
    return value


@given(json_values)
def test_escaped_literals_parse_back_to_themselves(value: Any) -> None:
    parsed = parse_value(escape(value))
    assert parsed == value
    assert not has_refs(parsed)


@given(st.text(max_size=20).map(lambda s: "$" + s))
def test_dollar_strings_round_trip_through_escaping(text: str) -> None:
    assert parse_value("$" + text) == text


@given(refs)
def test_reference_string_round_trip(ref: Ref) -> None:
    assert parse_value(str(ref)) == ref
    assert list(find_refs(parse_value(str(ref)), "/x")) == [("/x", ref)]


@given(st.dictionaries(identifiers, st.dictionaries(identifiers, json_scalars, min_size=1, max_size=3),
                       min_size=1, max_size=3), st.data())
def test_resolve_substitutes_every_reference(scope: dict[str, dict[str, Any]], data: st.DataObject) -> None:
    source = data.draw(st.sampled_from(sorted(scope)))
    field = data.draw(st.sampled_from(sorted(scope[source])))
    literal = data.draw(json_values)
    template = {"a": f"${source}.{field}", "b": [f"${source}", escape(literal)], "c": {"d": f"${source}.{field}"}}
    assert resolve(parse_value(template), scope) == {
        "a": scope[source][field], "b": [scope[source], literal], "c": {"d": scope[source][field]}}


def test_plain_values() -> None:
    assert parse_value("hello $name") == "hello $name"  # only a leading $ makes a reference
    assert parse_value(3) == 3
    assert parse_value(None) is None
    assert parse_value("$$") == "$"
    assert parse_value("$$inputs.q") == "$inputs.q"
    assert parse_value("$$$x") == "$$x"


def test_reference_shapes() -> None:
    assert parse_value("$inputs.question") == Ref("inputs", "question")
    assert parse_value("$item") == Ref("item", None)
    assert str(Ref("found", "passages")) == "$found.passages"
    assert str(Ref("item")) == "$item"


@pytest.mark.parametrize(
    "text",
    ["$", "$1abc", "$a b", "$a.", "$.a", "$a-b", "$a.b\n", "$a\n", "$inputs.q[0]", "${a}", "$a.b "],
)
def test_malformed_references_raise(text: str) -> None:
    with pytest.raises(ReferenceSyntaxError, match=r"malformed reference.*\$\$"):
        parse_value(text)


def test_malformed_reference_inside_a_list_raises() -> None:
    with pytest.raises(ReferenceSyntaxError):
        parse_value({"x": ["ok", {"y": "$bad ref"}]})


def test_find_refs_pointers_escape_json_pointer_tokens() -> None:
    parsed = parse_value({"a/b": ["$x.y", "lit", {"c~d": "$z"}], "e": "$$notref"})
    assert list(find_refs(parsed, "/steps/0/with")) == [
        ("/steps/0/with/a~1b/0", Ref("x", "y")),
        ("/steps/0/with/a~1b/2/c~0d", Ref("z")),
    ]
    assert has_refs(parsed)
    assert not has_refs(parse_value(["$$a", {"b": "c"}]))


def test_resolve_on_a_map_result_gives_the_field_of_every_element_in_order() -> None:
    scope = {"extracted": [{"fact": "a"}, {"fact": "b"}, {"fact": "c"}], "item": "p1"}
    assert resolve(parse_value("$extracted.fact"), scope) == ["a", "b", "c"]
    assert resolve(parse_value("$item"), scope) == "p1"
    assert resolve(parse_value("$extracted"), scope) == scope["extracted"]


def test_format_1_paths_need_format_2() -> None:
    with pytest.raises(ReferenceSyntaxError, match="need 'stepbridge: 2'"):
        parse_value("$a.b.c")
    assert parse_value("$a.b.c", version=2) == Ref("a", "b", "c")


def test_resolve_unknown_names_raise_key_error_and_missing_fields_a_typed_error() -> None:
    with pytest.raises(KeyError):
        resolve(Ref("missing", "x"), {})  # validation never lets this happen
    with pytest.raises(OperationError, match="has no field 'nope'"):
        resolve(Ref("found", "nope"), {"found": {"passages": []}})
