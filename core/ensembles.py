"""``dspy.BestOfN``, ``dspy.Refine`` and ``dspy.MultiChainComparison`` (DSPy 3.4.1) as data.

The native executor runs ``best_of_n``, ``refine`` and ``multi_chain_comparison`` modules with these
pieces and the DSPy adapter runs the real DSPy classes; ``tests/test_ensembles.py`` compares whole runs
with DSPy itself (same scripted LM replies, byte-identical messages).

* **BestOfN / Refine** run the wrapped module up to ``n`` times at ``temperature=1.0``, each attempt
  with its own rollout id (``0..n-1``: it reaches only the response cache key, never the request),
  keep the prediction with the highest reward and stop early at the first reward ``>= threshold``. An
  attempt that raises (the module, or the reward) is a failure; DSPy's counting is kept: attempt
  ``i`` (0-based) re-raises when ``i > fail_count``, else ``fail_count`` drops by one. The count starts
  afresh on every call (DSPy keeps decrementing it on the module object across calls).
* **Refine** additionally asks the LM for advice after every attempt but the last that missed the
  threshold (DSPy's ``OfferFeedback`` signature, with the wrapped module's source as DSPy has it, its
  predictors described by :func:`describe_modules`, and the attempt's inputs, predictor trace and
  outputs as orjson-indented JSON); the next attempt gives each predictor its advice as an extra input
  field ``hint_``.
* **MultiChainComparison** turns ``m`` completions into ``reasoning_attempt_i`` inputs and predicts a
  ``rationale`` before the outputs, at the module's own temperature (DSPy's default 0.7).
"""

from __future__ import annotations

import inspect
import json
import textwrap
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

from .errors import StepbridgeError
from .formats import Prompt, default_instructions
from .signature import FieldSpec, Signature

__all__ = [
    "HINT_DESC",
    "HINT_FIELD",
    "MCC_DEFAULT_TEMPERATURE",
    "add_hint",
    "describe_modules",
    "dspy_source",
    "feedback_inputs",
    "feedback_signature",
    "mcc_attempts",
    "mcc_signature",
    "metric_source",
    "no_prediction",
    "predictor_names",
    "recursive_mask",
    "reward_source",
]

HINT_FIELD = "hint_"
HINT_DESC = "A hint to the module from an earlier run"
#: ``dspy.MultiChainComparison(..., temperature=0.7)``: its predictor sends this unless the module sets one.
MCC_DEFAULT_TEMPERATURE = 0.7

_FEEDBACK_INSTRUCTIONS = (
    "In the discussion, assign blame to each module that contributed to the final reward being below the "
    "threshold, if\nany. Then, prescribe concrete advice of how the module should act on its future input when "
    "we retry the process, if\nit were to receive the same or similar inputs. If a module is not to blame, the "
    "advice should be N/A.\nThe module will not see its own history, so it needs to rely on entirely concrete "
    "and actionable advice from you\nto avoid the same mistake on the same or similar inputs."
)


def _instructions(signature: Signature) -> str:
    if not signature.instructions:
        return default_instructions(signature)
    return inspect.cleandoc(signature.instructions)


# ------------------------------------------------------------------------------------------------
# Refine
# ------------------------------------------------------------------------------------------------
@cache
def feedback_signature() -> Signature:
    """DSPy's ``OfferFeedback`` signature (Refine's advice step)."""
    return Signature(
        instructions=_FEEDBACK_INSTRUCTIONS,
        inputs={
            "program_code": FieldSpec(type="str", desc="The code of the program that we are analyzing"),
            "modules_defn": FieldSpec(type="str", desc="The definition of each module in the program, including "
                                                       "its I/O"),
            "program_inputs": FieldSpec(type="str", desc="The inputs to the program that we are analyzing"),
            "program_trajectory": FieldSpec(type="str", desc="The trajectory of the program's execution, showing "
                                                             "each module's I/O"),
            "program_outputs": FieldSpec(type="str", desc="The outputs of the program that we are analyzing"),
            "reward_code": FieldSpec(type="str", desc="The code of the reward function that we are analyzing"),
            "target_threshold": FieldSpec(type="float", desc="The target threshold for the reward function"),
            "reward_value": FieldSpec(type="float", desc="The reward value assigned to the program's outputs"),
            "module_names": FieldSpec(type="list[str]", desc="The names of the modules in the program, for which "
                                                             "we seek advice"),
        },
        outputs={
            "discussion": FieldSpec(type="str", desc="Discussing blame of where each module went wrong, if it did"),
            "advice": FieldSpec(
                type="dict[str, str]",
                desc="For each module, describe very concretely, in this order: the specific scenarios in which it "
                     "has made mistakes in the past and what each mistake was, followed by what it should do "
                     "differently in that kind ofscenario in the future. If the module is not to blame, write N/A."),
        },
    )


