"""DSPy 3.4.1's ChatAdapter and JSONAdapter, reproduced byte for byte without importing dspy.

The native executor must send exactly the chat messages that ``dspy.Predict`` /
``dspy.ChainOfThought`` send through ``dspy.ChatAdapter()`` / ``dspy.JSONAdapter()`` and parse LM
replies exactly as DSPy does. A :class:`Prompt` is compiled once per module (signature, demos,
adapter): the system message and the demo turns are built at construction, so a call only formats
the user message. ``tests/test_formats.py`` compares everything here with the real DSPy.

Decisions
---------
* **Fallback.** DSPy's ChatAdapter, on a parse error, issues a *second* LM call through a
  JSONAdapter (same messages built by the JSON format, plus a ``response_format``). This is
  reproduced but not hidden: :meth:`Prompt.parse` raises :class:`LMParseError`, and the executor
  decides whether to retry with :meth:`Prompt.fallback` (the JSON :class:`Prompt` of the same
  signature and demos; ``None`` for a JSON prompt). DSPy falls back on every
  ``AdapterParseError`` of the chat attempt, including an empty reply, and never on a JSON prompt.
* **response_format.** DSPy's JSONAdapter chooses it from the LM's capabilities: nothing when the
  LM does not take ``response_format``; ``{"type": "json_object"}`` when it cannot take a schema or
  an output field is a ``dict``; otherwise OpenAI structured outputs with the strict JSON schema of
  a ``DSPyProgramOutputs`` model. :meth:`Prompt.response_format` returns the structured form
  (``structured=True``) or JSON mode (``structured=False``); capability detection is the HTTP
  client's job.
* **Empty replies.** DSPy raises "The LM returned an empty or null response." before parsing;
  :meth:`Prompt.parse` does the same for ``""``.
* **Errors DSPy does not type.** Where DSPy's ``parse_value`` leaks a raw ``TypeError`` or
  ``RecursionError`` (e.g. ``ast.literal_eval`` of ``{[]: 1}``), we raise :class:`LMParseError`.
* **Not reproduced** (unreachable with stepbridge's closed type set): custom ``dspy.Type`` fields
  (images, tools, history, citations, native reasoning), enum fields, field constraints, and the
  legacy custom-type marker expansion of user messages.

``json_repair`` (a DSPy dependency) is imported lazily and only for replies that are not valid
JSON, where DSPy's leniency depends on its exact repair rules.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import re
import textwrap
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

import pydantic
from pydantic import TypeAdapter

from .errors import LMParseError
from .signature import FieldSpec, Signature

__all__ = [
    "Prompt",
    "chain_of_thought",
    "default_instructions",
    "format_value",
    "parse_value",
    "prompt_for",
    "to_dspy_signature",
]

AdapterName = Literal["chat", "json"]

# DSPy matches this at the start of the *stripped* line.
_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
_INCOMPLETE_PREFIX = "This is an example of the task, though some input or output fields are not supplied."
_MISSING_INCOMPLETE = "Not supplied for this particular example. "
_MISSING_COMPLETE = "Not supplied for this conversation history message. "
_STRUCTURE_INTRO = (
    "All interactions will be structured in the following way, with the appropriate values filled in."
)


# ------------------------------------------------------------------------------------------------
# Annotations: names, type notes, schemas (dspy/adapters/utils.py)
# ------------------------------------------------------------------------------------------------
def _annotation_name(annotation: Any) -> str:
    """``get_annotation_name``: how DSPy spells a type in prompts (``Union[int, NoneType]``)."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is types.UnionType:
        origin = Union
    if origin is None:
        if hasattr(annotation, "__name__"):
            return str(annotation.__name__)
        return str(annotation)
    if origin is Literal:
        args_str = ", ".join(
            _quoted_literal(a) if isinstance(a, str) else _annotation_name(a) for a in args
        )
    else:
        args_str = ", ".join(_annotation_name(a) for a in args)
    return f"{_annotation_name(origin)}[{args_str}]"


def _quoted_literal(s: str) -> str:
    has_single, has_double = "'" in s, '"' in s
    if has_single and not has_double:
        return f'"{s}"'
    if has_double and not has_single:
        return f"'{s}'"
    if has_single and has_double:
        escaped = s.replace("'", "\\'")
        return f"'{escaped}'"
    return f"'{s}'"


