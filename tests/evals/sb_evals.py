"""Helpers for the evaluation tests: a small QA program and datasets whose labels the reference LM gets
right on some rows and wrong on others (it answers with the most related input sentence)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PROGRAM = """\
stepbridge: 1
name: qa
signature: "question -> answer"
modules:
  answer: {type: predict, signature: "question -> answer"}
steps:
  - call: answer
    with: {question: $inputs.question}
    as: r
  - return: {answer: $r.answer}
"""


def qa_rows(n: int) -> list[dict[str, Any]]:
    """Row i is right (the reference LM echoes the question) unless i is a multiple of 3."""
    return [{"question": f"question-{i:03d}", "answer": f"question-{i:03d}" if i % 3 else "wrong"}
            for i in range(n)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stepbridge_cli() -> list[str]:
    script = Path(sys.executable).with_name("stepbridge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "stepbridge.cli"]
