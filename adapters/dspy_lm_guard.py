"""Every LM call a step makes goes to the step's LM, whatever LM the module's own code picks.

A registered DSPy module (an opaque ``dspy`` step) is arbitrary code: its ``forward`` may switch LMs
(``with dspy.context(lm=dspy.LM("openai/gpt-4o", api_base=...))``, ``predictor.set_lm(...)``, a
per-call ``lm=``). Its endpoint, model and key must never be used: the operator's profile decides, and
every call must reach the trace. While a step runs, the adapter puts its LM in DSPy's settings
(``dspy.context(stepbridge_step_lms=(lm, *judges))``, which DSPy carries into its worker threads); :func:`install`
wraps ``BaseLM.__call__``/``acall`` once per process so that a call on any other LM (one with another
model or endpoint; copies of the step's LM, as ensembles make, keep theirs) runs on the step's LM
instead, with the call's own arguments, through its callbacks (so the trace records it).
"""

from __future__ import annotations

import functools
from typing import Any

import dspy
from dspy.clients.base_lm import BaseLM

__all__ = ["SETTING", "install", "route"]

#: the ``dspy.context`` key holding the step's LMs (its own first, then those of its LM judges)
SETTING = "stepbridge_step_lms"


def _endpoint(lm: Any) -> tuple[Any, ...]:
    kwargs = getattr(lm, "kwargs", {}) or {}
    return (type(lm), getattr(lm, "model", None), kwargs.get("api_base"), kwargs.get("base_url"),
            kwargs.get("api_key"))


def route(lm: Any) -> Any:
    """The LM a call on ``lm`` must use: the running step's LM unless ``lm`` is one of the step's LMs
    or a copy of one."""
    allowed = dspy.settings.get(SETTING)
    if not allowed:
        return lm
    endpoint = _endpoint(lm)
    if any(lm is ok or endpoint == _endpoint(ok) for ok in allowed):
        return lm
    return allowed[0]


def install() -> None:
    """Wrap ``BaseLM.__call__`` and ``BaseLM.acall`` (idempotent)."""
    if getattr(BaseLM, "_stepbridge_guarded", False):
        return
    call, acall = BaseLM.__call__, BaseLM.acall

    @functools.wraps(call)
    def guarded_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return call(route(self), *args, **kwargs)

    @functools.wraps(acall)
    async def guarded_acall(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await acall(route(self), *args, **kwargs)

    BaseLM.__call__ = guarded_call
    BaseLM.acall = guarded_acall
    BaseLM._stepbridge_guarded = True
