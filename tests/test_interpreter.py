"""The tree interpreter (stepbridge.interpreter) on format-2 programs: control flow, scope, trace
pointers and passes, parallel cancellation, run-time bounds and typed errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import stepbridge as sb
from stepbridge.errors import OperationError, RunTimeoutError, StepError
from stepbridge.validate import validate_data

CALLS: list[str] = []


@pytest.fixture(autouse=True)
def tools() -> Iterator[None]:
    def echo(text: str) -> str:
        CALLS.append(text)
        return text

    async def slow(text: str, delay: float) -> str:
        CALLS.append(f"start {text}")
        await asyncio.sleep(delay)
        CALLS.append(f"end {text}")
        return text

    async def boom(text: str) -> str:
        await asyncio.sleep(0.01)
        raise ValueError(f"boom {text}")

    CALLS.clear()
    sb.tools.register("t_echo", echo)
    sb.tools.register("t_slow", slow)
    sb.tools.register("t_boom", boom)
    yield
    for name in ("t_echo", "t_slow", "t_boom"):
        sb.tools.unregister(name)


MODULES = {
    "echo": {"type": "tool", "tool": "t_echo", "signature": "text -> result"},
    "slow": {"type": "tool", "tool": "t_slow", "signature": "text, delay: float -> result"},
    "boom": {"type": "tool", "tool": "t_boom", "signature": "text -> result"},
}


def program(steps: list[Any], signature: str = "text -> out", *, checked: bool = True) -> sb.Program:
    """A program; ``checked=False`` skips the static checks (as if types were unknown, e.g. ``Any``
    from a tool), to prove the run-time guards on their own."""
    data = {"stepbridge": 2, "name": "t", "signature": signature, "modules": MODULES, "steps": steps}
    return validate_data(data) if checked else sb.Program.model_validate(data)


def run(prog: sb.Program, backend: str = "native", **inputs: Any) -> sb.RunResult:
    return sb.run(prog, inputs or {"text": "hi"}, backend=backend)


def test_loop_until_with_state_index_and_trace_passes() -> None:
    prog = program([
        {"set": {"acc": [], "n": 0}},
        {"loop": {"max": 10, "index": "i", "steps": [
            {"call": "echo", "with": {"text": {"$template": ["{t}-{i}", {"t": "$inputs.text", "i": "$i"}]}},
             "as": "e"},
            {"set": {"acc": {"$concat": ["$acc", ["$e.result"]]}, "n": {"$add": ["$n", 1]}}},
        ], "until": {"$ge": ["$n", 3]}}},
        {"return": {"out": {"$join": ["$acc", ","]}}},
    ])
    result = run(prog)
    assert result.outputs == {"out": "hi-0,hi-1,hi-2"}
    assert result.flow_sequence() == [
        ("/steps/0", "set", None, ()),
        ("/steps/1", "loop", None, ()),
        ("/steps/1/loop/steps/0", "call", "echo", (0,)), ("/steps/1/loop/steps/1", "set", None, (0,)),
        ("/steps/1/loop/steps/0", "call", "echo", (1,)), ("/steps/1/loop/steps/1", "set", None, (1,)),
        ("/steps/1/loop/steps/0", "call", "echo", (2,)), ("/steps/1/loop/steps/1", "set", None, (2,)),
        ("/steps/2", "return", None, ()),
    ]
    loop = result.trace[1]
    assert loop.outputs == {"passes": 3, "stopped": "until"}
    assert all(r.step == 1 for r in result.trace[1:-1])


def test_loop_over_items_and_max_passes_without_until() -> None:
    prog = program([
        {"set": {"seen": []}},
        {"loop": {"max": 5, "over": {"$split": ["$inputs.text", " "]}, "item": "w",
                  "steps": [{"set": {"seen": {"$concat": ["$seen", [{"$template": ["<{w}>", {"w": "$w"}]}]]}}}]}},
        {"loop": {"max": 2, "steps": [{"set": {"seen": {"$concat": ["$seen", ["."]]}}}]}},
        {"return": {"out": {"$join": ["$seen", ""]}}},
    ])
    assert run(prog, text="a b c").outputs == {"out": "<a><b><c>.."}


def test_loop_over_a_list_longer_than_max_fails_the_step_with_its_pointer() -> None:
    prog = program([
        {"loop": {"max": 2, "over": {"$split": ["$inputs.text", " "]}, "item": "w",
                  "steps": [{"call": "echo", "with": {"text": "$w"}}]}},
        {"return": {"out": "x"}},
    ])
    with pytest.raises(StepError) as info:
        run(prog, text="a b c")
    err = info.value
    assert err.pointer == "/steps/0" and isinstance(err.cause, OperationError)
    assert err.cause.pointer == "/steps/0/loop/over" and "more than the loop's max of 2" in err.cause.message
    assert CALLS == []  # nothing ran
    assert err.trace[-1].error is not None and err.trace[-1].kind == "loop"


def test_return_inside_a_loop_ends_the_run() -> None:
    prog = program([
        {"loop": {"max": 100, "index": "i", "steps": [
            {"call": "echo", "with": {"text": "x"}},
            {"if": {"$eq": ["$i", 2]}, "then": [{"return": {"out": "early"}}]}]}},
        {"return": {"out": "late"}},
    ])
    result = run(prog)
    assert result.outputs == {"out": "early"} and len(CALLS) == 3
    assert result.trace[-1].pointer == "/steps/0/loop/steps/1/then/0" and result.trace[-1].passes == [2]


def test_if_and_switch_pick_branches_by_value() -> None:
    prog = program([
        {"switch": "$inputs.text", "cases": [
            {"when": ["a", "b"], "steps": [{"set": {"kind": "ab"}}]},
            {"when": 1, "steps": [{"set": {"kind": "one"}}]}],
         "default": [{"set": {"kind": "other"}}]},
        {"if": {"$and": [{"$ne": ["$kind", "other"]}, {"$in": ["$inputs.text", "abc"]}]},
         "then": [{"return": {"out": {"$template": ["{k}!", {"k": "$kind"}]}}}],
         "else": [{"return": {"out": "$kind"}}]},
    ])
    assert run(prog, text="b").outputs == {"out": "ab!"}
    other = run(prog, text="zz")
    assert other.outputs == {"out": "other"}
    assert other.trace[0].outputs == {"case": "default"} and other.trace[2].outputs == {"branch": "else"}
    assert [r.pointer for r in other.trace] == ["/steps/0", "/steps/0/default/0", "/steps/1", "/steps/1/else/0"]


def test_parallel_runs_calls_concurrently_and_binds_after_all() -> None:
    prog = program([
        {"parallel": [{"call": "slow", "with": {"text": "a", "delay": 0.2}, "as": "a"},
                      {"call": "slow", "with": {"text": "b", "delay": 0.2}, "as": "b"}]},
        {"return": {"out": {"$concat": ["$a.result", "$b.result"]}}},
    ])
    result = run(prog)
    assert result.outputs == {"out": "ab"}
    assert CALLS[:2] == ["start a", "start b"]  # both started before either ended
    record = result.trace[0]
    assert record.kind == "parallel" and [c.pointer for c in record.children] == [
        "/steps/0/parallel/0", "/steps/0/parallel/1"]


@pytest.mark.parametrize("backend", ["native", "dspy"])
def test_parallel_first_failure_cancels_the_siblings(backend: str) -> None:
    prog = program([
        {"parallel": [{"call": "slow", "with": {"text": "long", "delay": 5.0}, "as": "a"},
                      {"call": "boom", "with": {"text": "x"}, "as": "b"}]},
        {"return": {"out": {"$concat": ["$a.result", "$b.result"]}}},
    ])
    with pytest.raises(StepError) as info:
        run(prog, backend)
    err = info.value
    assert err.pointer == "/steps/0/parallel/1" and err.module == "boom" and "boom x" in err.message
    assert "start long" in CALLS and "end long" not in CALLS  # the 5 s sibling was cancelled, not awaited
    parallel = err.trace[-1]
    assert parallel.kind == "parallel" and parallel.error is not None
    errors = {c.pointer: c.error["type"] for c in parallel.children if c.error}
    assert errors["/steps/0/parallel/0"] == "RunCancelledError"


def test_run_time_size_limits_name_the_operation() -> None:
    doubling = program([
        {"set": {"xs": ["a"]}},
        {"loop": {"max": 100, "steps": [{"set": {"xs": {"$concat": ["$xs", "$xs"]}}}]}},
        {"return": {"out": "x"}},
    ])
    with pytest.raises(StepError) as info:
        run(doubling)
    cause = info.value.cause
    assert isinstance(cause, OperationError) and cause.operation == "concat"
    assert cause.pointer == "/steps/1/loop/steps/0/set/xs" and "1,000,000" in cause.message
    assert info.value.trace[-1].passes == [19]  # the 20th pass: 2**20 > 1,000,000


def test_shared_sub_values_count_for_every_occurrence() -> None:
    nesting = program([
        {"set": {"x": "payload"}},
        {"loop": {"max": 100, "steps": [{"set": {"x": ["$x", "$x"]}}]}},
        {"return": {"out": "x"}},
    ], checked=False)
    with pytest.raises(StepError) as info:
        run(nesting)
    cause = info.value.cause
    assert isinstance(cause, OperationError) and cause.pointer == "/steps/1/loop/steps/0/set/x"
    deep = program([
        {"set": {"x": "payload"}},
        {"loop": {"max": 100, "steps": [{"set": {"x": ["$x"]}}]}},
        {"return": {"out": "x"}},
    ], checked=False)
    with pytest.raises(StepError, match="nests deeper than 64"):
        run(deep)


def test_huge_text_from_a_template_is_refused() -> None:
    prog = program([
        {"set": {"t": "0123456789"}},
        {"loop": {"max": 100, "steps": [{"set": {"t": {"$template": ["{a}{a}", {"a": "$t"}]}}}]}},
        {"return": {"out": "$t"}},
    ])
    with pytest.raises(StepError) as info:
        run(prog)
    assert isinstance(info.value.cause, OperationError) and info.value.cause.operation == "template"


@pytest.mark.parametrize("value, message", [
    ({"$index": [[1, 2], 5]}, "index 5 is out of range"),
    ({"$lt": ["$inputs.text", 3]}, "compares two numbers or two strings"),
    ({"$get": [{"a": 1}, "$inputs.text"]}, "no field 'hi'"),
    ({"$split": ["$inputs.text", ""]}, "the separator is empty"),
])
def test_values_outside_an_operations_domain_are_typed_step_errors(value: Any, message: str) -> None:
    prog = program([{"set": {"x": value}}, {"return": {"out": "x"}}], checked=False)
    with pytest.raises(StepError) as info:
        run(prog)
    assert isinstance(info.value.cause, OperationError) and message in info.value.cause.message
    assert info.value.cause.pointer == "/steps/0/set/x"


def test_a_long_pure_loop_still_honours_the_timeout() -> None:
    prog = program([
        {"set": {"n": 0}},
        {"loop": {"max": 10_000, "steps": [{"loop": {"max": 98, "steps": [{"set": {"n": {"$add": ["$n", 1]}}}]}}]}},
        {"return": {"out": {"$template": ["{n}", {"n": "$n"}]}}},
    ])
    with pytest.raises(RunTimeoutError):
        sb.run(prog, {"text": "x"}, timeout=0.05)


class _V1Only:
    """An adapter that has not implemented format 2."""

    name = "v1only"
    capabilities = frozenset({"async", "tools", "map"})
    runs = 0

    async def prepare(self, program: sb.Program) -> None:
        pass

    async def run(self, program: sb.Program, inputs: dict[str, Any], options: Any) -> Any:
        type(self).runs += 1
        raise AssertionError("the core must refuse before running")

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("steps, capability", [
    ([{"set": {"x": 1}}, {"return": {"out": "x"}}], "control_flow"),
    ([{"call": "echo", "with": {"text": {"$len": "$inputs.text"}}, "as": "e"}, {"return": {"out": "$e.result"}}],
     "control_flow"),
    ([{"parallel": [{"call": "echo", "with": {"text": "a"}, "as": "e"}]}, {"return": {"out": "$e.result"}}],
     "parallel"),
])
def test_an_adapter_without_the_capability_is_refused_before_running(steps: list[Any], capability: str) -> None:
    prog = program(steps, checked=False)
    assert capability in prog.required_capabilities
    with pytest.raises(sb.UnsupportedCapabilityError) as info:
        sb.run(prog, {"text": "hi"}, backend=_V1Only())
    assert info.value.capability == capability and _V1Only.runs == 0


def test_format_2_file_using_only_format_1_constructs_needs_no_new_capability() -> None:
    prog = program([{"call": "echo", "with": {"text": "$inputs.text"}, "as": "e"}, {"return": {"out": "$e.result"}}])
    assert prog.required_capabilities == {"tools"}


def test_the_total_work_of_a_run_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pass rebuilds a growing list: every value is within bounds, the sum of the work is not."""
    from stepbridge import operations

    monkeypatch.setattr(operations, "MAX_WORK", 50_000)
    prog = program([
        {"set": {"xs": []}},
        {"loop": {"max": 10_000, "steps": [{"set": {"xs": {"$concat": ["$xs", ["$inputs.text"]]}}}]}},
        {"return": {"out": {"$join": ["$xs", ""]}}},
    ])
    with pytest.raises(StepError) as info:
        run(prog)
    cause = info.value.cause
    assert isinstance(cause, OperationError) and "50,000 units of work" in cause.message
    assert cause.pointer == "/steps/1/loop/steps/0/set/xs"
    assert 300 < info.value.trace[-1].passes[0] < 400  # ~ sqrt(2 * 50,000): quadratic growth caught early


