"""Value operations (stepbridge.operations): each against a plain-Python reference on generated
values, totality (a typed OperationError or a result, never another exception), static result types
that hold for the run-time result, and the size bounds."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from stepbridge import operations
from stepbridge.errors import OperationError
from stepbridge.operations import OPERATIONS, OperationTypeError, json_equal, measure, run_operation
from stepbridge.signature import TypeExpr

scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False,
                                                                             width=32) | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=12)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True)


def apply(name: str, args: Any) -> Any:
    return run_operation(OPERATIONS[name], args, "/p")


def lazy(name: str, args: list[Any]) -> Any:
    from stepbridge.operations import run_lazy

    return run_lazy(OPERATIONS[name], [lambda _s, v=v: v for v in args], {}, "/p")


def canon(value: Any) -> str:
    """A reference for JSON equality: canonical JSON with integral floats as ints, bools kept apart."""
    def norm(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, int | float):
            return ["num", float(v) + 0.0]  # -0.0 == 0
        if isinstance(v, list):
            return [norm(x) for x in v]
        return {k: norm(x) for k, x in v.items()}
    return json.dumps(norm(value), sort_keys=True)


# -- JSON semantics ----------------------------------------------------------------------------------


@given(json_values, json_values)
def test_json_equal_matches_canonical_json(a: Any, b: Any) -> None:
    assert json_equal(a, b) == (canon(a) == canon(b))
    assert json_equal(a, a) and json_equal(a, b) == json_equal(b, a)


def test_json_equal_numbers_and_booleans() -> None:
    assert json_equal(1, 1.0) and json_equal([1, {"a": 2}], [1.0, {"a": 2.0}])
    assert not json_equal(True, 1) and not json_equal(False, 0) and not json_equal(None, False)
    assert not json_equal("1", 1) and not json_equal([1], [1, 1])


# -- each operation against a reference --------------------------------------------------------------


@given(st.lists(st.lists(json_values, max_size=4), min_size=1, max_size=4))
def test_concat_lists(lists: list[list[Any]]) -> None:
    assert apply("concat", lists) == [x for part in lists for x in part]


@given(st.lists(st.text(max_size=6), min_size=1, max_size=5))
def test_concat_strings(parts: list[str]) -> None:
    assert apply("concat", parts) == "".join(parts)


@given(st.lists(json_values, max_size=12))
def test_dedupe_keeps_the_first_of_each_json_equal_value(items: list[Any]) -> None:
    expected: list[Any] = []
    for item in items:
        if not any(json_equal(item, seen) for seen in expected):
            expected.append(item)
    assert apply("dedupe", items) == expected


@given(st.lists(st.text(max_size=5), max_size=6), st.text(max_size=3))
def test_join_and_split(parts: list[str], sep: str) -> None:
    joined = apply("join", [parts, sep])
    assert joined == sep.join(parts)
    if sep:
        assert apply("split", [joined, sep]) == joined.split(sep)


# text with what Python's str methods treat specially: every kind of Unicode whitespace (strip), characters
# whose case mapping changes the length ('ß', 'İ', 'ﬄ'), combining marks, astral characters
_SPECIAL = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2003\u200a\u2028\u2029\u202f\u205f\u3000"
texts = st.text(alphabet=st.sampled_from(_SPECIAL + "aAbß\u0130\ufb04\u0301Σς\U0001d400\u200b") | st.characters(),
                max_size=12)


@given(texts)
def test_strip_lower_upper_are_pythons_str_methods(text: str) -> None:
    assert apply("strip", text) == text.strip()
    assert apply("lower", text) == text.lower()
    assert apply("upper", text) == text.upper()


@given(texts, st.text(alphabet="aAß \n", max_size=2) | texts, st.text(alphabet="xy ", max_size=3))
def test_replace_startswith_endswith_are_pythons_str_methods(text: str, old: str, new: str) -> None:
    assert apply("replace", [text, old, new]) == text.replace(old, new)  # an empty old included
    assert apply("startswith", [text, old]) is text.startswith(old)
    assert apply("endswith", [text, old]) is text.endswith(old)
    assert apply("startswith", [text, text[:3]]) is True and apply("endswith", [text, text[-3:]]) is True


@pytest.mark.parametrize(("name", "args"), [
    ("strip", 3), ("lower", ["A"]), ("upper", None), ("replace", ["a", "a", 1]), ("replace", [["a"], "a", "b"]),
    ("startswith", ["abc", ["a", "b"]]), ("endswith", [1, "a"]),
])
def test_text_operations_refuse_non_strings(name: str, args: Any) -> None:
    with pytest.raises(OperationError, match=f"/p: \\${name} needs"):
        apply(name, args)


@given(st.sampled_from(["strip", "lower", "upper", "replace", "startswith", "endswith"]), texts,
       st.text(max_size=3), st.text(max_size=200))
def test_text_operations_charge_what_they_read_and_build(name: str, text: str, old: str, new: str) -> None:
    """The work budget is charged for the text each operation reads and builds, 1 per 64 characters
    (``$replace`` of an empty ``old`` builds len(text) + 1 copies of ``new``: charged as built)."""
    text = text * 30
    args: Any = text if OPERATIONS[name].arity is None else [text, old, new] if name == "replace" else [text, old]
    scope = {operations.WORK_KEY: [10**9]}
    result = run_operation(OPERATIONS[name], args, "/p", scope)
    read = sum(len(a) // 64 for a in ([args] if isinstance(args, str) else args))
    built = len(result) // 64 if isinstance(result, str) else 0
    assert 10**9 - scope[operations.WORK_KEY][0] == read + built
    if read + built:
        with pytest.raises(OperationError, match="units of work"):
            run_operation(OPERATIONS[name], args, "/p", {operations.WORK_KEY: [read + built - 1]})


def test_text_operations_are_bounded_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """``$replace`` with an empty ``old`` inserts ``new`` around every character (Python's rule): the size is
    known from a count, and refused before the text is built; case mappings that lengthen text are checked."""
    monkeypatch.setattr(operations, "MAX_CHARS", 1000)
    with pytest.raises(OperationError, match="would hold 1,406 characters"):
        apply("replace", ["a" * 200, "", "xyzzyx"])  # 200 characters and 201 insertions of 6
    assert apply("replace", ["a" * 100, "", "-"]) == "-" + "-".join("a" * 100) + "-"
    assert apply("replace", ["ab" * 400, "b", ""]) == "a" * 400  # shrinking is always within the bound
    with pytest.raises(OperationError, match="characters"):
        apply("upper", "ß" * 600)  # 600 characters in, 1,200 out
    assert apply("upper", "ß" * 500) == "SS" * 500
    with pytest.raises(OperationError, match="characters"):
        apply("lower", "\u0130" * 600)
    with pytest.raises(OperationError, match="would hold 1,001 characters"):
        apply("lower", "a" * 1001)  # a text past the bound: refused before it is mapped


@given(st.dictionaries(names, json_values, min_size=1, max_size=4), st.text(alphabet="ab {}", max_size=10))
def test_template_renders_fields_like_python_str(fields: dict[str, Any], filler: str) -> None:
    filler = filler.replace("{", "{{").replace("}", "}}")
    text = filler + "".join(f"[{{{k}}}]" for k in fields)
    expected = filler.replace("{{", "{").replace("}}", "}") + "".join(
        f"[{v if isinstance(v, str) else str(v)}]" for v in fields.values())
    assert apply("template", [text, fields]) == expected


@given(json_values)
def test_len(value: Any) -> None:
    if isinstance(value, list | str | dict):
        assert apply("len", value) == len(value)
    else:
        with pytest.raises(OperationError):
            apply("len", value)


@given(st.lists(json_values, max_size=6) | st.text(max_size=6), st.integers(-8, 8))
def test_index(seq: Any, i: int) -> None:
    if -len(seq) <= i < len(seq):
        assert apply("index", [seq, i]) == seq[i]
    else:
        with pytest.raises(OperationError, match="out of range"):
            apply("index", [seq, i])


@given(st.lists(json_values, max_size=6) | st.text(max_size=6), st.none() | st.integers(-8, 8),
       st.none() | st.integers(-8, 8))
def test_slice(seq: Any, start: int | None, stop: int | None) -> None:
    assert apply("slice", [seq, start, stop]) == seq[start:stop]


@given(st.dictionaries(st.text(max_size=3), json_values, max_size=4), st.text(max_size=3), json_values)
def test_get(obj: dict[str, Any], key: str, default: Any) -> None:
    assert apply("get", [obj, key, default]) == obj.get(key, default)
    if key in obj:
        assert apply("get", [obj, key]) == obj[key]
    else:
        with pytest.raises(OperationError, match="no field"):
            apply("get", [obj, key])


@given(st.integers(-10**12, 10**12) | st.floats(-1e300, 1e300), st.integers(-10**12, 10**12) | st.floats(-1e300, 1e300))
def test_add(a: float, b: float) -> None:
    assert apply("add", [a, b]) == a + b


def test_add_stays_in_range() -> None:
    with pytest.raises(OperationError, match="64-bit"):
        apply("add", [2**62, 2**62])
    with pytest.raises(OperationError, match="finite"):
        apply("add", [1e308, 1e308])


@given(st.integers() | st.floats(allow_nan=False) | st.text(max_size=3),
       st.integers() | st.floats(allow_nan=False) | st.text(max_size=3))
def test_comparisons(a: Any, b: Any) -> None:
    comparable = (isinstance(a, str) and isinstance(b, str)) or (not isinstance(a, str) and not isinstance(b, str))
    for name, check in (("lt", a < b if comparable else None), ("le", a <= b if comparable else None),
                        ("gt", a > b if comparable else None), ("ge", a >= b if comparable else None)):
        if comparable:
            assert apply(name, [a, b]) is check
        else:
            with pytest.raises(OperationError, match="two numbers or two strings"):
                apply(name, [a, b])
    assert apply("eq", [a, b]) is json_equal(a, b) and apply("ne", [a, b]) is (not json_equal(a, b))


@given(json_values, st.lists(json_values, max_size=5))
def test_in_list(x: Any, items: list[Any]) -> None:
    assert apply("in", [x, items]) is any(canon(x) == canon(i) for i in items)


@given(st.text(max_size=3), st.text(max_size=8) | st.dictionaries(st.text(max_size=3), scalars, max_size=3))
def test_in_string_and_object(x: str, container: Any) -> None:
    assert apply("in", [x, container]) is (x in container)


@given(st.lists(json_values, min_size=1, max_size=5))
def test_and_or_not_read_truthiness(values: list[Any]) -> None:
    assert lazy("and", values) is all(bool(v) for v in values)
    assert lazy("or", values) is any(bool(v) for v in values)
    assert apply("not", values[0]) is (not values[0])


def test_and_or_short_circuit() -> None:
    def explode(_: Any) -> Any:
        raise AssertionError("evaluated past the deciding value")

    from stepbridge.operations import run_lazy

    assert run_lazy(OPERATIONS["and"], [lambda s: 0, explode], {}, "") is False
    assert run_lazy(OPERATIONS["or"], [lambda s: "x", explode], {}, "") is True


# -- totality and typed errors -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, op in OPERATIONS.items() if not op.lazy))
@given(data=st.data())
@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
def test_every_operation_is_total(name: str, data: st.DataObject) -> None:
    spec = OPERATIONS[name]
    if spec.arity is None:
        args: Any = data.draw(json_values)
    else:
        lo, hi = spec.arity
        args = data.draw(st.lists(json_values, min_size=lo, max_size=hi if hi is not None else lo + 3))
    try:
        apply(name, args)
    except OperationError as exc:
        assert exc.pointer == "/p" and exc.operation == name and exc.message.startswith(f"/p: ${name}")


# -- static result types hold at run time -----------------------------------------------------------

TYPED = [
    (TypeExpr("str"), st.text(max_size=6)),
    (TypeExpr("int"), st.integers(-100, 100)),
    (TypeExpr("float"), st.floats(-1e6, 1e6)),
    (TypeExpr("bool"), st.booleans()),
    (TypeExpr("list", (TypeExpr("str"),)), st.lists(st.text(max_size=4), max_size=4)),
    (TypeExpr("list", (TypeExpr("int"),)), st.lists(st.integers(-9, 9), max_size=4)),
    (TypeExpr("dict", (TypeExpr("int"),)), st.dictionaries(st.text(max_size=3), st.integers(), max_size=3)),
    (TypeExpr("record", (("a", TypeExpr("str")), ("n", TypeExpr("int")))),
     st.fixed_dictionaries({"a": st.text(max_size=3), "n": st.integers()})),
]


@pytest.mark.parametrize("name", sorted(n for n, op in OPERATIONS.items() if not op.lazy))
@given(data=st.data())
@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_static_result_type_accepts_the_run_time_result(name: str, data: st.DataObject) -> None:
    spec = OPERATIONS[name]
    count = 1 if spec.arity is None else data.draw(st.integers(spec.arity[0], spec.arity[1] or spec.arity[0] + 2))
    picks = [data.draw(st.sampled_from(TYPED)) for _ in range(count)]
    types = [t for t, _ in picks]
    values = [data.draw(strategy) for _, strategy in picks]
    if name == "get" and len(values) >= 2 and isinstance(values[1], str) and types[0].kind == "record":
        values[1] = data.draw(st.sampled_from(["a", "n"]))
    try:
        result_type = spec.result(types, values)
    except OperationTypeError:
        return  # refused statically: validation reports it
    try:
        result = apply(name, values[0] if spec.arity is None else values)
    except OperationError:
        return  # statically fine, outside the domain at run time (an index out of range, a missing key)
    assume(not (isinstance(result, float) and not math.isfinite(result)))
    assert result_type.accepts(result), (name, [str(t) for t in types], values, result, str(result_type))


# -- bounds ------------------------------------------------------------------------------------------


def test_results_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(operations, "MAX_ITEMS", 100)
    monkeypatch.setattr(operations, "MAX_CHARS", 1000)
    with pytest.raises(OperationError, match="would have 101 elements"):
        apply("concat", [list(range(60)), list(range(41))])
    with pytest.raises(OperationError, match="1,001 characters"):
        apply("concat", ["x" * 500, "y" * 501])
    with pytest.raises(OperationError, match="characters"):
        apply("join", [["x" * 400] * 3, ","])
    with pytest.raises(OperationError, match="elements"):
        apply("split", [",".join("a" * 200), ","])
    with pytest.raises(OperationError, match="characters"):
        apply("template", ["{a}{a}{a}", {"a": "z" * 400}])
    shared = list(range(30))
    with pytest.raises(OperationError, match="more than 100 values"):
        apply("concat", [[shared, shared], [shared, shared]])  # 4 x 31 nested values, counted per occurrence


@given(json_values)
def test_measure_counts_values_and_text(value: Any) -> None:
    def size(v: Any) -> tuple[int, int]:
        if isinstance(v, str):
            return 1, len(v)
        if isinstance(v, list):
            parts = [size(x) for x in v]
            return 1 + sum(p[0] for p in parts), sum(p[1] for p in parts)
        if isinstance(v, dict):
            parts = [size(x) for x in v.values()]
            return 1 + sum(p[0] for p in parts), sum(len(k) for k in v) + sum(p[1] for p in parts)
        return 1, 0

    nodes, _chars = size(value)
    assert measure(value, "", "x") is value
    import stepbridge.operations as ops_module

    original = ops_module.MAX_ITEMS, ops_module.MAX_CHARS
    try:
        ops_module.MAX_ITEMS, ops_module.MAX_CHARS = max(nodes - 1, 0), 10**9
        if isinstance(value, list | dict) and nodes > 1:
            with pytest.raises(OperationError):
                measure(value, "", "x")
    finally:
        ops_module.MAX_ITEMS, ops_module.MAX_CHARS = original


@given(st.lists(st.lists(json_values, max_size=5), min_size=1, max_size=4))
def test_concat_charges_as_measuring_its_result_with_or_without_remembered_sizes(parts: list[Any]) -> None:
    """$concat measures its result from its parts' sizes (remembered per run): the charge is the one
    measuring the result itself gives, whether the parts' sizes were remembered or walked."""
    def charge(value: Any) -> int:
        scope = {operations.WORK_KEY: [10**9]}
        measure(value, "", "x", scope)
        return 10**9 - scope[operations.WORK_KEY][0]

    expected = charge([x for part in parts for x in part])
    cold = {operations.WORK_KEY: [10**9], operations.SIZES_KEY: {}}
    result = run_operation(OPERATIONS["concat"], parts, "/p", cold)
    assert 10**9 - cold[operations.WORK_KEY][0] == expected
    # the result's size is remembered: concatenating it again charges as walking it would
    warm = {operations.WORK_KEY: [10**9], operations.SIZES_KEY: cold[operations.SIZES_KEY]}
    run_operation(OPERATIONS["concat"], [result, ["z"]], "/p", warm)
    assert 10**9 - warm[operations.WORK_KEY][0] == charge([*result, "z"])


def test_a_remembered_size_is_not_trusted_once_the_list_changed() -> None:
    """A module may append to a list it was given: a remembered size whose length no longer matches is
    walked again, so the bounds still hold."""
    scope = {operations.WORK_KEY: [10**9], operations.SIZES_KEY: {}}
    state = run_operation(OPERATIONS["concat"], [["a"], ["b"]], "/p", scope)
    state.extend("x" * 50 for _ in range(10))  # what a tool might do to its argument
    original = operations.MAX_CHARS
    try:
        operations.MAX_CHARS = 400
        with pytest.raises(OperationError, match="characters"):
            run_operation(OPERATIONS["concat"], [state, ["c"]], "/p", scope)
    finally:
        operations.MAX_CHARS = original


def test_remembered_sizes_stay_bounded() -> None:
    scope = {operations.WORK_KEY: [10**9], operations.SIZES_KEY: {}}
    for i in range(100):
        run_operation(OPERATIONS["concat"], [[i], [i]], "/p", scope)
    assert len(scope[operations.SIZES_KEY]) <= 16


def _outcome(run: Any, scope: dict[str, Any]) -> tuple[Any, ...]:
    try:
        result = run(scope)
    except OperationError as exc:
        return ("error", str(exc), exc.pointer, exc.operation, scope[operations.WORK_KEY][0])
    return ("ok", json.dumps(result), scope[operations.WORK_KEY][0])


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(json_values, max_size=6) | st.text(max_size=6) | json_values,
       st.lists(json_values, max_size=6) | st.text(max_size=6) | json_values,
       st.integers(0, 40), st.sampled_from([None, 6, 10**6]), st.sampled_from([None, 12, 2**23]), st.booleans())
