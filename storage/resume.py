"""Re-running interrupted executions (``stepbridge executions resume``).

Each interrupted execution is re-run through the core :class:`stepbridge.runner.Runner` with its
own execution id, so :meth:`Store.begin` takes it over as attempt + 1 (compare-and-set from
``interrupted``): a second resumer running at the same time gets ``in_progress`` instead, and the
execution ends in exactly one recorded terminal state. Inputs are the stored ones, which had
secrets scrubbed before they were written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stepbridge.adapter import RunOptions
from stepbridge.errors import StepbridgeError

from .models import Execution
from .store import Store

__all__ = ["ResumeOutcome", "resume"]


@dataclass
class ResumeOutcome:
    execution_id: str
    ok: bool
    status: str
    error: str | None = None


def resume(
    store: Store,
    adapter_factory: Callable[[str], Any] | None = None,
    *,
    program: str | None = None,
    mark: bool = True,
) -> list[ResumeOutcome]:
    """Mark dead owners' runs interrupted (``mark``), then re-run every interrupted execution.

    ``adapter_factory(backend_name)`` returns the adapter (or anything ``Runner`` accepts) to use for
    executions recorded on that backend; by default the backend name itself is looked up.
    """
    from stepbridge.runner import Runner

    if mark:
        store.mark_interrupted()
    todo: list[Execution] = store.resumable(program)
    outcomes: list[ResumeOutcome] = []

    async def go() -> None:
        runners: dict[str, Any] = {}
        try:
            for ex in todo:
                runner = runners.get(ex.backend)
                if runner is None:
                    backend = adapter_factory(ex.backend) if adapter_factory else ex.backend
                    runner = runners[ex.backend] = Runner(backend, store=store)
                try:
                    prog = store.load(ex.program_hash)
                    opts = RunOptions(**{**(ex.options or {}), "execution_id": ex.id,
                                         "idempotency_key": ex.idempotency_key})
                    await runner.run(prog, ex.inputs, opts)
                except StepbridgeError as exc:
                    now = store.get_execution(ex.id)
                    outcomes.append(ResumeOutcome(ex.id, False, now.status if now else "unknown", str(exc)))
                else:
                    now = store.get_execution(ex.id)
                    outcomes.append(ResumeOutcome(ex.id, True, now.status if now else "unknown"))
        finally:
            for runner in runners.values():
                await runner.aclose()

    asyncio.run(go())
    return outcomes
