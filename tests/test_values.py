"""Parsing and evaluating values (stepbridge.values): literals, references with paths, operations,
``$$`` escapes, format-1 rules, and evaluation against a scope."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stepbridge.errors import OperationError
from stepbridge.values import Op, Ref, ValueSyntaxError, compile_value, find_refs, parse_value

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
plain_text = st.text(max_size=8).filter(lambda s: not s.startswith("$"))
plain_keys = st.text(max_size=5).filter(lambda s: not s.startswith("$"))
literals = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | plain_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(plain_keys, inner, max_size=4),
    max_leaves=15)
raw_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12)


@given(literals, st.sampled_from([1, 2]))
def test_literals_parse_to_themselves_and_evaluate_to_fresh_copies(value: Any, version: int) -> None:
    parsed = parse_value(value, version=version)
    assert parsed == value
    getter = compile_value(parsed)
    first = getter({})
    assert first == value
    if isinstance(first, list):
        first.append("mutated")
        assert getter({}) == value  # a module mutating its argument cannot change the program


@given(st.text(max_size=10))
def test_double_dollar_escapes(text: str) -> None:
    assert parse_value("$$" + text, version=2) == "$" + text
    assert parse_value({"$$" + text: 1}, version=2) == {"$" + text: 1}


@given(names, st.lists(names, max_size=8))
def test_references_with_paths_round_trip(source: str, path: list[str]) -> None:
    text = "$" + ".".join([source, *path])
    ref = parse_value(text, version=2)
    assert ref == Ref(source, *path) and str(ref) == text
    if len(path) <= 1:
        assert parse_value(text, version=1) == ref
    else:
        with pytest.raises(ValueSyntaxError, match="need 'stepbridge: 2'"):
            parse_value(text, version=1)


def test_paths_longer_than_eight_fields_are_refused() -> None:
    with pytest.raises(ValueSyntaxError, match="at most 8"):
        parse_value("$a" + ".b" * 9, version=2)


@given(raw_values, st.sampled_from([1, 2]))
def test_parsing_arbitrary_data_either_succeeds_or_raises_a_typed_error(value: Any, version: int) -> None:
    try:
        parse_value(value, version=version, pointer="/x")
    except ValueSyntaxError as exc:
        assert exc.pointer.startswith("/x")


def test_operations_parse_with_pointers() -> None:
    parsed = parse_value({"$concat": [["a"], {"$split": ["$x.y", ","]}]}, version=2, pointer="/steps/0/set/v")
    assert isinstance(parsed, Op) and parsed.name == "concat" and parsed.pointer == "/steps/0/set/v"
    inner = parsed.args[1]
    assert isinstance(inner, Op) and inner.pointer == "/steps/0/set/v/$concat/1"
    assert list(find_refs(parsed, "/steps/0/set/v")) == [("/steps/0/set/v/$concat/1/$split/0", Ref("x", "y"))]
    assert compile_value(parsed)({"x": {"y": "b,c"}}) == ["a", "b", "c"]


@pytest.mark.parametrize("raw, message", [
    ({"$nope": 1}, "unknown operation '$nope'"),
    ({"$len": 1, "x": 2}, "exactly one key"),
    ({"$join": "abc"}, "takes a list of arguments"),
    ({"$index": [[1]]}, "takes 2 arguments"),
    ({"$template": ["{a}", "$x"]}, "mapping of placeholder names"),
    ({"$template": ["{a}", {"b": 1}]}, "no value for the placeholder {a}"),
    ({"$template": ["{a", {"a": 1}]}, "a lone '{'"),
    ("$a.", "malformed reference"),
])
def test_malformed_values(raw: Any, message: str) -> None:
    with pytest.raises(ValueSyntaxError, match=message.replace("{", r"\{").replace("(", r"\(").replace("$", r"\$")):
        parse_value(raw, version=2)


def test_format_1_reads_dollar_keys_literally_but_names_operations() -> None:
    assert parse_value({"$k": 1, "b": "$x.y"}) == {"$k": 1, "b": Ref("x", "y")}
    with pytest.raises(ValueSyntaxError, match="need 'stepbridge: 2'"):
        parse_value({"$concat": [[1], [2]]})


def test_paths_broadcast_over_lists_and_stop_at_null() -> None:
    scope = {"m": [{"a": {"b": 1}}, {"a": {"b": 2}}], "n": None, "s": "text"}
    assert compile_value(Ref("m", "a", "b"))(scope) == [1, 2]
    assert compile_value(Ref("n", "a", "b"))(scope) is None
    with pytest.raises(OperationError, match=r"\$s is str, it has no field 'a'"):
        compile_value(Ref("s", "a"), "/steps/0/with/x")(scope)
    with pytest.raises(OperationError) as info:
        compile_value(Ref("m", "a", "c"), "/steps/0/with/x")(scope)
    assert info.value.pointer == "/steps/0/with/x"


def test_deep_values_are_refused_not_crashed_on() -> None:
    deep: Any = "x"
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(ValueSyntaxError, match="nested deeper than 64"):
        parse_value(deep, version=2)
