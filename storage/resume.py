"""Continuing interrupted executions and batches (``stepbridge executions resume``).

Runs left ``running`` or ``pending`` (a batch's rows not started yet) by a dead process are first
marked ``interrupted``; each interrupted execution is then re-run through the core
:class:`stepbridge.runner.Runner` with its own execution id, so :meth:`Store.begin` takes it over
(compare-and-set from ``interrupted``: a second resumer running at the same time waits for the
first one's outcome instead of running it again), and it ends in exactly one recorded terminal
state. A batch's rows are continued in input order. Inputs and options are the stored ones (secrets
were scrubbed before they were written).

Nothing the resumer itself gets wrong is recorded against a run: the adapter is built, the program
loaded and validated, capabilities checked and the adapter prepared *before* any row is taken over;
if any of that fails, the rows stay ``interrupted`` and are reported as not resumable.

A stored row is untrusted: its ``backend`` column is only ever looked up as an exact registered
adapter name (:data:`stepbridge.registry.adapters`), never handed to ``load_adapter`` as an import
path. A row that names no registered adapter — for instance one recorded from ``--backend
pkg.mod:factory``, which stores the adapter's ``name`` — is reported as not resumable and the others
are still attempted; the operator can then pass the adapter explicitly (``stepbridge executions
resume --backend pkg.mod:factory``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stepbridge.adapter import RunOptions
from stepbridge.errors import StepbridgeError
from stepbridge.program import Program
from stepbridge.registry import registered_backend

from .models import Execution
from .store import Store

__all__ = ["ResumeOutcome", "registered_backend", "resume"]

log = logging.getLogger("stepbridge.storage")


@dataclass
class ResumeOutcome:
    execution_id: str
    ok: bool
    status: str
    error: str | None = None
    batch_id: str | None = None
    index: int | None = None


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, StepbridgeError) else f"{type(exc).__name__}: {exc}"


def resume(
    store: Store,
    adapter_factory: Callable[[str], Any] | None = None,
    *,
    program: str | None = None,
    mark: bool = True,
    backend: Any = None,
    concurrency: int = 8,
) -> list[ResumeOutcome]:
    """Mark dead owners' runs interrupted (``mark``), then re-run every interrupted execution,
    ``concurrency`` at a time; one outcome per execution, in the order they were submitted.

    The adapter for an execution is, in order: ``backend`` (operator input, for every execution:
    anything ``Runner`` accepts — a registered name, ``package.module:factory``, an adapter class, a
    factory or an adapter); ``adapter_factory(stored_backend_name)``; or the adapter registered under
    exactly the stored backend name. An execution whose adapter or program cannot be had is reported
    as not resumable (``ok=False``, still ``interrupted``) and the rest are still attempted.
    """
    from stepbridge.runner import Runner

    if mark:
        store.mark_interrupted()
    todo: list[Execution] = store.resumable(program)
    rows = store.batches_of([e.id for e in todo])
    outcomes: dict[str, ResumeOutcome] = {}

    def outcome(ex: Execution, ok: bool, error: str | None = None) -> None:
        now = store.get_execution(ex.id)
        batch_id, index = rows.get(ex.id, (None, None))
        outcomes[ex.id] = ResumeOutcome(ex.id, ok, now.status if now else "unknown", error, batch_id, index)

    def adapter_for(stored: str) -> Any:
        if backend is not None:
            return backend
        if adapter_factory is not None:
            return adapter_factory(stored)
        return registered_backend(stored)

    async def go() -> None:
        runners: dict[str, Any] = {}
        broken: dict[str, str] = {}  # runner key -> why there is no runner
        programs: dict[tuple[str, str], Program | str] = {}  # (runner key, hash) -> prepared program, or why not
        ready: list[tuple[Execution, Any, Program, RunOptions]] = []
        try:
            # Everything that can fail on the resumer's side happens here, before any row is taken over.
            for ex in todo:
                key = "" if backend is not None else ex.backend
                if key not in runners and key not in broken:
                    try:
                        runners[key] = Runner(adapter_for(ex.backend), store=store)
                    except Exception as exc:
                        broken[key] = _describe(exc)
                if key in broken:
                    outcome(ex, False, f"not resumable: {broken[key]}")
                    continue
                runner = runners[key]
                prepared = programs.get((key, ex.program_hash))
                if prepared is None:
                    try:
                        prepared = store.load(ex.program_hash)
                        await runner.prepare(prepared)
                    except Exception as exc:
                        prepared = _describe(exc)
                    programs[(key, ex.program_hash)] = prepared
                if isinstance(prepared, str):
                    outcome(ex, False, f"not resumable: {prepared}")
                    continue
                try:
                    opts = RunOptions(**{**(ex.options or {}), "execution_id": ex.id,
                                         "idempotency_key": ex.idempotency_key})
                except Exception as exc:
                    outcome(ex, False, f"not resumable: stored options are invalid: {_describe(exc)}")
                    continue
                ready.append((ex, runner, prepared, opts))

            limit = asyncio.Semaphore(max(1, concurrency))

            async def one(ex: Execution, runner: Any, prog: Program, opts: RunOptions) -> None:
                async with limit:
                    try:
                        await runner.run(prog, ex.inputs, opts)
                    except Exception as exc:  # the run's own outcome, recorded by the Runner
                        outcome(ex, False, _describe(exc))
                    else:
                        outcome(ex, True)

            await asyncio.gather(*(one(*item) for item in ready))
        finally:
            for runner in runners.values():
                try:
                    await runner.aclose()
                except Exception as exc:  # every row is recorded by now: report it, do not lose the outcomes
                    log.warning("closing adapter %r after resuming failed: %s", runner.backend, _describe(exc))

    asyncio.run(go())
    return [outcomes[e.id] for e in todo]
