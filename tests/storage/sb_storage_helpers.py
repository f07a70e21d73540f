"""Helpers shared by the storage tests (a plain module: conftest files are not importable)."""

from __future__ import annotations

import os
import uuid
from typing import Any

from sqlalchemy import create_engine, text
from stepbridge import Program
from stepbridge.adapter import RunOptions
from stepbridge.result import RunResult, StepTrace
from stepbridge.storage.db import normalise_url

PG_URL = os.environ.get("STEPBRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "sk-proj-AbCdEf0123456789xyzXYZ"

_pg_reason: list[str | None] = []


def postgres_unavailable() -> str | None:
    """None if the test PostgreSQL answers, else why not (checked once per session)."""
    if not _pg_reason:
        try:
            engine = create_engine(normalise_url(PG_URL), connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            _pg_reason.append(None)
        except Exception as exc:
            _pg_reason.append(f"PostgreSQL not reachable at {PG_URL} (set STEPBRIDGE_TEST_POSTGRES_URL): "
                              f"{str(exc).splitlines()[0]}")
    return _pg_reason[0]


def with_schema(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def fresh_pg_schema() -> tuple[str, Any]:
    """A new empty schema; returns (url using it, dropper)."""
    schema = f"sbtest_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    return with_schema(PG_URL, schema), drop


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
