"""Re-running interrupted executions (``stepbridge executions resume``).

Each interrupted execution is re-run through the core :class:`stepbridge.runner.Runner` with its
own execution id, so :meth:`Store.begin` takes it over as attempt + 1 (compare-and-set from
``interrupted``): a second resumer running at the same time gets ``in_progress`` instead, and the
execution ends in exactly one recorded terminal state. Inputs are the stored ones, which had
secrets scrubbed before they were written.

A stored row is untrusted: its ``backend`` column is only ever looked up as an exact registered
adapter name (:data:`stepbridge.registry.adapters`), never handed to ``load_adapter`` (which
imports ``package.module:factory`` paths). A row that names no registered adapter — for instance
one recorded from ``--backend pkg.mod:factory``, which stores the adapter's ``name`` — is reported
as not resumable and the others are still attempted; the operator can then pass the adapter
explicitly (``stepbridge executions resume --backend pkg.mod:factory``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stepbridge.adapter import RunOptions
from stepbridge.errors import StepbridgeError, UnsupportedCapabilityError

from .models import Execution
from .store import Store

__all__ = ["ResumeOutcome", "registered_backend", "resume"]


@dataclass
class ResumeOutcome:
    execution_id: str
    ok: bool
    status: str
    error: str | None = None


def registered_backend(name: str) -> Callable[..., Any]:
    """The adapter factory registered under exactly ``name`` (a stored backend column).

    Never an import path: anything with a ``:`` is refused before the registry is asked, and the
    registry only knows explicit registrations and installed ``stepbridge.adapters`` entry points.
    """
    from stepbridge.registry import adapters

    if not isinstance(name, str) or not name or ":" in name or name not in adapters:
        known = ", ".join(adapters.names()) or "none"
        raise UnsupportedCapabilityError(
            f"recorded on backend {name!r}, which is not a registered adapter name (registered: {known}); "
            "resume it with an explicit adapter (--backend)", adapter=str(name))
    return adapters.get(name)


def resume(
    store: Store,
    adapter_factory: Callable[[str], Any] | None = None,
    *,
    program: str | None = None,
    mark: bool = True,
    backend: Any = None,
) -> list[ResumeOutcome]:
    """Mark dead owners' runs interrupted (``mark``), then re-run every interrupted execution.

    The adapter for an execution is, in order: ``backend`` (operator input, for every execution:
    anything ``Runner`` accepts — a registered name, ``package.module:factory``, a factory or an
    adapter); ``adapter_factory(stored_backend_name)``; or the adapter registered under exactly the
    stored backend name. An execution whose adapter cannot be had is reported as not resumable
    (``ok=False``, still ``interrupted``) and the rest are still attempted.
    """
    from stepbridge.runner import Runner

    if mark:
        store.mark_interrupted()
    todo: list[Execution] = store.resumable(program)
    outcomes: list[ResumeOutcome] = []

    def adapter_for(stored: str) -> Any:
        if backend is not None:
            return backend
        if adapter_factory is not None:
            return adapter_factory(stored)
        return registered_backend(stored)

    def describe(exc: BaseException) -> str:
        return str(exc) if isinstance(exc, StepbridgeError) else f"{type(exc).__name__}: {exc}"

    def status_of(execution_id: str) -> str:
        now = store.get_execution(execution_id)
        return now.status if now else "unknown"

    async def go() -> None:
        # One runner (or the reason there is none) per key: the explicit backend, or the stored name.
        runners: dict[str, Any] = {}
        failures: dict[str, str] = {}
        try:
            for ex in todo:
                key = "" if backend is not None else ex.backend
                runner = runners.get(key)
                if runner is None and key not in failures:
                    try:
                        runner = runners[key] = Runner(adapter_for(ex.backend), store=store)
                    except Exception as exc:
                        failures[key] = describe(exc)
                if runner is None:
                    outcomes.append(ResumeOutcome(ex.id, False, status_of(ex.id),
                                                  f"not resumable: {failures[key]}"))
                    continue
                try:
                    prog = store.load(ex.program_hash)
                    opts = RunOptions(**{**(ex.options or {}), "execution_id": ex.id,
                                         "idempotency_key": ex.idempotency_key})
                    await runner.run(prog, ex.inputs, opts)
                except Exception as exc:
                    outcomes.append(ResumeOutcome(ex.id, False, status_of(ex.id), describe(exc)))
                else:
                    outcomes.append(ResumeOutcome(ex.id, True, status_of(ex.id)))
        finally:
            for runner in runners.values():
                await runner.aclose()

    asyncio.run(go())
    return outcomes