def _move_type_to_front(d: Any) -> Any:
    if isinstance(d, Mapping):
        items = sorted(d.items(), key=lambda it: (it[0] != "type", it[0]))
        return {k: _move_type_to_front(v) for k, v in items}
    if isinstance(d, list):
        return [_move_type_to_front(item) for item in d]
    return d


def _output_type_note(name: str, annotation: Any) -> str:
    """``translate_field_type`` for an output field: ``{name}`` plus the type note."""
    if annotation is str:
        desc = ""
    elif annotation is bool:
        desc = "must be True or False"
    elif annotation in (int, float):
        desc = f"must be a single {annotation.__name__} value"
    elif get_origin(annotation) is Literal:
        choices = "; ".join(str(x) for x in get_args(annotation))
        desc = f"must exactly match (no extra characters) one of: {choices}"
    else:
        schema = _move_type_to_front(TypeAdapter(annotation).json_schema())
        desc = f"must adhere to the JSON schema: {json.dumps(schema, ensure_ascii=False)}"
    note = (" " * 8) + f"# note: the value you produce {desc}" if desc else ""
    return f"{{{name}}}{note}"


def _allows_none(annotation: Any) -> bool:
    if annotation is None or annotation is type(None):
        return True
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_allows_none(a) for a in get_args(annotation))
    return False


def default_instructions(signature: Signature) -> str:
    """DSPy's instructions for a signature that has none."""
    inputs = ", ".join(f"`{name}`" for name in signature.inputs)
    outputs = ", ".join(f"`{name}`" for name in signature.outputs)
    return f"Given the fields {inputs}, produce the fields {outputs}."


def _instructions(signature: Signature) -> str:
    if not signature.instructions:  # DSPy treats "" like no instructions
        return default_instructions(signature)
    return inspect.cleandoc(signature.instructions)


# ------------------------------------------------------------------------------------------------
# Values -> text (format_field_value)
# ------------------------------------------------------------------------------------------------
_dump_adapters: dict[type, TypeAdapter[Any]] = {}


def _is_plain(value: Any) -> bool:
    """JSON-shaped data that pydantic's ``dump_python(mode="json")`` returns unchanged.

    Non-finite floats are not: pydantic turns them into ``None`` inside containers.
    """
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return True
    if t is float:
        return math.isfinite(value)
    if t is list:
        return all(_is_plain(v) for v in value)
    if t is dict:
        return all(type(k) is str and _is_plain(v) for k, v in value.items())
    return False


def _jsonable(value: Any) -> Any:
    """``serialize_for_json``, with a fast path for plain JSON data."""
    if type(value) is float or _is_plain(value):  # a bare float (even inf/nan) is kept as is
        return value
    try:
        adapter = _dump_adapters.get(type(value))
        if adapter is None:
            adapter = TypeAdapter(type(value))
            if len(_dump_adapters) < 512:
                _dump_adapters[type(value)] = adapter
        return adapter.dump_python(value, mode="json", fallback=str)
    except Exception:
        return str(value)


def _format_blob(blob: Any) -> str:
    if "\n" not in blob and "«" not in blob and "»" not in blob:
        return f"«{blob}»"
    modified = blob.replace("\n", "\n    ")
    return f"«««\n    {modified}\n»»»"


def format_value(value: Any, str_field: bool) -> str:
    """How DSPy renders a field value; ``str_field`` when the field's type is ``str``."""
    if type(value) is str:
        return value
    if isinstance(value, list) and str_field:
        if len(value) == 0:
            return "N/A"
        if len(value) == 1:
            return _format_blob(value[0])
        return "\n".join(f"[{i + 1}] {_format_blob(v)}" for i, v in enumerate(value))
    jsonable = _jsonable(value)
    if isinstance(jsonable, dict | list):
        return json.dumps(jsonable, ensure_ascii=False)
    return str(jsonable)


# ------------------------------------------------------------------------------------------------
# Text -> values (parse_value)
# ------------------------------------------------------------------------------------------------
def _json_repair_loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError, ValueError):
        pass
    import json_repair  # DSPy's exact leniency; only reached for invalid JSON

    return json_repair.loads(text, skip_json_loads=True)


