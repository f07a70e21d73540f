"""How the reference LM plays DSPy's agent and ensemble prompts: a ``dspy.ReAct`` step (choose a tool
and its arguments, finish after one or two observations), the ReAct extraction (answer from the last
observation), ``dspy.MultiChainComparison`` (the majority prediction) and ``dspy.Refine``'s advice step.

Every choice is a pure function of the request, so the examples run offline and every backend that
sends the same messages gets the same answers. Tool lists are read from the agent's instructions as
``dspy.ReAct`` prints them; their argument schemas (a Python dict literal) are read with
``ast.literal_eval``, bounded in size, never evaluated as code.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .answers import ValueGenerator
from .facts import Facts, content_words, finite, split_words
from .prompts import PromptSpec, input_values

__all__ = ["agent_values"]

_TASK_HDR = "\nIn adhering to this structure, your objective is: "
_TOOL_LINE = re.compile(
    r"^\((\d+)\) (.+?)(?:, whose description is <desc>(.*)</desc>)?\. It takes arguments (\{.*\})\.$")
_STEP = re.compile(r"^\[\[ ## (thought|tool_name|tool_args|observation)_(\d+) ## \]\]$", re.MULTILINE)
_ATTEMPT = re.compile(r"my prediction is (.*)»\s*$", re.DOTALL)
#: Largest tool-argument schema (characters) read from a prompt; larger ones count as "no arguments known".
MAX_SCHEMA_TEXT = 20_000
#: Tool calls the reference agent makes before it finishes.
MAX_TOOL_CALLS = 2
_EXPRESSION_ARGS = ("expression", "expr", "formula", "calculation", "equation", "math")
_OPERATORS = (
    (("times", "multiplied", "multiply", "product", "twice", "double"), "*"),
    (("divided", "divide", "per", "ratio", "quotient", "half"), "/"),
    (("minus", "subtract", "difference", "less", "fewer"), "-"),
    (("plus", "add", "sum", "total", "more"), "+"),
)


@dataclass(frozen=True)
class _Tool:
    name: str
    desc: str
    args: Mapping[str, Any]


@dataclass(frozen=True)
class _Step:
    tool: str
    args: str
    observation: str


def agent_values(spec: PromptSpec, system: str, user: str) -> dict[str, Any] | None:
    """Output values for an agent or ensemble prompt; None for every other prompt."""
    outputs = [f.name for f in spec.outputs]
    inputs = [f.name for f in spec.inputs]
    if outputs == ["next_thought", "next_tool_name", "next_tool_args"] and "trajectory" in inputs:
        return _react_step(spec, system, user, inputs)
    if outputs[:1] == ["rationale"] and any(n.startswith("reasoning_attempt_") for n in inputs):
        return _compare(spec, user, inputs)
    if outputs == ["discussion", "advice"] and "module_names" in inputs and "reward_value" in inputs:
        return _advice(user, inputs)
    if "trajectory" in inputs and outputs[:1] == ["reasoning"]:
        return _extract(spec, user, inputs)
    return None


# ------------------------------------------------------------------------------------------------
# ReAct
# ------------------------------------------------------------------------------------------------
def _objective(system: str) -> str:
    i = system.find(_TASK_HDR)
    return system[i + len(_TASK_HDR):] if i >= 0 else ""


def _tools(system: str, allowed: Sequence[Any]) -> list[_Tool]:
    names = {str(a) for a in allowed}
    found: list[_Tool] = []
    for raw in _objective(system).splitlines():
        m = _TOOL_LINE.match(raw.strip())
        if m is None or m.group(2) not in names or m.group(2) == "finish":
            continue
        args: Any = {}
        text = m.group(4)
        if len(text) <= MAX_SCHEMA_TEXT:
            try:
                args = ast.literal_eval(text)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                args = {}
        found.append(_Tool(m.group(2), m.group(3) or "", args if isinstance(args, Mapping) else {}))
    return found


def _steps(trajectory: str) -> list[_Step]:
    marks = list(_STEP.finditer(trajectory))
    parts: dict[tuple[str, int], str] = {}
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(trajectory)
        parts[(m.group(1), int(m.group(2)))] = trajectory[m.end():end].strip()
    indices = sorted({i for (_, i) in parts})
    return [_Step(parts.get(("tool_name", i), ""), parts.get(("tool_args", i), ""),
                  parts.get(("observation", i), "")) for i in indices]


def _task_text(values: Mapping[str, str]) -> str:
    return "\n".join(v for k, v in values.items() if k not in ("trajectory", "hint_"))


def _react_step(spec: PromptSpec, system: str, user: str, inputs: list[str]) -> dict[str, Any]:
    values = input_values(user, inputs)
    task = _task_text(values)
    name_schema = spec.outputs[1].schema
    enum = name_schema.get("enum")
    allowed: list[Any] = enum if isinstance(enum, list) else []
    tools = _tools(system, allowed)
    steps = _steps(values.get("trajectory", ""))
    failed = any(s.observation.startswith("Execution error in") for s in steps)
    called = [s.tool for s in steps]
    candidates = [t for t in tools if t.name not in called]
    choice: _Tool | None = None
    if not failed and candidates and len(steps) < MAX_TOOL_CALLS:
        task_words = set(content_words(task))
        # arithmetic once there is something to compute: an operator word and two numbers (task or observed)
        observed = sum(1 for s in steps if _observed_number(s.observation, task) is not None)
        arithmetic = (bool(set(split_words(task)) & {w for keys, _ in _OPERATORS for w in keys})
                      and len(_numbers(task)) + min(observed, 1) >= 2)
        scored = [(len(task_words & set(content_words(_tool_text(t))))
                   + (2 if arithmetic and any(str(a).lower() in _EXPRESSION_ARGS for a in t.args) else 0), -i, t)
                  for i, t in enumerate(candidates)]
        score, _, best = max(scored, key=lambda x: (x[0], x[1]))
        if not steps or score > 0:
            choice = best
    if choice is None:
        return {"next_thought": "I now have the information I need to answer.", "next_tool_name": "finish",
                "next_tool_args": {}}
    facts = Facts.from_values({**{k: v for k, v in values.items() if k != "trajectory"},
                               "context": "\n".join(s.observation for s in steps)})
    args = {name: _argument(name, schema, task, steps, facts) for name, schema in choice.args.items()
            if isinstance(schema, Mapping) and "default" not in schema}
    subject = " ".join(content_words(task)[:6]) or "the task"
    return {"next_thought": f"I should call {choice.name} to learn more about: {subject}.",
            "next_tool_name": choice.name, "next_tool_args": args}


def _tool_text(tool: _Tool) -> str:
    return " ".join([tool.name.replace("_", " ").replace(".", " "), tool.desc, *map(str, tool.args)])


def _argument(name: str, schema: Mapping[str, Any], task: str, steps: list[_Step], facts: Facts) -> Any:
    kind = schema.get("type")
    if kind == "string" or (kind is None and not schema):
        if name.lower() in _EXPRESSION_ARGS:
            return _expression(task, steps)
        return facts.query or task.strip() or "N/A"
    return ValueGenerator(facts, schema).value(schema, name)


def _numbers(text: str) -> list[float]:
    out = []
    for m in re.finditer(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]*\w)", text):
        x = float(m.group())
        if finite(x):
            out.append(x)
    return out


def _observed_number(observation: str, task: str) -> float | None:
    """The number an observation offers for the task: the numeric field whose name the task mentions most."""
    try:
        data = json.loads(observation)
    except ValueError:
        data = None
    if isinstance(data, Mapping):
        words = set(split_words(task))
        best: tuple[int, float] | None = None
        for key, value in data.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and finite(float(value)):
                score = len(words & set(split_words(str(key).replace("_", " "))))
                if best is None or score > best[0]:
                    best = (score, float(value))
        if best is not None:
            return best[1]
    if isinstance(data, int | float) and not isinstance(data, bool) and finite(float(data)):
        return float(data)
    found = _numbers(observation)
    return found[0] if found else None


def _fmt(x: float) -> str:
    return str(int(x)) if x.is_integer() else repr(x)


def _expression(task: str, steps: list[_Step]) -> str:
    words = set(split_words(task))
    op = next((sym for keys, sym in _OPERATORS if words & set(keys)), "+")
    task_numbers = _numbers(task)
    seen = next((n for s in reversed(steps) if (n := _observed_number(s.observation, task)) is not None), None)
    operands = ([seen] if seen is not None else []) + task_numbers
    if not operands:
        return "0"
    if len(operands) == 1:
        operand = {"twice": 2.0, "double": 2.0, "half": 2.0}.get(next(iter(words & {"twice", "double", "half"}), ""))
        return _fmt(operands[0]) if operand is None else f"{_fmt(operands[0])} {op} {_fmt(operand)}"
    return f" {op} ".join(_fmt(x) for x in operands[:2])


def _extract(spec: PromptSpec, user: str, inputs: list[str]) -> dict[str, Any]:
    values = input_values(user, inputs)
    task = _task_text(values)
    steps = [s for s in _steps(values.get("trajectory", "")) if s.tool != "finish"]
    useful = [s for s in steps if not s.observation.startswith("Execution error in")]
    context = [s.observation for s in useful]
    facts = Facts.from_values({**{k: v for k, v in values.items() if k != "trajectory"},
                               "context": json.dumps(context)})
    out: dict[str, Any] = {}
    for field in spec.outputs:
        if field.name == "reasoning":
            if useful:
                last = useful[-1]
                out["reasoning"] = f"{last.tool} returned {_short(last.observation)}, which answers the question."
            else:
                out["reasoning"] = "No tool gave a usable observation; answering from the question alone."
            continue
        schema = field.schema
        if schema.get("type") == "string" and useful:
            out[field.name] = _answer_text(useful[-1].observation, task)
        else:
            out[field.name] = ValueGenerator(facts, schema).value(schema, field.name)
    return out


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _answer_text(observation: str, task: str) -> str:
    """The answer an observation gives: a number as is, the field of an object the task asks about, or
    the observation's first line."""
    try:
        data = json.loads(observation)
    except ValueError:
        data = None
    if isinstance(data, int | float) and not isinstance(data, bool):
        return _fmt(float(data)) if isinstance(data, float) else str(data)
    if isinstance(data, Mapping) and data:
        words = set(content_words(task))
        ranked = sorted(data.items(), key=lambda kv: -len(words & set(split_words(str(kv[0]).replace("_", " ")))))
        value = ranked[0][1]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    first = observation.strip().splitlines()[0] if observation.strip() else "N/A"
    return first.strip("«»")


