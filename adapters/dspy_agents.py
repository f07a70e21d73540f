"""Format 2's agent and ensemble modules as the real DSPy classes, for the DSPy adapter.

``react`` becomes ``dspy.ReAct`` (tools wrapped from the tool registry, never import paths),
``multi_chain_comparison`` ``dspy.MultiChainComparison``, ``best_of_n`` / ``refine`` ``dspy.BestOfN`` /
``dspy.Refine`` around the sub-module of the module they wrap (so DSPy's optimizers see one set of
predictors), with the reward from the metrics registry or a judge module of the program.

Where stepbridge differs from plain DSPy, on purpose and identically on the native backend:

* a tool error becomes ``Execution error in <tool>: `` + the exception, without DSPy's stack frames
  (they name the files of whichever implementation ran the tool: :func:`stepbridge.react.tool_error_text`);
* ``fail_count`` starts afresh on every call (DSPy decrements it on the module object for good);
* ``Refine`` shows the LM the reward's source as :func:`stepbridge.ensembles.reward_source` gives it;
* a failed attempt is logged (logger ``stepbridge.dspy``) where DSPy prints it to stdout.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any

import dspy
from stepbridge.ensembles import MCC_DEFAULT_TEMPERATURE, reward_source
from stepbridge.formats import to_dspy_signature
from stepbridge.interface import module_interface
from stepbridge.program import (
    BestOfNModule,
    MultiChainComparisonModule,
    Program,
    ReactModule,
    RefineModule,
)
from stepbridge.react import FINISH, json_data, tool_error_text

__all__ = ["JUDGE_LMS", "RegisteredTool", "StepbridgeBestOfN", "StepbridgeRefine", "build_agent_module",
           "check_step_inputs"]

#: Set by the DSPy adapter around an ensemble call: judge module name -> (LM, format adapter) to judge with.
JUDGE_LMS: contextvars.ContextVar[dict[str, tuple[Any, Any]] | None] = contextvars.ContextVar(
    "stepbridge_judge_lms", default=None)


class RegisteredTool(dspy.Tool):
    """A ``dspy.Tool`` over a registered callable whose failures become the observation text stepbridge
    gives on every backend (DSPy's text without the stack frames)."""

    def __call__(self, **kwargs: Any) -> Any:
        try:
            return super().__call__(**kwargs)
        except Exception as exc:
            return tool_error_text(str(self.name), exc)

    async def acall(self, **kwargs: Any) -> Any:
        try:
            return await super().acall(**kwargs)
        except Exception as exc:
            return tool_error_text(str(self.name), exc)


def _react(module: ReactModule) -> dspy.ReAct:
    from stepbridge.registry import tools

    signature = to_dspy_signature(module.effective_signature)
    wrapped = [RegisteredTool(tools.get(name).func, name=name) for name in module.tools]
    react = dspy.ReAct(signature, tools=wrapped, max_iters=module.max_iters)
    finish = react.tools[FINISH]
    react.tools[FINISH] = RegisteredTool(finish.func, name=FINISH, desc=finish.desc, args={})
    return react


def _log_print(*args: Any, sep: str | None = " ", end: str | None = "\n", **_: Any) -> None:
    logging.getLogger("stepbridge.dspy").warning("%s", (sep if sep is not None else " ").join(map(str, args)))


# DSPy's BestOfN and Refine report a failed attempt with print(); under stepbridge it goes to the log (the
# native executor logs the same line), so a command's stdout carries only its output (--json).
for _module in (sys.modules[dspy.BestOfN.__module__], sys.modules[dspy.Refine.__module__]):
    _module.print = _log_print  # type: ignore[attr-defined]


class _FreshCount:
    """``fail_count`` counted per call: each call runs on a shallow copy of the module."""

    _sb_fail_count: int

    def forward(self, **kwargs: Any) -> Any:
        clone = copy.copy(self)
        clone.fail_count = self._sb_fail_count  # type: ignore[attr-defined]
        return super(_FreshCount, clone).forward(**kwargs)  # type: ignore[misc]


class StepbridgeBestOfN(_FreshCount, dspy.BestOfN):
    """``dspy.BestOfN`` with ``fail_count`` per call."""


class StepbridgeRefine(_FreshCount, dspy.Refine):
    """``dspy.Refine`` with ``fail_count`` per call and stepbridge's reward source."""


def _reward(program: Program, module: BestOfNModule | RefineModule, owner: Callable[[], Any]) -> Callable[..., Any]:
    """The ``reward_fn(inputs, prediction)``: a registered metric over plain dicts, or a judge module."""
    outputs = list((module_interface(module, program.modules) or _missing(module.module)).outputs)
    spec = module.reward
    if spec.metric is not None:
        from stepbridge.registry import metrics

        metric = metrics.get(spec.metric)

        def metric_reward(args: dict[str, Any], prediction: Any) -> Any:
            example = dict(args)
            predicted = {k: json_data(prediction[k]) for k in outputs}
            if inspect.iscoroutinefunction(metric):
                return asyncio.run(metric(example, predicted))
            return metric(example, predicted)

        return metric_reward
    judge_name, field = spec.module, spec.field
    assert judge_name is not None and field is not None
    judge_inputs = list((module_interface(program.modules[judge_name], program.modules)
                         or _missing(judge_name)).inputs)

    def judge_reward(args: dict[str, Any], prediction: Any) -> Any:
        available = {**args, **{k: prediction[k] for k in outputs}}
        judge = getattr(owner(), judge_name)
        call_args = {k: available[k] for k in judge_inputs if k in available}
        lms = JUDGE_LMS.get()
        if lms is not None and judge_name in lms:
            lm, adapter = lms[judge_name]
            with dspy.context(lm=lm, adapter=adapter):
                return judge(**call_args)[field]
        return judge(**call_args)[field]

    return judge_reward


def check_step_inputs(program: Program, name: str, args: dict[str, Any]) -> None:
    """Completions a multi_chain_comparison cannot use (also inside an ensemble) get the same readable error
    as on the native backend, before any LM call."""
    from stepbridge.ensembles import check_completions

    module = program.modules[name]
    if isinstance(module, BestOfNModule | RefineModule):
        module = program.modules[module.module]
    if isinstance(module, MultiChainComparisonModule):
        check_completions(args.get("completions"), list(module.effective_signature.outputs)[-1], module.m)


def _missing(name: str) -> Any:
    raise TypeError(f"module {name!r} has no known interface")


def build_agent_module(program: Program, name: str, module: Any, sub_module: Callable[[str], Any],
                       owner: Callable[[], Any]) -> Any:
    """The DSPy module for a format-2 module (``sub_module(name)``: the DSPy module of another program
    module; ``owner()``: the program's ``dspy.Module``, for judges)."""
    if isinstance(module, ReactModule):
        return _react(module)
    if isinstance(module, MultiChainComparisonModule):
        own = module.lm.temperature if module.lm is not None else None
        return dspy.MultiChainComparison(to_dspy_signature(module.effective_signature), M=module.m,
                                         temperature=own if own is not None else MCC_DEFAULT_TEMPERATURE)
    if isinstance(module, BestOfNModule | RefineModule):
        cls = StepbridgeBestOfN if isinstance(module, BestOfNModule) else StepbridgeRefine
        ensemble = cls(module=sub_module(module.module), N=module.n, reward_fn=_reward(program, module, owner),
                       threshold=module.threshold, fail_count=module.fail_count)
        ensemble._sb_fail_count = module.fail_count or module.n
        if isinstance(ensemble, StepbridgeRefine):
            ensemble.reward_fn_code = reward_source(module.reward, program)
        return ensemble
    raise TypeError(f"module {name!r}: the DSPy adapter has no module for type {module.type!r}")