class _OutField:
    __slots__ = ("adapter", "allowed", "annotation", "is_literal", "is_str", "name", "optional_str")

    def __init__(self, name: str, spec: FieldSpec):
        self.name = name
        self.annotation: Any = spec.type_expr.annotation()
        self.is_str = self.annotation is str
        self.is_literal = get_origin(self.annotation) is Literal
        self.allowed: tuple[Any, ...] = get_args(self.annotation) if self.is_literal else ()
        args = get_args(self.annotation)
        self.optional_str = (
            get_origin(self.annotation) in (Union, types.UnionType) and type(None) in args and str in args
        )
        self.adapter: TypeAdapter[Any] | None = None if self.is_str else TypeAdapter(self.annotation)


def _parse_field(value: Any, field: _OutField) -> Any:
    """``dspy.adapters.utils.parse_value`` for one output field (raises ValueError)."""
    if field.is_str:
        return str(value)
    assert field.adapter is not None
    if field.is_literal:
        allowed = field.allowed
        if value in allowed:
            return value
        if isinstance(value, str):
            v = value.strip()
            if v.startswith(("Literal[", "str[")) and v.endswith("]"):
                v = v[v.find("[") + 1 : -1]
            if len(v) > 1 and v[0] == v[-1] and v[0] in "\"'":
                v = v[1:-1]
            if v in allowed:
                return v
            value = v
    if not isinstance(value, str):
        return field.adapter.validate_python(value)
    if field.optional_str:
        return field.adapter.validate_python(value)
    candidate = _json_repair_loads(value)
    if candidate == "" and value != "":
        try:
            candidate = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            candidate = value
    return field.adapter.validate_python(candidate)


def parse_value(value: Any, type_str: str) -> Any:
    """Convert an LM value to a field type (``"int"``, ``"list[str]"``, ...) as DSPy does."""
    return _parse_field(value, _OutField("value", FieldSpec(type=type_str)))


def _outermost_json_object(text: str) -> str | None:
    """The leftmost balanced ``{...}`` (DSPy's recursive regex ``\\{(?:[^{}]|(?R))*\\}``)."""
    stack: list[int] = []
    best: tuple[int, int] | None = None
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            start = stack.pop()
            if best is None or start < best[0]:
                best = (start, i)
    return None if best is None else text[best[0] : best[1] + 1]


