"""Helpers shared by the storage tests (a plain module: conftest files are not importable)."""

from __future__ import annotations

from typing import Any

from stepbridge import Program
from stepbridge.adapter import RunOptions
from stepbridge.result import RunResult, StepTrace

SECRET = "sk-proj-AbCdEf0123456789xyzXYZ"


def make_program(name: str = "qa", instructions: str | None = None) -> Program:
    answer: dict[str, Any] = {"type": "predict", "signature": "question -> answer"}
    if instructions is not None:
        answer["instructions"] = instructions
    return Program.model_validate(
        {
            "stepbridge": 1,
            "name": name,
            "signature": "question -> answer",
            "modules": {"answer": answer},
            "steps": [
                {"call": "answer", "with": {"question": "$inputs.question"}, "as": "r"},
                {"return": {"answer": "$r.answer"}},
            ],
        }
    )


class EchoAdapter:
    """A tiny in-process adapter: answers with the question. Counts its runs."""

    name = "echo"
    capabilities = frozenset({"async"})

    def __init__(self) -> None:
        self.runs: list[tuple[str, int]] = []

    async def prepare(self, program: Program) -> None:
        return None

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        self.runs.append((options.execution_id, options.attempt))
        return RunResult(outputs={"answer": inputs["question"]}, trace=[StepTrace(step=0, kind="return")],
                         backend=self.name, program_hash=program.content_hash, execution_id=options.execution_id,
                         attempts=options.attempt)

    async def aclose(self) -> None:
        return None
