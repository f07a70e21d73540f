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
}


def main() -> None:
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