def test_concat_two_is_run_operation(a: Any, b: Any, budget: int, max_items: int | None, max_chars: int | None,
                                     remembered: bool) -> None:
    """The interpreter's two-value ``$concat`` (a loop appending to its state) gives what the general path
    gives: the same result or error (bounds, kinds, the budget), the same charge."""
    concat = OPERATIONS["concat"]
    original = operations.MAX_ITEMS, operations.MAX_CHARS
    try:
        operations.MAX_ITEMS = max_items or original[0]
        operations.MAX_CHARS = max_chars or original[1]
        scopes = []
        for _ in range(2):
            scope: dict[str, Any] = {operations.WORK_KEY: [budget], operations.SIZES_KEY: {}}
            if remembered and isinstance(a, list):  # a loop's state, measured when it was built
                with contextlib.suppress(OperationError):
                    operations.measure(a, "/p", "x", {**scope, operations.WORK_KEY: [10**9]})
            scopes.append(scope)
        fast = _outcome(lambda s: operations.concat_two(concat, a, b, "/p", s), scopes[0])
        general = _outcome(lambda s: run_operation(concat, [a, b], "/p", s), scopes[1])
    finally:
        operations.MAX_ITEMS, operations.MAX_CHARS = original
    assert fast == general


@given(st.text(max_size=20), st.sampled_from([1, 2, 10**6]), st.sampled_from([0, 5, 2**23]))
def test_a_one_text_list_measures_as_walking_it(text: str, max_items: int, max_chars: int) -> None:
    """``[$r.answer]`` (a loop's append) is sized without the walk: the same size, the same bound errors."""
    original = operations.MAX_ITEMS, operations.MAX_CHARS

    def outcome(size: Any) -> Any:
        try:
            return size()
        except OperationError as exc:
            return str(exc)

    try:
        operations.MAX_ITEMS, operations.MAX_CHARS = max_items, max_chars
        fast = outcome(lambda: operations._size([text], "/p", "x"))
        walked = outcome(lambda: operations._walk([text], 0, {}, "/p", "x"))
    finally:
        operations.MAX_ITEMS, operations.MAX_CHARS = original
    assert fast == walked
