"""Reference parsing is pure: property-test it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from stepbridge.storage.refs import MIN_PREFIX, RefSyntaxError, parse_ref

names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_\-.]{0,40}\Z")
aliases = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_\-.]{0,20}\Z").filter(lambda a: a != "latest")
hexes = st.text(alphabet="0123456789abcdef", min_size=MIN_PREFIX, max_size=64)


@given(names, st.integers(min_value=1, max_value=10**9))
def test_name_at_version(name: str, version: int) -> None:
    ref = parse_ref(f"{name}@{version}")
    assert (ref.kind, ref.name, ref.version) == ("version", name, version)
    assert str(ref) == f"{name}@{version}"


@given(names, aliases)
def test_name_at_alias(name: str, alias: str) -> None:
    ref = parse_ref(f"{name}@{alias}")
    assert (ref.kind, ref.name, ref.alias) == ("alias", name, alias)
    assert parse_ref(str(ref)) == ref


@given(names)
def test_plain_name(name: str) -> None:
    ref = parse_ref(name)
    if ref.kind == "name":
        assert ref.name == name
    else:  # a name made only of hex digits, long enough to be a prefix: remembers the name too
        assert ref.kind in ("prefix", "hash") and ref.name == name


@given(hexes)
def test_hashes_and_prefixes(h: str) -> None:
    ref = parse_ref(h.upper())
    assert ref.hash == h
    assert ref.kind == ("hash" if len(h) == 64 else "prefix")


@given(st.text(max_size=80))
def test_anything_else_parses_or_raises_a_storage_error(text: str) -> None:
    try:
        ref = parse_ref(text)
    except RefSyntaxError:
        return
    assert parse_ref(str(ref)) == ref


@pytest.mark.parametrize(
    "bad", ["", "  ", "@1", "qa@", "qa@0", "qa@-1", "1qa", "qa@1x@2", "a" * 10 + "/", "f" * 65, "qa@ prod"]
)
def test_rejects(bad: str) -> None:
    with pytest.raises(RefSyntaxError):
        parse_ref(bad)


def test_latest_is_the_name() -> None:
    assert parse_ref("qa@latest").kind == "name"