def add_hint(signature: Signature) -> Signature:
    """The signature a predictor is called with once Refine has advice: ``hint_`` appended to the inputs."""
    return Signature(
        instructions=_instructions(signature),
        inputs={**signature.inputs, HINT_FIELD: FieldSpec(type="str", desc=HINT_DESC)},
        outputs=dict(signature.outputs),
    )


def describe_modules(predictors: Sequence[tuple[str, Signature]]) -> str:
    """DSPy's ``inspect_modules``: each named predictor's fields and instructions between rules."""
    separator = "-" * 80
    output = [separator]
    for name, signature in predictors:
        instructions = textwrap.dedent(_instructions(signature))
        instructions = ("\n" + "\t" * 2).join(["", *instructions.splitlines()])
        output.append(f"Module {name}")
        output.append("\n\tInput Fields:")
        output.append(("\n" + "\t" * 2).join(["", *Prompt._describe(signature.inputs).splitlines()]))
        output.append("\tOutput Fields:")
        output.append(("\n" + "\t" * 2).join(["", *Prompt._describe(signature.outputs).splitlines()]))
        output.append(f"\tOriginal Instructions: {instructions}")
        output.append(separator)
    return "\n".join([o.strip("\n") for o in output])


def recursive_mask(value: Any) -> Any:
    """DSPy's ``recursive_mask``: whatever orjson cannot write becomes ``<non-serializable: Type>``."""
    import orjson

    try:
        orjson.dumps(value)
        return value
    except TypeError:
        pass
    if isinstance(value, dict):
        return {k: recursive_mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [recursive_mask(v) for v in value]
    if isinstance(value, tuple):
        return tuple(recursive_mask(v) for v in value)
    return f"<non-serializable: {type(value).__name__}>"


def feedback_inputs(*, program_code: str, modules_defn: str, program_inputs: Mapping[str, Any],
                    trace: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]],
                    program_outputs: Mapping[str, Any], reward_code: str, threshold: Any, reward: Any,
                    module_names: Sequence[str]) -> dict[str, str]:
    """The ``OfferFeedback`` inputs: strings as they are, everything else as orjson with 2-space indents."""
    import orjson

    raw: dict[str, Any] = {
        "program_code": program_code,
        "modules_defn": modules_defn,
        "program_inputs": dict(program_inputs),
        "program_trajectory": [{"module_name": name, "inputs": dict(inputs), "outputs": dict(outputs)}
                               for name, inputs, outputs in trace],
        "program_outputs": dict(program_outputs),
        "reward_code": reward_code,
        "target_threshold": threshold,
        "reward_value": reward,
        "module_names": list(module_names),
    }
    return {k: v if isinstance(v, str) else orjson.dumps(recursive_mask(v), option=orjson.OPT_INDENT_2).decode()
            for k, v in raw.items()}


# The DSPy classes a ``refine`` module can wrap, by stepbridge module type (their source is the
# ``program_code`` Refine shows the LM).
_DSPY_CLASSES = {
    "predict": "Predict",
    "chain_of_thought": "ChainOfThought",
    "react": "ReAct",
    "multi_chain_comparison": "MultiChainComparison",
}


@cache
def _sources() -> dict[str, str]:
    text = resources.files("stepbridge").joinpath("dspy_sources.json").read_text(encoding="utf-8")
    data: dict[str, str] = json.loads(text)
    return data


def dspy_source(module_type: str) -> str:
    """``inspect.getsource`` of the DSPy 3.4.1 class a module type runs as (shipped with stepbridge)."""
    return _sources()[_DSPY_CLASSES[module_type]]


