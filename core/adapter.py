"""The adapter protocol: what every backend implements, and the options a run takes.

Like an httpx transport, an adapter does one thing (execute a validated program) and the core
does the rest (validation, input checking, recording, sync wrappers). Anything with these
attributes is an adapter; subclassing is not required.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from .program import LMConfig, Program
from .result import RunResult, constructor

__all__ = ["CAPABILITIES", "Adapter", "RunOptions", "new_execution_id"]

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
"""Capability names an adapter may declare. The core refuses, before anything runs, a program needing one its
adapter lacks; the conformance suite checks each declared one (and that undeclared ones are refused)."""


class _Ids:
    """Execution ids made 256 at a time from one ``os.urandom`` read (a system call per run costs about
    2.4 us on a VM) and popped one per run (``list.pop`` is atomic: no lock). Emptied in a forked
    child, so parent and child never share ids."""

    BATCH = 256

    def __init__(self) -> None:
        self.ready: list[str] = []

    def reset(self) -> None:
        self.ready = []

    def take(self) -> str:
        try:
            return self.ready.pop()
        except IndexError:
            raw = bytearray(os.urandom(16 * self.BATCH))
            raw[6::16] = raw[6::16].translate(_VERSION_4)
            raw[8::16] = raw[8::16].translate(_VARIANT)
            text = raw.hex()
            ready = [text[i : i + 32] for i in range(0, len(text), 32)]
            own = ready.pop()
            self.ready = ready
            return own


_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))  # uuid version 4
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))  # RFC 4122 variant
_ids = _Ids()
os.register_at_fork(after_in_child=_ids.reset)


def new_execution_id() -> str:
    """``uuid.uuid4().hex``: 122 random bits from ``os.urandom``, built without a UUID object (one per run)."""
    return _ids.take()


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

    # The fast paths below name every field: tests/test_runner.py fails when a field is added without
    # them (they are the only copies of this list).
    @classmethod
    def default(cls) -> RunOptions:
        """``RunOptions()`` without validating its defaults (one per run on the hot path; pydantic's
        ``model_construct`` costs ten times a validated construction)."""
        return cls.plain(new_execution_id(), timeout=None, attempt=1)

    @classmethod
    def plain(cls, execution_id: str, *, timeout: float | None, attempt: int) -> RunOptions:
        """Options with nothing set besides id, budget and attempt, built without a validation pass
        (the pool worker builds one per request from values its wire format already checked)."""
        return _plain_options({"execution_id": execution_id, "timeout": timeout, "lm": None, "attempt": attempt,
                               "idempotency_key": None, "cache": None, "metadata": {}})

    def extras(self) -> dict[str, Any]:
        """The options set besides execution id, attempt and timeout, as JSON (non-defaults only): what
        travels beside those three in a pool request."""
        d = self.__dict__
        if d["lm"] is None and d["idempotency_key"] is None and d["cache"] is None and not d["metadata"]:
            return {}
        return self.model_dump(mode="json", exclude={"execution_id", "attempt", "timeout"}, exclude_defaults=True)


_plain_options = constructor(RunOptions)  # every field given, unvalidated (one per run)


@runtime_checkable
class Adapter(Protocol):
    """A backend. ``prepare`` is idempotent; ``run`` returns a :class:`RunResult` or raises a typed error
    carrying the partial trace; ``aclose`` releases connections and processes."""

    name: str
    capabilities: frozenset[str]

    async def prepare(self, program: Program) -> None:
        """Get ready to run ``program`` (compile, load tools, start workers); idempotent, called before runs."""

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        """Run once; on failure raise a typed :class:`~stepbridge.errors.StepbridgeError` with the partial trace."""

    async def aclose(self) -> None:
        """Release connections, processes and caches; the adapter is not used after."""