def test_text_operations_in_a_loop_are_bounded_and_charged() -> None:
    """A hostile file: ``$replace`` of an empty ``old`` inserts the text around each of its characters, so
    the text grows by a factor of its length each pass: the bound stops it at the pass that would pass
    8,388,608 characters, a typed error at the operation's pointer, nothing built past it."""
    prog = program([
        {"set": {"t": "$inputs.text"}},
        {"loop": {"max": 10_000, "steps": [{"set": {"t": {"$upper": {"$replace": ["$t", "", "$t"]}}}}]}},
        {"return": {"out": {"$len": "$t"}}},
    ])
    with pytest.raises(StepError) as info:
        run(prog)  # text "hi": 2, 8, 80, 6,560, then 43,046,720: refused before it is built
    cause = info.value.cause
    assert isinstance(cause, OperationError) and cause.operation == "replace"
    assert "would hold 43,046,720 characters" in cause.message
    assert cause.pointer == "/steps/1/loop/steps/0/set/t/$upper"
    assert info.value.trace[-1].passes[0] == 3  # three passes done, the fourth refused


def test_reference_cycles_cannot_be_written() -> None:
    from stepbridge.errors import ProgramValidationError

    with pytest.raises(ProgramValidationError) as info:
        program([{"set": {"a": "$b", "b": "$a"}}, {"return": {"out": "$a"}}])
    pointers = {i.pointer for i in info.value.issues if i.severity == "error"}
    assert pointers == {"/steps/0/set/a", "/steps/0/set/b"}  # values are computed before any is assigned