# ------------------------------------------------------------------------------------------------
# The compiled prompt
# ------------------------------------------------------------------------------------------------
class Prompt:
    """A signature + demos compiled to DSPy's chat or JSON format; build once, call many times."""

    __slots__ = (
        "_fallback",
        "_in_fields",
        "_out_fields",
        "_out_names",
        "_prefix",
        "_requirements",
        "adapter",
        "demos",
        "signature",
        "system",
    )

    def __init__(self, signature: Signature, demos: Iterable[Mapping[str, Any]] = (),
                 adapter: AdapterName = "chat"):
        if adapter not in ("chat", "json"):
            raise ValueError(f"unknown adapter {adapter!r} (use 'chat' or 'json')")
        self.signature = signature
        self.adapter: AdapterName = adapter
        self.demos: list[dict[str, Any]] = [dict(d) for d in demos]
        # (name, "[[ ## name ## ]]\n", is str field)
        self._in_fields: list[tuple[str, str, bool]] = [
            (name, f"[[ ## {name} ## ]]\n", spec.type_expr.kind == "str")
            for name, spec in signature.inputs.items()
        ]
        self._out_fields: dict[str, _OutField] = {n: _OutField(n, s) for n, s in signature.outputs.items()}
        self._out_names = tuple(signature.outputs)
        self._fallback: Prompt | None = None
        self.system = self._system_message()
        self._requirements = self._output_requirements()
        prefix: list[dict[str, str]] = [{"role": "system", "content": self.system}]
        prefix.extend(self._demo_messages())
        self._prefix: tuple[dict[str, str], ...] = tuple(prefix)

    def __repr__(self) -> str:
        fields = f"{list(self.signature.inputs)} -> {list(self._out_names)}"
        return f"Prompt({self.adapter}, {fields}, demos={len(self.demos)})"

    # -- system message --------------------------------------------------------------------------
    def _system_message(self) -> str:
        sig = self.signature
        description = (
            f"Your input fields are:\n{self._describe(sig.inputs)}\n"
            f"Your output fields are:\n{self._describe(sig.outputs)}"
        )
        in_struct = "\n\n".join(f"[[ ## {name} ## ]]\n{{{name}}}" for name in sig.inputs).strip()
        notes = {f.name: _output_type_note(f.name, f.annotation) for f in self._out_fields.values()}
        if self.adapter == "chat":
            out_struct = "\n\n".join(f"[[ ## {name} ## ]]\n{note}" for name, note in notes.items()).strip()
            parts = [_STRUCTURE_INTRO, in_struct, out_struct, "[[ ## completed ## ]]\n"]
        else:
            parts = [
                _STRUCTURE_INTRO,
                "Inputs will have the following structure:",
                in_struct,
                "Outputs will be a JSON object with the following fields.",
                json.dumps(notes, indent=2, ensure_ascii=False),
            ]
        structure = "\n\n".join(parts).strip()
        instructions = textwrap.dedent(_instructions(sig))
        objective = ("\n" + " " * 8).join(["", *instructions.splitlines()])
        task = f"In adhering to this structure, your objective is: {objective}"
        return f"{description}\n{structure}\n{task}"

    @staticmethod
    def _describe(fields: Mapping[str, FieldSpec]) -> str:
        lines = []
        for idx, (name, spec) in enumerate(fields.items()):
            desc = spec.desc if spec.desc is not None and spec.desc != f"${{{name}}}" else ""
            lines.append(f"{idx + 1}. `{name}` ({_annotation_name(spec.type_expr.annotation())}): {desc}")
        return "\n".join(lines).strip()

    def _output_requirements(self) -> str:
        def type_info(f: _OutField) -> str:
            if f.is_str:
                return ""
            return f" (must be formatted as a valid Python {_annotation_name(f.annotation)})"

        if self.adapter == "chat":
            return (
                "Respond with the corresponding output fields, starting with the field "
                + ", then ".join(f"`[[ ## {f.name} ## ]]`{type_info(f)}" for f in self._out_fields.values())
                + ", and then ending with the marker for `[[ ## completed ## ]]`."
            )
        return (
            "Respond with a JSON object in the following order of fields: "
            + ", then ".join(f"`{f.name}`{type_info(f)}" for f in self._out_fields.values())
            + "."
        )

    # -- demos -----------------------------------------------------------------------------------
    def _demo_messages(self) -> list[dict[str, str]]:
        sig = self.signature
        names = [*sig.inputs, *sig.outputs]
        complete, incomplete = [], []
        for demo in self.demos:
            if all(k in demo and demo[k] is not None for k in names):
                complete.append(demo)
            elif any(k in demo for k in sig.inputs) and any(k in demo for k in sig.outputs):
                incomplete.append(demo)
        messages: list[dict[str, str]] = []
        batches = ((incomplete, _INCOMPLETE_PREFIX, _MISSING_INCOMPLETE), (complete, "", _MISSING_COMPLETE))
        for group, prefix, missing in batches:
            for demo in group:
                messages.append({"role": "user", "content": self._user_content(demo, prefix, False)})
                messages.append({"role": "assistant", "content": self._assistant_content(demo, missing)})
        return messages

    def _user_content(self, inputs: Mapping[str, Any], prefix: str, main: bool) -> str:
        parts = [prefix]
        for name, header, is_str in self._in_fields:
            if name in inputs:
                parts.append(header + format_value(inputs[name], is_str))
        if main:
            parts.append(self._requirements)
        parts.append("")
        return "\n\n".join(parts).strip()

    def _assistant_content(self, outputs: Mapping[str, Any], missing: str) -> str:
        values = {name: outputs.get(name, missing) for name in self._out_names}
        if self.adapter == "json":
            return json.dumps(_jsonable(values), indent=2, ensure_ascii=False)
        body = "\n\n".join(
            f"[[ ## {name} ## ]]\n{format_value(value, self._out_fields[name].is_str)}"
            for name, value in values.items()
        ).strip()
        return body + "\n\n[[ ## completed ## ]]\n"

    # -- per call --------------------------------------------------------------------------------
    def messages(self, inputs: Mapping[str, Any]) -> list[dict[str, str]]:
        """The chat messages DSPy sends for these inputs (fields missing from ``inputs`` are left out)."""
        out = [dict(m) for m in self._prefix]
        out.append({"role": "user", "content": self._user_content(inputs, "", True)})
        return out

    def user_message(self, inputs: Mapping[str, Any]) -> str:
        """Only the content of the final user message."""
        return self._user_content(inputs, "", True)

    def parse(self, text: str | None) -> dict[str, Any]:
        """Parse an LM reply into output values, or raise :class:`LMParseError` where DSPy raises."""
        if not text:
            raise self._error(text or "", "The LM returned an empty or null response.")
        if self.adapter == "chat":
            return self._parse_chat(text)
        return self._parse_json(text)

    def fallback(self) -> Prompt | None:
        """The JSON prompt DSPy's ChatAdapter retries with after a parse error (None for a JSON prompt)."""
        if self.adapter == "json":
            return None
        if self._fallback is None:
            self._fallback = Prompt(self.signature, self.demos, "json")
        return self._fallback

    def response_format(self, structured: bool = True) -> dict[str, Any] | None:
        """The ``response_format`` DSPy's JSONAdapter sends (None for chat).

        ``structured=True``: OpenAI structured outputs (LMs that support response schemas), unless an
        output field is a ``dict``, which DSPy sends in JSON mode. ``structured=False``: JSON mode.
        """
        if self.adapter == "chat":
            return None
        if not structured or any(get_origin(f.annotation) is dict for f in self._out_fields.values()):
            return {"type": "json_object"}
        return _structured_response_format(self._out_fields)

    # -- parsing ---------------------------------------------------------------------------------
    def _error(
        self, text: str, message: str | None = None, parsed: Mapping[str, Any] | None = None
    ) -> LMParseError:
        adapter = "ChatAdapter" if self.adapter == "chat" else "JSONAdapter"
        lines = [message] if message else []
        lines.append(f"Adapter {adapter} failed to parse the LM response.")
        lines.append(f"Expected to find output fields in the LM response: [{', '.join(self._out_names)}]")
        if parsed is not None:
            lines.append(f"Actual output fields parsed from the LM response: [{', '.join(parsed)}]")
        lines.append(f"LM response: {text[:2000]}")
        return LMParseError("\n".join(lines), response=text)

    def _convert(self, name: str, value: Any, text: str) -> Any:
        try:
            return _parse_field(value, self._out_fields[name])
        except (ValueError, TypeError, RecursionError, MemoryError) as exc:
            shown = value if len(str(value)) < 500 else str(value)[:500] + "..."
            raise self._error(
                text, f"Failed to parse field {name} with value {shown!r} from the LM response: {exc}"
            ) from exc

    def _finish(self, fields: dict[str, Any], text: str) -> dict[str, Any]:
        completed: dict[str, Any] = {}
        for name, field in self._out_fields.items():
            if name in fields:
                completed[name] = fields[name]
            elif _allows_none(field.annotation):
                completed[name] = None
        if len(completed) != len(self._out_fields):
            raise self._error(text, parsed=completed)
        return completed

    def _parse_chat(self, text: str) -> dict[str, Any]:
        out = self._out_fields
        raw: dict[str, str] = {}
        header: str | None = None
        lines: list[str] = []

        def close() -> None:
            if header is not None and header in out and header not in raw:
                raw[header] = "\n".join(lines).strip()

        for line in text.splitlines():
            stripped = line.strip()
            match = _HEADER.match(stripped) if stripped.startswith("[[ ## ") else None
            if match:
                close()
                header = match.group(1)
                rest = line[match.end() :].strip()
                lines = [rest] if rest else []
            else:
                lines.append(line)
        close()
        fields = {name: self._convert(name, value, text) for name, value in raw.items()}
        return self._finish(fields, text)

    def _parse_json(self, text: str) -> dict[str, Any]:
        completion = text
        try:
            data = _json_repair_loads(completion)
            if not isinstance(data, dict):
                found = _outermost_json_object(completion)
                if found is not None:
                    completion = found
                    data = _json_repair_loads(completion)
        except (ValueError, RecursionError) as exc:
            raise self._error(text, f"LM response cannot be serialized to a JSON object: {exc}") from exc
        if not isinstance(data, dict):
            raise self._error(text, "LM response cannot be serialized to a JSON object.")
        fields = {k: self._convert(k, v, text) for k, v in data.items() if k in self._out_fields}
        return self._finish(fields, text)




