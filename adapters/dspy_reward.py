"""A DSPy ``reward_fn(args, pred)`` as a stepbridge metric, so a ``best_of_n``/``refine`` module can name it.

``dspy.BestOfN(module, N, reward_fn=f, threshold)`` and ``dspy.Refine`` call ``f(kwargs, prediction)``
with the call's keyword arguments and a ``dspy.Prediction``; a format-2 ``reward: {metric: NAME}`` calls
the metric registered as ``NAME`` with two plain dicts (the module's inputs and its outputs). A program
file only ever *names* a metric: the operator registers the function, in Python::

    from stepbridge.adapters.dspy_reward import dspy_reward
    from stepbridge.registry import metrics

    metrics.register("one_word_answer", dspy_reward(one_word_answer))

or as an entry point of group ``stepbridge.metrics`` pointing at ``dspy_reward(one_word_answer)``. The
importer finds a module's reward function among the registered metrics (by identity, never by a name
read from anywhere) and writes that name into the program.

:func:`dspy_reward` calls ``f`` exactly as DSPy does: a fresh dict of the inputs and a ``dspy.Prediction``
of the outputs in the module's order; whatever ``f`` returns or raises reaches the ensemble as it is (a
raise, or a value that does not compare with a number, is a failed attempt there as in DSPy).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

__all__ = ["dspy_reward", "reward_function", "reward_functions"]

_MARK = "__stepbridge_dspy_reward__"

#: The reward function running now, so the importer can tell an LM call made by a reward itself: such a
#: call is no program step (on the native backend a metric has no LM at all).
RUNNING: ContextVar[Any] = ContextVar("stepbridge_dspy_reward_running", default=None)


def dspy_reward(fn: Callable[[dict[str, Any], Any], Any]) -> Callable[[Mapping[str, Any], Mapping[str, Any]], Any]:
    """The metric ``(example, prediction)`` that calls ``fn(dict(example), dspy.Prediction(**prediction))``.

    Its source (Refine shows the reward's code to the LM) is ``fn``'s: ``inspect.getsource`` unwraps it."""
    if not callable(fn):
        raise TypeError(f"a DSPy reward must be callable as reward_fn(args, pred), got {type(fn).__name__}")
    if getattr(fn, _MARK, None) is not None:  # already adapted: adapting twice would wrap a Prediction again
        return fn  # type: ignore[return-value]

    from .dspy import dspy

    def metric(example: Mapping[str, Any], prediction: Mapping[str, Any]) -> Any:
        token = RUNNING.set(fn)
        try:
            return fn(dict(example), dspy.Prediction(**prediction))
        finally:
            RUNNING.reset(token)

    functools.update_wrapper(metric, fn, updated=())  # __wrapped__ = fn: inspect.getsource finds fn's source
    setattr(metric, _MARK, fn)
    return metric


def reward_function(metric: Any) -> Any:
    """The DSPy reward function a registered metric adapts (``None`` when it is not a :func:`dspy_reward`)."""
    return getattr(metric, _MARK, None)


def reward_functions(module: Any) -> dict[str, Any]:
    """The Python reward functions of every ``dspy.BestOfN`` / ``dspy.Refine`` in ``module`` (itself
    included), by their ``__name__`` (a lambda by where it is used: ``self_reward``, ``best_reward``):
    what to register before importing it."""
    from .dspy import dspy
    from .dspy_convert import _identifier, _reward_fn

    found: dict[str, Any] = {}
    for path, sub in module.named_sub_modules():
        if type(sub) in (dspy.BestOfN, dspy.Refine):
            fn = _reward_fn(sub)
            if fn in found.values():
                continue
            name = getattr(fn, "__name__", type(fn).__name__)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):  # a lambda: named after where it is used
                name = _identifier(f"{path}_reward")
            found.setdefault(name, fn)
    return found
