"""Hypothesis strategies for format 2 types, shared by the grammar, formats and reference LM tests."""

from __future__ import annotations

from hypothesis import strategies as st
from stepbridge.named_types import TypeSpace
from stepbridge.signature import TypeExpr

__all__ = ["SPACE", "type_exprs2"]

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


# format 2: Any, unions, tuples, dicts with scalar keys, declared names
key_types = st.one_of(scalar_types, literal_types.filter(lambda t: all(isinstance(v, str) for v in t.args)))


def _union_of(members: list[TypeExpr]) -> TypeExpr:
    flat: list[TypeExpr] = []
    for m in members:
        for item in m.args if m.kind == "union" else (m,):
            if item not in flat:
                flat.append(item)
    return flat[0] if len(flat) == 1 else TypeExpr("union", tuple(flat))


def _extend2(inner: st.SearchStrategy[TypeExpr]) -> st.SearchStrategy[TypeExpr]:
    plain = inner.filter(lambda t: t.kind != "optional")
    return st.one_of(
        _extend(inner),
        st.lists(inner, min_size=1, max_size=3).map(lambda ts: TypeExpr("tuple", tuple(ts))),
        st.lists(plain, min_size=2, max_size=3).map(_union_of),
        st.tuples(key_types, inner).map(lambda kv: TypeExpr("dict", (kv[1],) if kv[0].kind == "str" else kv[::-1])),
    )


named_types = st.sampled_from(["Person", "Address", "Mood"]).map(lambda n: TypeExpr("named", (n,)))
type_exprs2 = st.recursive(st.one_of(scalar_types, literal_types, st.just(TypeExpr("any")), named_types),
                           _extend2, max_leaves=5)


SPACE, _problems = TypeSpace.build({
    "Address": {"description": "A postal address.", "fields": {"street": "str", "city": {"type": "str", "desc": "c"}}},
    "Person": {"fields": {"name": "str", "age": "Optional[int]", "home": "Address", "mood": "Mood"}},
    "Mood": {"enum": ["happy", "sad", "a b", "_x"]},
})
assert not _problems
