"""``dspy.ReAct`` (DSPy 3.4.1) as data: its tool descriptions, signatures, trajectory and tool calls.

The native executor runs a ``react`` module with these pieces and the DSPy adapter runs the real
``dspy.ReAct``; ``tests/test_react.py`` checks every piece (and whole runs) against DSPy itself.

* **Tools** are registered callables (never import paths). :func:`tool_spec` reads a tool the way
  ``dspy.Tool`` does: the name it is registered under, the function's raw ``__doc__`` as its
  description, one JSON schema per parameter from its annotation (pydantic models expanded, ``$ref``
  resolved, a default recorded as ``default``). The agent's instructions list each tool as DSPy's
  ``str(Tool)`` prints it, then DSPy's own ``finish`` tool.
* **Calls** validate the LM's arguments as ``dspy.Tool`` does (unknown names refused unless the tool
  takes ``**kwargs``; each value checked against its JSON schema with ``jsonschema``; then converted
  to the annotated type with pydantic, so a pydantic-model parameter receives a model instance).
* **Tool errors** become the observation ``Execution error in <tool>: `` followed by the exception,
  as in DSPy, except that DSPy also prints the Python stack frames (file paths and source lines of
  whichever implementation ran the tool); here only the exception itself is kept, on every backend.
* **Trajectory**: ``thought_i``, ``tool_name_i``, ``tool_args_i``, ``observation_i``, formatted into
  the ``trajectory`` input as the format adapter formats input fields. When the LM reports that the
  context window is exceeded, the oldest step (four entries) is dropped, up to three times per call.
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .errors import ContextWindowExceededError
from .field_values import jsonable
from .formats import chain_of_thought, default_instructions, format_value
from .signature import FieldSpec, Signature

__all__ = [
    "FINISH",
    "RESERVED_INPUTS",
    "ToolSpec",
    "extract_signature",
    "finish_tool",
    "format_trajectory",
    "json_data",
    "react_instructions",
    "react_signature",
    "tool_error_text",
    "tool_spec",
    "truncate_trajectory",
]

#: The tool DSPy adds to every agent; a registered tool of this name would be replaced by it.
FINISH = "finish"
#: Input names ``dspy.ReAct`` takes for itself (``max_iters`` is popped from the inputs, ``trajectory``
#: is the agent's own input field).
RESERVED_INPUTS = ("trajectory", "max_iters")
#: Output names of the agent's step predictor, which the extract step must not collide with.
REACT_OUTPUTS = ("next_thought", "next_tool_name", "next_tool_args")


@dataclass(frozen=True)
class ToolSpec:
    """A tool as ``dspy.Tool`` sees it: name, description, per-argument JSON schemas and types."""

    name: str
    func: Callable[..., Any]
    desc: str | None
    args: dict[str, Any]
    arg_types: dict[str, Any] = field(default_factory=dict)
    has_kwargs: bool = False

    def __str__(self) -> str:
        # dspy.Tool.__str__: the arguments are printed as a Python dict (repr), not JSON.
        desc = f", whose description is <desc>{self.desc}</desc>.".replace("\n", "  ") if self.desc else "."
        return f"{self.name}{desc} It takes arguments {self.args}."

    def parse_args(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``dspy.Tool._validate_and_parse_args``: check each value, then convert it to its annotated type."""
        from jsonschema import ValidationError, validate

        for key, value in kwargs.items():
            if key not in self.args:
                if self.has_kwargs:
                    continue
                raise ValueError(f"Arg {key} is not in the tool's args.")
            try:
                instance = value.model_dump() if hasattr(value, "model_dump") else value
                type_str = self.args[key].get("type")
                if type_str is not None and type_str != "Any":
                    validate(instance=instance, schema=self.args[key])
            except ValidationError as exc:
                raise ValueError(f"Arg {key} is invalid: {exc.message}") from exc
        parsed: dict[str, Any] = {}
        for key, value in kwargs.items():
            annotation = self.arg_types.get(key, Any)
            if key in self.arg_types and annotation is not Any:
                parsed[key] = _value_adapter(annotation).model_validate({"value": value}).value
            else:
                parsed[key] = value
        return parsed

    async def acall(self, kwargs: Mapping[str, Any]) -> Any:
        """Validate the arguments and call the tool (a plain function runs in a worker thread)."""
        parsed = self.parse_args(kwargs)
        if inspect.iscoroutinefunction(self.func):
            return await self.func(**parsed)
        result = await asyncio.to_thread(self.func, **parsed)
        if inspect.isawaitable(result):
            return await result
        return result


