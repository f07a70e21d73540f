"""Native runners for format 2's agent and ensemble modules: ``react``, ``best_of_n``, ``refine`` and
``multi_chain_comparison``, with DSPy 3.4.1's prompts and control flow (see :mod:`stepbridge.react` and
:mod:`stepbridge.ensembles` for the pieces and the decisions; ``tests/test_react.py`` and
``tests/test_ensembles.py`` run the same programs on the real DSPy and compare every message).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

from stepbridge.ensembles import (
    MCC_DEFAULT_TEMPERATURE,
    check_completions,
    describe_modules,
    dspy_source,
    feedback_inputs,
    feedback_signature,
    mcc_attempts,
    mcc_signature,
    no_prediction,
    reward_source,
)
from stepbridge.errors import ContextWindowExceededError
from stepbridge.interface import module_interface
from stepbridge.program import (
    BestOfNModule,
    MultiChainComparisonModule,
    Program,
    ReactModule,
    RefineModule,
)
from stepbridge.react import (
    FINISH,
    extract_signature,
    finish_tool,
    format_trajectory,
    json_data,
    react_signature,
    tool_error_text,
    tool_spec,
    truncate_trajectory,
)

from .native import Invocation, NativeAdapter, Predictor, Runner, module_lm_config

__all__ = ["build"]

log = logging.getLogger("stepbridge.native")


def build(adapter: NativeAdapter, program: Program, name: str, module: Any,
          runner_of: Callable[[str], Runner]) -> Runner:
    """The runner of a format-2 module (``runner_of`` gives the runner of another module of the program)."""
    if isinstance(module, ReactModule):
        return ReactRunner(adapter, program, module)
    if isinstance(module, MultiChainComparisonModule):
        return MultiChainComparisonRunner(adapter, program, module)
    if isinstance(module, BestOfNModule | RefineModule):
        return EnsembleRunner(adapter, program, name, module, runner_of)
    raise TypeError(f"module {name!r}: the native adapter has no runner for type {module.type!r}")


async def run_step(runner: Any, args: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    """A format-2 module called by a step: completions checked first, outputs made JSON data (a
    trajectory holds whatever the tools returned)."""
    target = runner.inner if isinstance(runner, EnsembleRunner) else runner
    if isinstance(target, MultiChainComparisonRunner):
        target.check(args)
    outputs = await runner.invoke(args, inv)
    return {k: json_data(v) for k, v in outputs.items()}


# ------------------------------------------------------------------------------------------------
# react
# ------------------------------------------------------------------------------------------------
class ReactRunner:
    """``dspy.ReAct``: step predictor ``react``, extraction ``extract.predict`` (a chain of thought)."""

    def __init__(self, adapter: NativeAdapter, program: Program, module: ReactModule):
        from stepbridge.registry import tools

        signature = module.effective_signature
        specs = [tool_spec(tool_name, tools.get(tool_name).func) for tool_name in module.tools]
        self.tools = {spec.name: spec for spec in specs}
        self.tools[FINISH] = finish_tool(signature)
        self.max_iters = module.max_iters
        config = module_lm_config(program, module)
        self.react = Predictor(adapter, config, react_signature(signature, specs), name="react")
        self.extract = Predictor(adapter, config, extract_signature(signature), name="extract.predict")

    def predictors(self) -> list[Predictor]:
        return [self.react, self.extract]

    async def invoke(self, args: dict[str, Any], inv: Invocation) -> dict[str, Any]:
        trajectory: dict[str, Any] = {}
        for idx in range(self.max_iters):
            try:
                pred = await self._call(self.react, trajectory, args, inv)
            except ContextWindowExceededError as exc:
                log.warning("Ending the trajectory: %s", exc)
                break
            tool_name = pred["next_tool_name"]
            tool_args = pred["next_tool_args"]
            trajectory[f"thought_{idx}"] = pred["next_thought"]
            trajectory[f"tool_name_{idx}"] = tool_name
            trajectory[f"tool_args_{idx}"] = tool_args
            try:
                trajectory[f"observation_{idx}"] = await self.tools[tool_name].acall(tool_args)
            except Exception as exc:
                trajectory[f"observation_{idx}"] = tool_error_text(tool_name, exc)
            if tool_name == FINISH:
                break
        extract = await self._call(self.extract, trajectory, args, inv)
        return {"trajectory": trajectory, **extract}

    async def _call(self, predictor: Predictor, trajectory: dict[str, Any], args: dict[str, Any],
                    inv: Invocation) -> dict[str, Any]:
        """One predictor call; on a context window error, drop the oldest step and try again (3 tries)."""
        mode = predictor.mode(inv.ctx)
        last: ContextWindowExceededError | None = None
        for _ in range(3):
            try:
                return await predictor({**args, "trajectory": format_trajectory(trajectory, mode)}, inv)
            except ContextWindowExceededError as exc:
                log.warning("Trajectory exceeded the context window, truncating the oldest tool call information.")
                last = exc
                truncate_trajectory(trajectory)
        raise ContextWindowExceededError(
            "The context window was exceeded even after 3 attempts to truncate the trajectory.") from last


# ------------------------------------------------------------------------------------------------
# multi_chain_comparison
# ------------------------------------------------------------------------------------------------
class MultiChainComparisonRunner:
    """``dspy.MultiChainComparison``: one predictor ``predict`` over ``m`` reasoning attempts."""

    def __init__(self, adapter: NativeAdapter, program: Program, module: MultiChainComparisonModule):
        signature = module.effective_signature
        self.m = module.m
        self.last_key = list(signature.outputs)[-1]
        own = module.lm.temperature if module.lm is not None else None
        self.predict = Predictor(adapter, module_lm_config(program, module), mcc_signature(signature, module.m),
                                 name="predict", temperature=own if own is not None else MCC_DEFAULT_TEMPERATURE)

    def predictors(self) -> list[Predictor]:
        return [self.predict]

    def check(self, args: dict[str, Any]) -> None:
        """A readable error for unusable completions (called for a step, not inside an ensemble)."""
        check_completions(args.get("completions"), self.last_key, self.m)

    async def invoke(self, args: dict[str, Any], inv: Invocation) -> dict[str, Any]:
        rest = {k: v for k, v in args.items() if k != "completions"}
        attempts = mcc_attempts(args["completions"], self.last_key, self.m)
        return await self.predict({**attempts, **rest}, inv)


# ------------------------------------------------------------------------------------------------
# best_of_n / refine
# ------------------------------------------------------------------------------------------------
class EnsembleRunner:
    """``dspy.BestOfN`` and ``dspy.Refine`` over another module's runner."""

    def __init__(self, adapter: NativeAdapter, program: Program, name: str, module: BestOfNModule | RefineModule,
                 runner_of: Callable[[str], Runner]):
        self.name = name
        self.kind = module.type
        self.inner: Any = runner_of(module.module)
        self.inner_type = program.modules[module.module].type
        self.n = module.n
        self.threshold = module.threshold
        self.fail_count = module.fail_count or module.n
        self.reward = _Reward(program, module, runner_of)
        if isinstance(module, RefineModule):
            # an ensemble runs under the LM settings of the module it wraps (the advice step too)
            inner_config = module_lm_config(program, program.modules[module.module])
            self.feedback = Predictor(adapter, inner_config, feedback_signature(), name="self")
            self.module_code = dspy_source(self.inner_type)
            self.reward_code = reward_source(module.reward, program)

    def predictors(self) -> list[Predictor]:
        return list(self.inner.predictors())

    async def invoke(self, args: dict[str, Any], inv: Invocation) -> dict[str, Any]:
        fail_count = self.fail_count
        best: dict[str, Any] | None = None
        best_reward: Any = -math.inf
        advice: dict[str, str] | None = None
        for idx, rollout_id in enumerate(range(self.n)):
            trace: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
            attempt = Invocation(inv.ctx, inv.calls, temperature=1.0, rollout_id=rollout_id,
                                 hints=advice if advice else None, trace=trace)
            try:
                outputs = await self.inner.invoke(args, attempt)
                reward = await self.reward(args, outputs, inv)
                if reward > best_reward:
                    best_reward, best = reward, outputs
                if reward >= self.threshold:
                    break
                if self.kind == "best_of_n" or idx == self.n - 1:
                    continue
                advice = await self._advice(args, outputs, trace, reward, inv)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                label = "BestOfN: Attempt {} failed" if self.kind == "best_of_n" else "Refine: Attempt failed"
                log.warning("%s with rollout id %s: %s", label.format(idx + 1), rollout_id, exc)
                if idx > fail_count:
                    raise
                fail_count -= 1
        if best is None:
            raise no_prediction(self.kind, self.name, self.n)
        return best

    async def _advice(self, args: dict[str, Any], outputs: dict[str, Any],
                      trace: list[tuple[str, dict[str, Any], dict[str, Any]]], reward: Any,
                      inv: Invocation) -> dict[str, str]:
        named = [(p.name, p.signature) for p in self.inner.predictors()]
        inputs = feedback_inputs(
            program_code=self.module_code, modules_defn=describe_modules(named), program_inputs=args,
            trace=trace, program_outputs=outputs, reward_code=self.reward_code, threshold=self.threshold,
            reward=reward, module_names=[n for n, _ in named])
        result = await self.feedback(inputs, Invocation(inv.ctx, inv.calls))
        advice: dict[str, str] = result["advice"]
        return advice


