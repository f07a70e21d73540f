"""How fast hostile format-2 programs are refused: statically (validation) or at run time (typed errors).

Timing is measured here, never asserted in tests (tests/test_flow.py and tests/test_interpreter.py
assert the refusals and their pointers).

    python bench/bench_hostile_format2.py
"""

from __future__ import annotations

import time
from typing import Any

import stepbridge as sb
from stepbridge.errors import ProgramValidationError, StepbridgeError

TOOL = {"echo": {"type": "tool", "tool": "hostile_echo", "signature": "text -> result"}}


def program(steps: list[Any], **extra: Any) -> dict[str, Any]:
    return {"stepbridge": 2, "name": "hostile", "signature": "text -> out", "modules": TOOL, "steps": steps, **extra}


def nested_ifs(depth: int) -> list[Any]:
    steps: list[Any] = [{"return": {"out": "x"}}]
    for _ in range(depth):
        steps = [{"if": True, "then": steps}]
    return steps


def nested_value(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def nested_not(depth: int) -> Any:
    value: Any = "$x"
    for _ in range(depth):
        value = {"$not": value}
    return value


ECHO = [{"call": "echo", "with": {"text": "$inputs.text"}, "as": "e"}]
STATIC: dict[str, Any] = {
    "loop max 10**12": program([{"loop": {"max": 10**12, "steps": ECHO}}, {"return": {"out": "x"}}]),
    "10,000 nested ifs (data)": program(nested_ifs(10_000)),
    "10,000 nested ifs (YAML)": "stepbridge: 2\nname: t\nsignature: 'q -> a'\nsteps: " + "[{if: true, then: " * 10_000
    + "[{return: {a: x}}]" + "}]" * 10_000 + "\n",
    "value nested 10,000 deep": program([{"set": {"x": nested_value(10_000)}}, {"return": {"out": "x"}}]),
    "operations nested 10,000 deep": program([{"set": {"x": 1}},
                                              {"return": {"out": {"$template": ["{a}", {"a": nested_not(10_000)}]}}}]),
    "nested loops: 10**8 calls": program([{"loop": {"max": 10_000, "steps": [
        {"loop": {"max": 10_000, "steps": ECHO}}]}}, {"return": {"out": "x"}}]),
    "reference cycle in one set": program([{"set": {"a": "$b", "b": "$a"}}, {"return": {"out": "$a"}}]),
    "value containing itself": program([{"set": {"x": [[]]}}, {"loop": {"max": 50, "steps": [
        {"set": {"x": ["$x", "$x"]}}]}}, {"return": {"out": "x"}}]),
    "1,000 unknown operations": program([{"set": {f"v{i}": {"$bogus": i} for i in range(1000)}},
                                        {"return": {"out": "x"}}]),
}
LARGE_VALID: dict[str, Any] = {  # linear-time stress: accepted, the time is what matters
    "5,000 branches x 1,000 names": program(
        [{"set": {f"v{i}": i for i in range(1000)}}]
        + [{"if": {"$eq": [f"$v{i % 1000}", 1]}, "then": [{"set": {"y": i}}], "else": [{"set": {"y": 0}}]}
           for i in range(5000)] + [{"return": {"out": {"$template": ["{y}", {"y": "$y"}]}}}]),
    "1,250 branches x 1,000 names": program(
        [{"set": {f"v{i}": i for i in range(1000)}}]
        + [{"if": {"$eq": [f"$v{i % 1000}", 1]}, "then": [{"set": {"y": i}}], "else": [{"set": {"y": 0}}]}
           for i in range(1250)] + [{"return": {"out": {"$template": ["{y}", {"y": "$y"}]}}}]),
}

RUN_TIME: dict[str, list[Any]] = {
    "doubling a list each pass": [{"set": {"xs": ["$inputs.text"]}}, {"loop": {"max": 10_000, "steps": [
        {"set": {"xs": {"$concat": ["$xs", "$xs"]}}}]}}, {"return": {"out": "x"}}],
    "doubling text each pass": [{"set": {"t": "$inputs.text"}}, {"loop": {"max": 10_000, "steps": [
        {"set": {"t": {"$template": ["{a}{a}", {"a": "$t"}]}}}]}}, {"return": {"out": "x"}}],
    "quadratic accumulation": [{"set": {"xs": []}}, {"loop": {"max": 10_000, "steps": [
        {"set": {"xs": {"$concat": ["$xs", {"$split": ["$inputs.text", ","]}]}}}]}}, {"return": {"out": "x"}}],
    "index out of range": [{"set": {"x": {"$index": [[], 5]}}}, {"return": {"out": "x"}}],
}


def main() -> None:
    sb.tools.register("hostile_echo", lambda text: text)
    print("refused by validation:")
    for name, data in STATIC.items():
        start = time.perf_counter()
        try:
            sb.load_program(data)
            outcome = "ACCEPTED (unexpected)"
        except ProgramValidationError as exc:
            first = next(i for i in exc.issues if i.severity == "error")
            outcome = f"{first.pointer[:40]}: {first.message[:60]}"
        print(f"  {name:32} {(time.perf_counter() - start) * 1000:8.1f} ms  {outcome}")
    print("valid but large (linear time):")
    for name, data in LARGE_VALID.items():
        start = time.perf_counter()
        sb.load_program(data)
        print(f"  {name:32} {(time.perf_counter() - start) * 1000:8.1f} ms  accepted")
    print("refused at run time (static checks skipped, as if the types were unknown):")
    for name, steps in RUN_TIME.items():
        prog = sb.Program.model_validate(program(steps))
        start = time.perf_counter()
        try:
            sb.run(prog, {"text": "ab,cd" * 10})
            outcome = "RAN (unexpected)"
        except StepbridgeError as exc:
            cause = getattr(exc, "cause", None)
            outcome = f"{type(exc).__name__}/{type(cause).__name__}: {str(cause or exc)[:70]}"
        print(f"  {name:32} {(time.perf_counter() - start) * 1000:8.1f} ms  {outcome}")


if __name__ == "__main__":
    main()
