"""Helpers for the evaluation tests: a small QA program and datasets whose labels the reference LM gets
right on some rows and wrong on others (it answers with the most related input sentence)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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

COT_PROGRAM = PROGRAM.replace("name: qa", "name: cot").replace("type: predict", "type: chain_of_thought")


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


LATENCY_S = 0.1  # the reference LM's latency in the kill tests: long enough to kill mid-run


@dataclass
class LM:
    """A ``stepbridge lm serve`` process with a request log; ``since`` marks where the current test began."""

    url: str
    log: Path
    since: int = 0

    def bodies(self) -> list[dict[str, Any]]:
        """The chat requests received during the current test, in order."""
        with self.log.open("rb") as fh:
            fh.seek(self.since)
            lines = fh.read().decode().splitlines()
        found = []
        for line in lines:
            entry = json.loads(line)
            body = entry.get("body", entry)
            if isinstance(body, dict) and "messages" in body:
                found.append(body)
        return found

    def sent(self, pattern: str = r"question-\d{3}") -> Counter[str]:
        """How many requests asked about each question (its last message, not demos in earlier ones)."""
        counts: Counter[str] = Counter()
        for body in self.bodies():
            counts.update(set(re.findall(pattern, str(body["messages"][-1].get("content", "")))))
        return counts


@contextmanager
def serve_lm(log: Path) -> Iterator[LM]:
    log.touch()
    proc = subprocess.Popen([*stepbridge_cli(), "lm", "serve", "--port", "0", "--latency-ms",
                             str(LATENCY_S * 1000), "--log", str(log)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        m = re.search(r"(http://\S+/v1)\s*$", proc.stdout.readline())
        assert m, "the reference LM did not start"
        yield LM(m.group(1), log)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def start_and_kill(env: dict[str, str], args: list[str], marker: str,
                   kill_when: Callable[[str], bool]) -> str:
    """Start the CLI; once it prints ``marker`` (a regex whose group 1 is the id), wait until ``kill_when(id)``
    and SIGKILL it. Returns the id."""
    proc = subprocess.Popen([*stepbridge_cli(), *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    recorded = threading.Event()
    found: list[str] = []
    lines: list[str] = []

    def drain() -> None:  # keep reading: a full pipe would stall the child
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            m = re.match(marker, line)
            if m and not found:
                found.append(m.group(1))
                recorded.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert recorded.wait(180), f"it never said it was recorded: {''.join(lines)}"
        deadline = time.monotonic() + 120
        while not kill_when(found[0]) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.kill()
    finally:
        proc.kill()
        proc.wait()
        reader.join(10)
    assert proc.returncode == -9, f"it ended before it was killed: {''.join(lines)}"
    return found[0]