class _Reward:
    """An attempt's reward: a registered metric, or a judge module's numeric output."""

    def __init__(self, program: Program, module: BestOfNModule | RefineModule, runner_of: Callable[[str], Runner]):
        spec = module.reward
        self.field = spec.field
        if spec.metric is not None:
            from stepbridge.registry import metrics

            self.metric: Any = metrics.get(spec.metric)
            self.judge: Runner | None = None
            self.judge_inputs: list[str] = []
        else:
            assert spec.module is not None
            self.metric = None
            self.judge = runner_of(spec.module)
            judge_sig = module_interface(program.modules[spec.module], program.modules)
            self.judge_inputs = list(judge_sig.inputs) if judge_sig is not None else []

    async def __call__(self, args: dict[str, Any], outputs: dict[str, Any], inv: Invocation) -> Any:
        if self.judge is None:
            example, prediction = dict(args), {k: json_data(v) for k, v in outputs.items()}
            if inspect.iscoroutinefunction(self.metric):
                return await self.metric(example, prediction)
            return await asyncio.to_thread(self.metric, example, prediction)
        available = {**args, **outputs}
        judged = await self.judge.invoke({k: available[k] for k in self.judge_inputs if k in available},
                                         Invocation(inv.ctx, inv.calls))
        assert self.field is not None
        return judged[self.field]