def _structured_response_format(fields: Mapping[str, _OutField]) -> dict[str, Any]:
    """``_get_structured_outputs_response_format`` + the strict schema DSPy's request builder sends."""
    model = pydantic.create_model(  # type: ignore[call-overload]
        "DSPyProgramOutputs",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **{name: (f.annotation, ...) for name, f in fields.items()},
    )
    schema: dict[str, Any] = model.model_json_schema()
    for prop in schema.get("properties", {}).values():
        prop.pop("json_schema_extra", None)
    _enforce_required(schema)
    return {
        "type": "json_schema",
        "json_schema": {"name": "DSPyProgramOutputs", "schema": _strict_json_schema(schema), "strict": True},
    }


def _enforce_required(part: dict[str, Any]) -> None:
    if part.get("type") == "object":
        props = part.get("properties")
        if props is not None:
            part["required"] = list(props.keys())
            part["additionalProperties"] = False
            for sub in props.values():
                if isinstance(sub, dict):
                    _enforce_required(sub)
        else:
            part["properties"] = {}
            part["required"] = []
            part["additionalProperties"] = False
    if part.get("type") == "array" and isinstance(part.get("items"), dict):
        _enforce_required(part["items"])
    for key in ("$defs", "definitions"):
        if key in part:
            for sub in part[key].values():
                _enforce_required(sub)


