"""How fast hostile program files are refused (the issue asks: each within a second).

Timing is measured here, never asserted in tests. Each case is built in memory and loaded once.

    python bench/bench_hostile.py
"""

from __future__ import annotations

import time

from stepbridge.errors import ProgramValidationError
from stepbridge.loader import parse_document

HEADER = "stepbridge: 1\nname: x\nsignature: 'q -> a'\n"
CASES: dict[str, tuple[str | bytes, str | None]] = {
    "YAML syntax error": (HEADER + "modules: {a: [1, 2}\n", None),
    "billion laughs (aliases)": ("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n" for i in range(9)), None),
    "10,000-deep YAML flow": ("a: " + "[" * 10_000 + "]" * 10_000 + "\n", None),
    "10,000-deep YAML block": ("".join(" " * i + "k:\n" for i in range(10_000)), None),
    "10,000-deep JSON": ('{"a": ' + "[" * 10_000 + "]" * 10_000 + "}", "p.json"),
    "50 MB string": ((HEADER + "description: '" + "x" * 50_000_000 + "'\n").encode(), None),
    "unknown YAML tag": (HEADER + "modules: !!python/object/apply:os.system [ls]\n", None),
    "500k small values": ("a: [" + ",".join("1" for _ in range(500_000)) + "]\n", None),
    "5,000-digit hex literal": (HEADER + "lm: {max_tokens: 0x" + "f" * 5000 + "}\n", None),
    "20,000-digit binary literal": (HEADER + "lm: {max_tokens: 0b" + "1" * 20_000 + "}\n", None),
    "sexagesimal literal": (HEADER + "lm: {max_tokens: 1" + ":59" * 3000 + "}\n", None),
    "5,000-digit JSON integer": ('{"' + "k" * 1100 + '": ' + "9" * 5000 + "}", "p.json"),
}


def unknown_names(modules: int) -> str:
    """Many modules and as many steps calling misspelt ones: every name wants a "did you mean"."""
    lines = [HEADER + "modules:"]
    lines += [f"  module_{i:012d}: {{type: predict, signature: 'q -> a'}}" for i in range(modules)]
    lines.append("steps:")
    lines += [f"  - {{call: modul_{i:012d}x, with: {{q: $inputs.q}}, as: r{i}}}" for i in range(modules)]
    return "\n".join(lines) + "\n  - return: {a: $r0.a}\n"


# whole validation (parse + checks): the "did you mean" search used to be quadratic
VALIDATED = {f"did you mean: {n} modules, {n} unknown names": unknown_names(n) for n in (500, 2500)}


def main() -> None:
    from stepbridge.loader import load_program

    for name, text in VALIDATED.items():
        start = time.perf_counter()
        try:
            load_program(text)
            outcome = "ACCEPTED (unexpected)"
        except ProgramValidationError as exc:
            outcome = f"{len(exc.issues)} issues ({len(text) // 1000} KB)"
        print(f"{name:28} {(time.perf_counter() - start) * 1000:8.1f} ms  {outcome}")
    for name, (text, filename) in CASES.items():
        start = time.perf_counter()
        try:
            parse_document(text, filename=filename)
            outcome = "ACCEPTED (unexpected)"
        except ProgramValidationError as exc:
            outcome = exc.issues[0].message[:70]
        print(f"{name:28} {(time.perf_counter() - start) * 1000:8.1f} ms  {outcome}")


if __name__ == "__main__":
    main()