def metric_source(func: Any, name: str) -> str:
    """``inspect.getsource`` of a reward function, as Refine takes it (its class's source for a callable
    object); a short note when Python has no source for it. A wrapper (``functools.wraps``, such as
    :func:`stepbridge.adapters.dspy_reward.dspy_reward`) shows the source of what it wraps."""
    func = inspect.unwrap(func)
    for target in (func, type(func)):
        try:
            return inspect.getsource(target)
        except (TypeError, OSError):
            continue
    return f"# the registered metric {name!r} (no Python source available)\n"


def reward_source(reward: Any, program: Any) -> str:
    """Refine's ``reward_code`` for a module's reward: the metric's Python source, or for a judge module its
    definition in the program (the same text on every backend)."""
    if reward.metric is not None:
        from .registry import metrics

        return metric_source(metrics.get(reward.metric), reward.metric)
    import yaml

    judge = program.modules[reward.module].model_dump(mode="json", by_alias=True, exclude_none=True)
    definition = yaml.safe_dump({reward.module: judge}, sort_keys=False, allow_unicode=True, width=100)
    return f"# reward: the output {reward.field!r} of the program module {reward.module!r}\n{definition}"


def no_prediction(kind: str, name: str, n: int) -> StepbridgeError:
    """The error for an ensemble none of whose attempts succeeded with a comparable reward (where DSPy
    returns ``None``)."""
    return StepbridgeError(f"{kind} {name!r}: none of the {n} attempts produced a prediction with a comparable "
                           "reward (every attempt failed, or no reward was a number)")


def predictor_names(module_type: str) -> list[str]:
    """``named_predictors()`` of the DSPy class a module type runs as."""
    return {"predict": ["self"], "chain_of_thought": ["predict"], "react": ["react", "extract.predict"],
            "multi_chain_comparison": ["predict"]}[module_type]


# ------------------------------------------------------------------------------------------------
# MultiChainComparison
# ------------------------------------------------------------------------------------------------
def mcc_signature(signature: Signature, m: int) -> Signature:
    """The predictor's signature: ``reasoning_attempt_1..m`` inputs, ``rationale`` first among the outputs."""
    inputs = dict(signature.inputs)
    for idx in range(m):
        inputs[f"reasoning_attempt_{idx + 1}"] = FieldSpec(type="str", desc="${reasoning attempt}")
    outputs = {"rationale": FieldSpec(type="str", desc="${corrected reasoning}"), **signature.outputs}
    return Signature(instructions=_instructions(signature), inputs=inputs, outputs=outputs)


def mcc_attempts(completions: Sequence[Any], last_key: str, m: int) -> dict[str, str]:
    """The ``reasoning_attempt_i`` inputs, exactly as ``MultiChainComparison.forward`` builds them (with
    the same exceptions for completions it cannot read)."""
    attempts = []
    for c in completions:
        rationale = c.get("rationale", c.get("reasoning")).strip().split("\n")[0].strip()
        answer = str(c[last_key]).strip().split("\n")[0].strip()
        attempts.append(f"«I'm trying to {rationale} I'm not sure but my prediction is {answer}»")
    if len(attempts) != m:
        raise AssertionError(
            f"The number of attempts ({len(attempts)}) doesn't match the expected number M ({m}). Please set the "
            "correct value for M when initializing MultiChainComparison.")
    return {f"reasoning_attempt_{idx + 1}": attempt for idx, attempt in enumerate(attempts)}


def check_completions(completions: Any, last_key: str, m: int) -> None:
    """A readable error for completions a multi_chain_comparison cannot use (before DSPy's own)."""
    if not isinstance(completions, list):
        raise ValueError(f"'completions' must be a list of {m} objects, got {type(completions).__name__}")
    if len(completions) != m:
        raise ValueError(f"'completions' has {len(completions)} elements; this module compares m={m}")
    for i, c in enumerate(completions):
        if not isinstance(c, dict):
            raise ValueError(f"'completions'[{i}] must be an object with 'reasoning' and {last_key!r}, got "
                             f"{type(c).__name__}")
        reasoning = c.get("rationale", c.get("reasoning"))
        if not isinstance(reasoning, str):
            raise ValueError(f"'completions'[{i}] needs a text 'reasoning' (or 'rationale') field")
        if last_key not in c:
            raise ValueError(f"'completions'[{i}] has no field {last_key!r} (the module's last output)")
