"""Helpers for the DSPy tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def logged_messages(server: Any, since: int, until: int | None = None) -> list[str]:
    """Messages logged after ``since`` as JSON in wire key order (sorted: map elements run concurrently)."""
    assert server.log is not None
    return sorted(json.dumps(e["body"]["messages"], ensure_ascii=False)
                  for e in server.log.entries(since) if until is None or e["seq"] <= until)


def last_seq(server: Any) -> int:
    assert server.log is not None
    entries = server.log.entries()
    return entries[-1]["seq"] if entries else 0


def run(loop: Any, adapter: Any, program: Any, inputs: dict[str, Any], options: Any = None) -> Any:
    """Prepare and run on the test's event loop."""
    from stepbridge import RunOptions

    async def go() -> Any:
        await adapter.prepare(program)
        return await adapter.run(program, inputs, options or RunOptions())

    return loop.run_until_complete(go())
