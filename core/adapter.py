"""The adapter protocol: what every backend implements, and the options a run takes.

Like an httpx transport, an adapter does one thing (execute a validated program) and the core
does the rest (validation, input checking, recording, sync wrappers). Anything with these
attributes is an adapter; subclassing is not required.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from .program import LMConfig, Program
from .result import RunResult, fast_construct

__all__ = ["CAPABILITIES", "Adapter", "RunOptions", "new_execution_id"]

#: Capability names an adapter may declare.
CAPABILITIES = frozenset(
    {
        "async",
        "batch",
        "map",
        "retrieve",
        "tools",
        "dspy_modules",
        "lm_trace",
        "cancel",
        "timeout",
        "out_of_process",
        "rehydrate",
        "json_adapter",
        # format 2 (docs/format-2.md): what a program uses, an adapter must declare
        "control_flow",
        "parallel",
        "agents",
        "ensembles",
        "typed_objects",
        "xml_adapter",
    }
)


def new_execution_id() -> str:
    return uuid.uuid4().hex


class RunOptions(BaseModel):
    """Per-run options. ``lm`` overrides the program's and modules' LM settings."""

    model_config = ConfigDict(extra="forbid")

    execution_id: str = Field(default_factory=new_execution_id)
    timeout: float | None = Field(default=None, gt=0, description="seconds for the whole run")
    lm: LMConfig | None = None
    attempt: int = 1
    idempotency_key: str | None = None
    cache: bool | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    # The two fast paths below name every field: tests/test_adapter.py fails when a field is added
    # without them (they are the only copies of this list).
    @classmethod
    def plain(cls, execution_id: str, *, timeout: float | None, attempt: int) -> RunOptions:
        """Options with nothing set besides id, budget and attempt, built without a validation pass
        (the pool worker builds one per request from values its wire format already checked)."""
        return fast_construct(cls, {"execution_id": execution_id, "timeout": timeout, "lm": None, "attempt": attempt,
                                    "idempotency_key": None, "cache": None, "metadata": {}})

    def extras(self) -> dict[str, Any]:
        """The options set besides execution id, attempt and timeout, as JSON (non-defaults only): what
        travels beside those three in a pool request."""
        d = self.__dict__
        if d["lm"] is None and d["idempotency_key"] is None and d["cache"] is None and not d["metadata"]:
            return {}
        return self.model_dump(mode="json", exclude={"execution_id", "attempt", "timeout"}, exclude_defaults=True)


@runtime_checkable
class Adapter(Protocol):
    """A backend. ``prepare`` is idempotent; ``run`` returns a :class:`RunResult` or raises a typed error
    carrying the partial trace; ``aclose`` releases connections and processes."""

    name: str
    capabilities: frozenset[str]

    async def prepare(self, program: Program) -> None: ...

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult: ...

    async def aclose(self) -> None: ...