# ------------------------------------------------------------------------------------------------
# MultiChainComparison and Refine
# ------------------------------------------------------------------------------------------------
def _compare(spec: PromptSpec, user: str, inputs: list[str]) -> dict[str, Any]:
    values = input_values(user, inputs)
    predictions = []
    for name in inputs:
        if name.startswith("reasoning_attempt_"):
            m = _ATTEMPT.search(values.get(name, ""))
            if m:
                predictions.append(m.group(1).strip())
    counts: dict[str, int] = {}
    for p in predictions:
        counts[p] = counts.get(p, 0) + 1
    majority = max(counts, key=lambda p: (counts[p], -predictions.index(p))) if counts else "N/A"
    facts = Facts.from_values({k: v for k, v in values.items() if not k.startswith("reasoning_attempt_")})
    out: dict[str, Any] = {"rationale": f"{counts.get(majority, 0)} of {len(predictions)} attempts predict "
                                        f"{majority}; that prediction is the most consistent."}
    last = spec.outputs[-1]
    for field in spec.outputs[1:]:
        schema = field.schema
        if field is last:
            out[field.name] = _coerce(majority, schema, facts, field.name)
        else:
            out[field.name] = ValueGenerator(facts, schema).value(schema, field.name)
    return out


def _coerce(text: str, schema: Mapping[str, Any], facts: Facts, name: str) -> Any:
    kind = schema.get("type")
    if kind in (None, "string") and "enum" not in schema:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if kind == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "boolean" and text in ("True", "False"):
        return text == "True"
    if "enum" in schema and isinstance(schema["enum"], list) and text in map(str, schema["enum"]):
        return next(v for v in schema["enum"] if str(v) == text)
    return ValueGenerator(facts, schema).value(schema, name)


def _advice(user: str, inputs: list[str]) -> dict[str, Any]:
    values = input_values(user, inputs)
    try:
        names = json.loads(values.get("module_names", "[]"))
    except ValueError:
        names = []
    names = [str(n) for n in names] if isinstance(names, list) else []
    reward, target = values.get("reward_value", "?"), values.get("target_threshold", "?")
    advice = {name: f"The last output scored {reward}, below the target {target}: change the answer so that it "
                    "meets the reward, and keep it short and exact." for name in names}
    return {"discussion": f"The program's outputs scored {reward} against a threshold of {target}; "
                          f"{', '.join(names) or 'the module'} produced them.",
            "advice": advice}