_wrappers: dict[Any, Any] = {}


def _value_adapter(annotation: Any) -> Any:
    """DSPy's ``create_model("Wrapper", value=(annotation, ...))``, cached per annotation."""
    import pydantic

    try:
        cached = _wrappers.get(annotation)
    except TypeError:  # an unhashable annotation
        cached = None
    if cached is None:
        cached = pydantic.create_model("Wrapper", value=(annotation, ...))
        try:
            if len(_wrappers) < 1024:
                _wrappers[annotation] = cached
        except TypeError:
            pass
    return cached


def _to_json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    import pydantic_core

    try:
        return pydantic_core.to_jsonable_python(value)
    except Exception:
        return value


def _resolve_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Expand ``$ref``s in place of ``$defs`` (DSPy's ``_resolve_json_schema_reference``)."""
    if "$defs" not in schema and "definitions" not in schema:
        return schema

    def resolve(obj: Any, depth: int) -> Any:
        if depth > 64:
            raise TypeError("the argument's JSON schema refers to itself (a recursive model cannot be a tool "
                            "argument)")
        if isinstance(obj, dict):
            if "$ref" in obj:
                return resolve(schema["$defs"][obj["$ref"].split("/")[-1]], depth + 1)
            return {k: resolve(v, depth + 1) for k, v in obj.items()}
        if isinstance(obj, list):
            return [resolve(item, depth + 1) for item in obj]
        return obj

    resolved: dict[str, Any] = resolve(schema, 0)
    resolved.pop("$defs", None)
    return resolved


def tool_spec(name: str, func: Callable[..., Any]) -> ToolSpec:
    """A registered callable read as ``dspy.Tool(func, name=name)`` reads it.

    Raises ``TypeError`` when an annotation has no JSON schema (for example a recursive model)."""
    from pydantic import BaseModel, TypeAdapter

    target = func if inspect.isfunction(func) or inspect.ismethod(func) else func.__call__  # type: ignore[operator]
    desc = getattr(func, "__doc__", None) or getattr(target, "__doc__", "")
    try:
        sig = inspect.signature(target)
        available = typing.get_type_hints(target)
    except (TypeError, ValueError, NameError) as exc:
        raise TypeError(f"cannot read the parameters of tool {name!r}: {exc}") from exc
    hints = {pname: available.get(pname, Any) for pname in sig.parameters}
    args: dict[str, Any] = {}
    for pname, annotation in hints.items():
        if pname == "return":
            continue
        origin = typing.get_origin(annotation) or annotation
        try:
            if isinstance(origin, type) and issubclass(origin, BaseModel):
                schema = _resolve_refs(annotation.model_json_schema())
            else:
                schema = _resolve_refs(TypeAdapter(annotation).json_schema())
        except RecursionError:
            raise TypeError(f"tool {name!r}: the schema of argument {pname!r} refers to itself") from None
        except Exception as exc:
            raise TypeError(f"tool {name!r}: argument {pname!r} has no JSON schema ({type(exc).__name__}: "
                            f"{exc})") from exc
        default = sig.parameters[pname].default
        if default is not inspect.Parameter.empty:
            schema["default"] = _to_json_default(default)
        args[pname] = schema
    has_kwargs = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return ToolSpec(name=name, func=func, desc=desc or None, args=args, arg_types=hints, has_kwargs=has_kwargs)


def finish_tool(signature: Signature) -> ToolSpec:
    """DSPy's ``finish`` tool for an agent with this signature."""
    outputs = ", ".join(f"`{k}`" for k in signature.outputs)
    return ToolSpec(
        name=FINISH,
        func=lambda: "Completed.",
        desc=f"Marks the task as complete. That is, signals that all information for producing the outputs, "
             f"i.e. {outputs}, are now available to be extracted.",
        args={},
    )


def react_instructions(signature: Signature, tools: list[ToolSpec]) -> str:
    """The agent's instructions: the module's, then DSPy's agent text and the numbered tool list."""
    inputs = ", ".join(f"`{k}`" for k in signature.inputs)
    outputs = ", ".join(f"`{k}`" for k in signature.outputs)
    base = _base_instructions(signature)
    instr = [f"{base}\n"] if base else []
    instr.extend([
        f"You are an Agent. In each episode, you will be given the fields {inputs} as input. And you can see "
        "your past trajectory so far.",
        f"Your goal is to use one or more of the supplied tools to collect any necessary information for "
        f"producing {outputs}.\n",
        "To do this, you will interleave next_thought, next_tool_name, and next_tool_args in each turn, and also "
        "when finishing the task.",
        "After each tool call, you receive a resulting observation, which gets appended to your trajectory.\n",
        "When writing next_thought, you may reason about the current situation and plan for future steps.",
        "When selecting the next_tool_name and its next_tool_args, the tool must be one of:\n",
    ])
    for idx, tool in enumerate(_with_finish(signature, tools)):
        instr.append(f"({idx + 1}) {tool}")
    instr.append("When providing `next_tool_args`, the value inside the field must be in JSON format")
    return "\n".join(instr)


def _base_instructions(signature: Signature) -> str:
    if not signature.instructions:
        return default_instructions(signature)
    return inspect.cleandoc(signature.instructions)


def _with_finish(signature: Signature, tools: list[ToolSpec]) -> list[ToolSpec]:
    by_name = {t.name: t for t in tools}
    by_name[FINISH] = finish_tool(signature)
    return list(by_name.values())


def _literal(names: list[str]) -> str:
    def quote(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return "Literal[" + ", ".join(quote(n) for n in names) + "]"


def react_signature(signature: Signature, tools: list[ToolSpec]) -> Signature:
    """The step predictor's signature: the inputs and ``trajectory`` -> thought, tool name, tool args."""
    names = [t.name for t in _with_finish(signature, tools)]
    return Signature(
        instructions=react_instructions(signature, tools),
        inputs={**signature.inputs, "trajectory": FieldSpec(type="str")},
        outputs={
            "next_thought": FieldSpec(type="str"),
            "next_tool_name": FieldSpec(type=_literal(names)),
            "next_tool_args": FieldSpec(type="dict[str, Any]"),
        },
    )


def extract_signature(signature: Signature) -> Signature:
    """The final extraction's signature (a chain of thought): inputs and ``trajectory`` -> outputs."""
    inner = Signature(
        instructions=_base_instructions(signature),
        inputs={**signature.inputs, "trajectory": FieldSpec(type="str")},
        outputs=dict(signature.outputs),
    )
    return chain_of_thought(inner)


def format_trajectory(trajectory: Mapping[str, Any], adapter: str = "chat") -> str:
    """The ``trajectory`` input text: each entry as an input field of type ``str`` (DSPy's
    ``adapter.format_user_message_content`` over a signature of the entries)."""
    if adapter == "xml":
        parts = [f"<{k}>\n{format_value(v, True)}\n</{k}>" for k, v in trajectory.items()]
        return "\n\n".join(["", "\n\n".join(parts), ""]).strip()
    parts = [f"[[ ## {k} ## ]]\n{format_value(v, True)}" for k, v in trajectory.items()]
    return "\n\n".join(["", *parts, ""]).strip()


def truncate_trajectory(trajectory: dict[str, Any]) -> dict[str, Any]:
    """Drop the oldest tool call (four entries) in place, as ``dspy.ReAct.truncate_trajectory`` does."""
    keys = list(trajectory)
    if len(keys) <= 4:
        raise ContextWindowExceededError(
            "The trajectory is too long so your prompt exceeded the context window, but the trajectory cannot be "
            "truncated because it only has one tool call.")
    for key in keys[:4]:
        trajectory.pop(key)
    return trajectory


def tool_error_text(name: str, error: BaseException) -> str:
    """The observation for a failed tool call: DSPy's text without the stack frames."""
    detail = "".join(traceback.format_exception_only(type(error), error)).strip()
    return f"Execution error in {name}: \n{detail}"


def json_data(value: Any) -> Any:
    """What a tool returned, as JSON data for outputs, traces and storage: pydantic models and dataclasses
    dumped, tuples as lists, anything else without a JSON form as its text (the trajectory keeps the
    value itself for the prompt, which formats it as DSPy does)."""
    return jsonable(value)
