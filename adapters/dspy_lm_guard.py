"""Every LM call a step makes goes to the step's LM, whatever LM the module's own code picks.

A registered DSPy module (an opaque ``dspy`` step) is arbitrary code: its ``forward`` may switch LMs
(``with dspy.context(lm=dspy.LM("openai/gpt-4o", api_base=...))``, ``predictor.set_lm(...)``, a
per-call ``lm=``). Its endpoint, model and key must never be used: the operator's profile decides, and
every call must reach the trace. While a step runs, the adapter puts its LM in DSPy's settings
(``dspy.context(stepbridge_step_lms=(lm, *judges))``, which DSPy carries into its worker threads); :func:`install`
wraps ``BaseLM.__call__``/``acall`` once per process so that a call on any other LM (one with another
model or endpoint; copies of the step's LM, as ensembles make, keep theirs) runs on the step's LM
instead, with the call's own arguments, through its callbacks (so the trace records it). A call's
arguments may not choose an endpoint or a credential either (``dspy.Predict(sig, api_base=...)`` keeps
it in its config and passes it on every call, as does ``predictor(..., config={"api_base": ...})``, and
DSPy lets a call's arguments override its LM's): those are dropped (:data:`ENDPOINT_OPTION`).

Below ``__call__``, every request DSPy sends is prepared by ``dspy.clients.execution.prepare`` (also for a
module calling ``lm.forward``/``aforward`` directly, which skips ``__call__`` and its callbacks): while a step
runs, preparing a request for any LM other than the step's is refused (:class:`ForeignLMCall`), so no
code path of the module reaches its own endpoint.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import dspy
from dspy.clients.base_lm import BaseLM

__all__ = ["SETTING", "ForeignLMCall", "install", "route"]

#: the ``dspy.context`` key holding the step's LMs (its own first, then those of its LM judges)
SETTING = "stepbridge_step_lms"

#: call options (litellm's names) that choose where a request goes, with which credentials, or which
#: provider serves it; ``max_tokens`` and the like do not match
ENDPOINT_OPTION = re.compile(r"^(model|custom_llm_provider)$|api_|_api|base|url|key|secret|token$|header|"
                             r"provider|credential|organization|project|region|deployment|client|aws_|azure|"
                             r"vertex|watsonx|proxy|host|endpoint")


def _options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A call's options without those choosing an endpoint or a credential, while a step runs."""
    if not dspy.settings.get(SETTING) or not any(ENDPOINT_OPTION.search(k) for k in kwargs):
        return kwargs
    return {k: v for k, v in kwargs.items() if not ENDPOINT_OPTION.search(k)}


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


class ForeignLMCall(PermissionError):
    """A module sent a request on an LM of its own, below ``__call__`` (``lm.forward(...)``), during a step."""


def install() -> None:
    """Wrap ``BaseLM.__call__`` and ``BaseLM.acall``, and DSPy's request preparation (idempotent)."""
    if getattr(BaseLM, "_stepbridge_guarded", False):
        return
    from dspy.clients import execution

    call, acall, prepare = BaseLM.__call__, BaseLM.acall, execution.prepare

    @functools.wraps(prepare)
    def guarded_prepare(lm: Any, prompt: Any, messages: Any, kwargs: Any, **options: Any) -> Any:
        if dspy.settings.get(SETTING):
            if route(lm) is not lm:
                raise ForeignLMCall(f"a module sent a request on its own LM ({getattr(lm, 'model', lm)!s}) during a "
                                    "stepbridge step; call its predictors (they use the step's LM) instead of "
                                    "the LM's forward()")
            kwargs = _options(dict(kwargs or {}))
        return prepare(lm, prompt, messages, kwargs, **options)

    execution.prepare = guarded_prepare

    @functools.wraps(call)
    def guarded_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return call(route(self), *args, **_options(kwargs))

    @functools.wraps(acall)
    async def guarded_acall(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await acall(route(self), *args, **_options(kwargs))

    BaseLM.__call__ = guarded_call
    BaseLM.acall = guarded_acall
    BaseLM._stepbridge_guarded = True