def _strict_json_schema(schema: Any, root: dict[str, Any] | None = None) -> Any:
    """OpenAI strict-mode shaping, as ``dspy.clients.legacy_requests._strict_json_schema``."""
    if not isinstance(schema, dict):
        return schema
    root = schema if root is None else root
    out = dict(schema)
    for key in ("$defs", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {n: _strict_json_schema(s, root) for n, s in out[key].items()}
    if out.get("type") == "object" and "additionalProperties" not in out:
        out["additionalProperties"] = False
    if isinstance(out.get("properties"), dict):
        out["required"] = list(out["properties"])
        out["properties"] = {n: _strict_json_schema(s, root) for n, s in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _strict_json_schema(out["items"], root)
    if isinstance(out.get("anyOf"), list):
        out["anyOf"] = [_strict_json_schema(item, root) for item in out["anyOf"]]
    if isinstance(out.get("allOf"), list):
        if len(out["allOf"]) == 1:
            out.update(_strict_json_schema(out.pop("allOf")[0], root))
        else:
            out["allOf"] = [_strict_json_schema(item, root) for item in out["allOf"]]
    if "default" in out and out["default"] is None:
        del out["default"]
    ref = out.get("$ref")
    if isinstance(ref, str) and len(out) > 1:
        node: Any = root
        for part in ref.removeprefix("#/").split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            out = {**_strict_json_schema(node, root), **{k: v for k, v in out.items() if k != "$ref"}}
    return out


# ------------------------------------------------------------------------------------------------
# Signatures
# ------------------------------------------------------------------------------------------------
def chain_of_thought(signature: Signature) -> Signature:
    """The signature ``dspy.ChainOfThought`` predicts with: a ``reasoning: str`` output first.

    DSPy keeps the original signature's instructions (its *default* instructions never mention
    ``reasoning``) and gives the field the placeholder description ``${reasoning}``, which prompts
    render as no description at all.
    """
    if "reasoning" in signature.inputs:
        raise ValueError("chain_of_thought: 'reasoning' is already an input field")
    outputs = {"reasoning": signature.outputs.get("reasoning", FieldSpec(type="str"))}
    outputs.update((k, v) for k, v in signature.outputs.items() if k != "reasoning")
    return Signature(instructions=_instructions(signature), inputs=dict(signature.inputs), outputs=outputs)


def prompt_for(
    signature: Signature,
    *,
    demos: Sequence[Mapping[str, Any]] = (),
    adapter: AdapterName = "chat",
    instructions: str | None = None,
    cot: bool = False,
) -> Prompt:
    """A :class:`Prompt` for a module: optional instructions override, then chain of thought."""
    if instructions is not None:
        signature = signature.model_copy(update={"instructions": instructions})
    if cot:
        signature = chain_of_thought(signature)
    return Prompt(signature, demos, adapter)


def to_dspy_signature(signature: Signature, name: str = "StringSignature") -> Any:
    """The equivalent ``dspy.Signature`` class (imports dspy; never used by the native path)."""
    import dspy

    fields: dict[str, tuple[Any, Any]] = {}
    for group, make in ((signature.inputs, dspy.InputField), (signature.outputs, dspy.OutputField)):
        for field_name, spec in group.items():
            kwargs = {"desc": spec.desc} if spec.desc is not None else {}
            fields[field_name] = (spec.type_expr.annotation(), make(**kwargs))
    return dspy.Signature(fields, signature.instructions, signature_name=name)

