"""DSPy 3.4.1's ChatAdapter, JSONAdapter and XMLAdapter, reproduced byte for byte without importing dspy.

The native executor must send exactly the chat messages that ``dspy.Predict`` /
``dspy.ChainOfThought`` send through ``dspy.ChatAdapter()`` / ``dspy.JSONAdapter()`` /
``dspy.XMLAdapter()`` and parse LM replies exactly as DSPy does. A :class:`Prompt` is compiled once
per module (signature, demos, adapter, declared types): the system message and the demo turns are
built at construction, so a call only formats the user message (and the history turns).
``tests/formats/`` compares everything here with the real DSPy. The shared pieces live beside this
module: :mod:`~stepbridge.field_values` (type names and notes, value rendering and parsing),
:mod:`~stepbridge.xml_format` (the XML adapter's tags) and :mod:`~stepbridge.response_format`.

Decisions
---------
* **Types.** Field types are resolved against the program's declared types
  (:class:`~stepbridge.named_types.TypeSpace`) and rendered through their Python annotations (pydantic
  models, ``Enum`` classes), so the JSON schemas, type names and notes are pydantic's and DSPy's own.
* **Values.** stepbridge moves JSON data. A typed input (declared object, enum, tuple, non-string dict
  keys) is first validated into the Python value a DSPy user passes (a model instance, an ``Enum``
  member, a tuple), then rendered as DSPy renders it (for a model: every field in declared order,
  ``null`` for an unset ``Optional``); a parsed output is returned as JSON data (pydantic's JSON mode).
  Demos and History messages are rendered as written, as DSPy renders demos loaded from a saved state
  and ``dspy.History`` messages (plain dicts).
* **History.** An input of type ``History`` (``{"messages": [...]}``) is expanded as DSPy expands
  ``dspy.History``: after the demos, each message becomes a user turn of its input fields (with the
  output reminder when it has one) and an assistant turn of its output fields (``None`` for a missing
  one); the field stays in the system message and leaves the current user message. Messages whose
  values carry DSPy tool calls are refused (``ValueError``): stepbridge has no native tool calling.
* **Fallback.** DSPy's ChatAdapter (and XMLAdapter, a ChatAdapter), on a parse error, issues a
  *second* LM call through a JSONAdapter (same messages built by the JSON format, plus a
  ``response_format``). This is reproduced but not hidden: :meth:`Prompt.parse` raises
  :class:`LMParseError`, and the executor decides whether to retry with :meth:`Prompt.fallback` (the
  JSON :class:`Prompt` of the same signature and demos; ``None`` for a JSON prompt). DSPy falls back on
  every ``AdapterParseError`` of the first attempt, including an empty reply, and never on a JSON prompt.
* **response_format.** DSPy's JSONAdapter chooses it from the LM's capabilities: nothing when the
  LM does not take ``response_format``; ``{"type": "json_object"}`` when it cannot take a schema or
  an output field is a ``dict``; otherwise OpenAI structured outputs with the strict JSON schema of
  a ``DSPyProgramOutputs`` model. :meth:`Prompt.response_format` returns the structured form
  (``structured=True``) or JSON mode (``structured=False``); capability detection is the HTTP
  client's job.
* **Empty replies.** DSPy raises "The LM returned an empty or null response." before parsing;
  :meth:`Prompt.parse` does the same for ``""``.
* **Errors DSPy does not type.** Where DSPy leaks a raw ``TypeError`` or ``RecursionError`` (e.g.
  ``ast.literal_eval`` of ``{[]: 1}``, an enum field given a JSON list, XML nested deeper than the
  stack), we raise :class:`LMParseError` (and so the chat and XML formats fall back to JSON where DSPy
  would have crashed).
* **Not reproduced** (unreachable with stepbridge's types): custom ``dspy.Type`` fields (images,
  audio, files, tools and tool calls, citations, documents, code, native reasoning) and their native
  LM features, History messages carrying tool calls, field constraints (``Field(gt=...)``; they print a
  ``Constraints:`` line), aliases, ``default_factory`` and model config on object types, enums with
  non-string values, variadic ``tuple[T, ...]``, recursive models, dict keys of non-string Literals
  (DSPy cannot read them back from JSON either), DSPy's TypedDict handling in XML, and the legacy
  custom-type marker expansion of user messages. An ``n > 1`` call is traced as one record per
  completion on both backends; the DSPy adapter can only attribute the combined usage to the first.

``json_repair`` (a DSPy dependency) is imported lazily and only for replies that are not valid
JSON, where DSPy's leniency depends on its exact repair rules.
"""

from __future__ import annotations

import inspect
import json
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from . import xml_format
from .errors import InputValidationError, LMParseError
from .field_values import (
    FieldType,
    allows_none,
    annotation_name,
    format_value,
    json_repair_loads,
    jsonable,
    output_type_note,
)
from .response_format import json_mode, structured_response_format
from .signature import FieldSpec, Signature, TypeExpr

if TYPE_CHECKING:
    from .named_types import TypeSpace

__all__ = [
    "AdapterName",
    "Prompt",
    "chain_of_thought",
    "default_instructions",
    "format_value",
    "parse_value",
    "prompt_for",
    "resolve_fields",
    "to_dspy_signature",
]

AdapterName = Literal["chat", "json", "xml"]
ADAPTERS: tuple[str, ...] = ("chat", "json", "xml")
_ADAPTER_CLASS = {"chat": "ChatAdapter", "json": "JSONAdapter", "xml": "XMLAdapter"}

# DSPy matches this at the start of the *stripped* line.
_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
_INCOMPLETE_PREFIX = "This is an example of the task, though some input or output fields are not supplied."
_MISSING_INCOMPLETE = "Not supplied for this particular example. "
_MISSING_COMPLETE = "Not supplied for this conversation history message. "
_STRUCTURE_INTRO = (
    "All interactions will be structured in the following way, with the appropriate values filled in."
)


def default_instructions(signature: Signature) -> str:
    """DSPy's instructions for a signature that has none."""
    inputs = ", ".join(f"`{name}`" for name in signature.inputs)
    outputs = ", ".join(f"`{name}`" for name in signature.outputs)
    return f"Given the fields {inputs}, produce the fields {outputs}."


def _instructions(signature: Signature) -> str:
    if not signature.instructions:  # DSPy treats "" like no instructions
        return default_instructions(signature)
    return inspect.cleandoc(signature.instructions)


def _section(first: str, lines: list[str], start: int, end: int) -> str:
    """A chat reply's field text: what followed its header on that line, then its lines, stripped."""
    body = "\n".join(lines[start:end])
    return (f"{first}\n{body}" if first else body).strip()


def resolve_fields(fields: Mapping[str, FieldSpec], types: TypeSpace | None) -> dict[str, FieldType]:
    """Each field's :class:`FieldType`, declared type names resolved (``UnknownTypeError`` if unknown)."""
    out: dict[str, FieldType] = {}
    for name, spec in fields.items():
        t: TypeExpr = spec.type_expr
        if types is not None:
            t = types.resolve(t)
        out[name] = FieldType(t)
    return out


def parse_value(value: Any, type_str: str, types: TypeSpace | None = None) -> Any:
    """Convert an LM value to a field type (``"int"``, ``"list[str]"``, ...) as DSPy does; JSON data out."""
    field = resolve_fields({"value": FieldSpec(type=type_str)}, types)["value"]
    return field.to_json(field.parse(value))


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
    """A signature + demos compiled to DSPy's chat, JSON or XML format; build once, call many times."""

    __slots__ = (
        "_fallback",
        "_heads",
        "_history",
        "_in",
        "_json_out",
        "_out",
        "_prefix",
        "_requirements",
        "_text_out",
        "_typed_inputs",
        "adapter",
        "demos",
        "signature",
        "system",
        "types",
    )

    def __init__(self, signature: Signature, demos: Iterable[Mapping[str, Any]] = (),
                 adapter: AdapterName = "chat", types: TypeSpace | None = None):
        if adapter not in ADAPTERS:
            raise ValueError(f"unknown adapter {adapter!r} (use 'chat', 'json' or 'xml')")
        self.signature = signature
        self.adapter: AdapterName = adapter
        self.types = types
        self.demos: list[dict[str, Any]] = [dict(d) for d in demos]
        self._in = resolve_fields(signature.inputs, types)
        self._out = resolve_fields(signature.outputs, types)
        self._history = next((n for n, f in self._in.items() if f.expr.kind == "history"), None)
        self._typed_inputs = tuple(n for n, f in self._in.items() if f.converted)
        # outputs that are text as parsed (str fields) and JSON as they are (nothing converted): most
        # signatures, whose replies then skip the per-field conversions
        self._text_out = all(f.is_str for f in self._out.values())
        self._json_out = not any(f.converted for f in self._out.values())
        self._fallback: Prompt | None = None
        self.system = self._system_message()
        self._requirements = self._output_requirements()
        # the main user message's field headers (chat and JSON): (name, header, is_str) per input field
        self._heads = tuple((n, f"[[ ## {n} ## ]]\n", f.is_str) for n, f in self._in.items())
        prefix: list[dict[str, str]] = [{"role": "system", "content": self.system}]
        prefix.extend(self._demo_messages())
        self._prefix: tuple[dict[str, str], ...] = tuple(prefix)

    def __repr__(self) -> str:
        fields = f"{list(self._in)} -> {list(self._out)}"
        return f"Prompt({self.adapter}, {fields}, demos={len(self.demos)})"

    @property
    def output_types(self) -> dict[str, FieldType]:
        return dict(self._out)

    @property
    def input_types(self) -> dict[str, FieldType]:
        return dict(self._in)

    # -- system message --------------------------------------------------------------------------
    def _system_message(self) -> str:
        description = (
            f"Your input fields are:\n{self._describe(self.signature.inputs, self._in)}\n"
            f"Your output fields are:\n{self._describe(self.signature.outputs, self._out)}"
        )
        if self.adapter == "xml":
            structure = xml_format.field_structure(self._in, self._out)
        else:
            in_struct = "\n\n".join(f"[[ ## {name} ## ]]\n{{{name}}}" for name in self._in).strip()
            notes = {name: output_type_note(name, f.annotation) for name, f in self._out.items()}
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
        instructions = textwrap.dedent(_instructions(self.signature))
        objective = ("\n" + " " * 8).join(["", *instructions.splitlines()])
        task = f"In adhering to this structure, your objective is: {objective}"
        return f"{description}\n{structure}\n{task}"

    @staticmethod
    def _describe(specs: Mapping[str, FieldSpec], fields: Mapping[str, FieldType] | None = None) -> str:
        """``get_field_description_string``: ``1. `name` (type): desc`` per field (and its constraints)."""
        if fields is None:
            fields = resolve_fields(specs, None)
        lines = []
        for idx, (name, spec) in enumerate(specs.items()):
            desc = spec.desc if spec.desc is not None and spec.desc != f"${{{name}}}" else ""
            constraints = f"\nConstraints: {spec.constraints}" if spec.constraints else ""
            lines.append(f"{idx + 1}. `{name}` ({annotation_name(fields[name].annotation)}): {desc}{constraints}")
        return "\n".join(lines).strip()

    def _output_requirements(self) -> str:
        if self.adapter == "xml":
            return xml_format.output_requirements(self._out)

        def type_info(f: FieldType) -> str:
            if f.is_str:
                return ""
            return f" (must be formatted as a valid Python {annotation_name(f.annotation)})"

        if self.adapter == "chat":
            return (
                "Respond with the corresponding output fields, starting with the field "
                + ", then ".join(f"`[[ ## {n} ## ]]`{type_info(f)}" for n, f in self._out.items())
                + ", and then ending with the marker for `[[ ## completed ## ]]`."
            )
        return (
            "Respond with a JSON object in the following order of fields: "
            + ", then ".join(f"`{n}`{type_info(f)}" for n, f in self._out.items())
            + "."
        )

    # -- demos -----------------------------------------------------------------------------------
    def _demo_messages(self) -> list[dict[str, str]]:
        names = [*self._in, *self._out]
        complete, incomplete = [], []
        for demo in self.demos:
            if all(k in demo and demo[k] is not None for k in names):
                complete.append(demo)
            elif any(k in demo for k in self._in) and any(k in demo for k in self._out):
                incomplete.append(demo)
        messages: list[dict[str, str]] = []
        batches = ((incomplete, _INCOMPLETE_PREFIX, _MISSING_INCOMPLETE), (complete, "", _MISSING_COMPLETE))
        for group, prefix, missing in batches:
            for demo in group:
                messages.append({"role": "user", "content": self._user_content(self._in, demo, prefix, False)})
                messages.append({"role": "assistant", "content": self._assistant_content(demo, missing)})
        return messages

    def _user_content(self, fields: Mapping[str, FieldType], inputs: Mapping[str, Any], prefix: str,
                      main: bool) -> str:
        if self.adapter == "xml":
            present = {n: inputs[n] for n in fields if n in inputs}
            parts = [prefix, xml_format.fields_with_values(fields, present, False)]
        else:
            parts = [prefix]
            for name, field in fields.items():
                if name in inputs:
                    value = inputs[name]
                    parts.append(f"[[ ## {name} ## ]]\n"
                                 + (value if type(value) is str else format_value(value, field.is_str)))
        if main:
            parts.append(self._requirements)
        parts.append("")
        return "\n\n".join(parts).strip()

    def _main_content(self, inputs: Mapping[str, Any]) -> str:
        """``_user_content(self._in, inputs, "", True)`` for chat and JSON, per call: the same text without
        the empty first and last parts its ``strip()`` removes again (fields start with ``[[``, the
        requirements end with ``.``)."""
        parts = []
        for name, head, is_str in self._heads:
            if name in inputs:
                value = inputs[name]
                parts.append(head + (value if type(value) is str else format_value(value, is_str)))
        parts.append(self._requirements)
        return "\n\n".join(parts)

    def _assistant_content(self, outputs: Mapping[str, Any], missing: str | None) -> str:
        values = {name: outputs.get(name, missing) for name in self._out}
        if self.adapter == "json":
            return json.dumps(jsonable(values), indent=2, ensure_ascii=False)
        if self.adapter == "xml":
            return xml_format.fields_with_values(self._out, values, True)
        body = "\n\n".join(
            f"[[ ## {name} ## ]]\n{format_value(value, self._out[name].is_str)}" for name, value in values.items()
        ).strip()
        return body + "\n\n[[ ## completed ## ]]\n"

    # -- history ---------------------------------------------------------------------------------
    def _history_messages(self, value: Any, fields: Mapping[str, FieldType]) -> list[dict[str, str]]:
        from .named_types import History

        try:
            history = History.model_validate(value)
        except ValueError as exc:
            raise InputValidationError(f"input {self._history!r} is not a History ({{\"messages\": [...]}}): "
                                       f"{str(exc).splitlines()[0]}", field=self._history) from None
        messages: list[dict[str, str]] = []
        for message in history.messages:
            if any(isinstance(v, dict) and "tool_calls" in v for v in message.values()):
                raise InputValidationError(f"input {self._history!r}: history messages with DSPy tool calls "
                                           "are not supported", field=self._history)
            user = self._user_content(fields, message, "", any(name in message for name in fields))
            if user:
                messages.append({"role": "user", "content": user})
            assistant = self._assistant_content(message, None)
            if assistant:
                messages.append({"role": "assistant", "content": assistant})
        return messages

    # -- per call --------------------------------------------------------------------------------
    def typed_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Inputs with typed fields as the Python values a DSPy user passes (model instances, members)."""
        if not self._typed_inputs:
            return dict(inputs)
        out = dict(inputs)
        for name in self._typed_inputs:
            if name in out:
                field = self._in[name]
                try:
                    out[name] = field.to_python(out[name])
                except ValueError as exc:
                    detail = str(exc).splitlines()
                    raise InputValidationError(
                        f"input {name!r} is not a valid {field.expr}: {detail[-1] if detail else exc}",
                        field=name) from None
        return out

    def messages(self, inputs: Mapping[str, Any]) -> list[dict[str, str]]:
        """The chat messages DSPy sends for these inputs (fields missing from ``inputs`` are left out)."""
        out = list(map(dict, self._prefix))
        values = self.typed_inputs(inputs) if self._typed_inputs else inputs  # read, never changed, here
        if self._history is None:
            out.append({"role": "user", "content": self._main_content(values) if self.adapter != "xml"
                        else self._user_content(self._in, values, "", True)})
            return out
        rest = {n: f for n, f in self._in.items() if n != self._history}
        if self._history in values:
            out.extend(self._history_messages(values[self._history], rest))
        content = self._user_content(rest, values, "", True)
        if content:
            out.append({"role": "user", "content": content})
        return out

    def user_message(self, inputs: Mapping[str, Any]) -> str:
        """Only the content of the final user message."""
        return self.messages(inputs)[-1]["content"]

    def parse(self, text: str | None) -> dict[str, Any]:
        """Parse an LM reply into output values (JSON data), or raise :class:`LMParseError` where DSPy raises."""
        if not text:
            raise self._error(text or "", "The LM returned an empty or null response.")
        if self.adapter == "chat":
            fields = self._parse_chat(text)
        elif self.adapter == "json":
            fields = self._parse_json(text)
        else:
            fields = self._parse_xml(text)
        if self._json_out:
            return fields
        return {name: self._out[name].to_json(value) for name, value in fields.items()}

    def fallback(self) -> Prompt | None:
        """The JSON prompt DSPy's ChatAdapter/XMLAdapter retries with after a parse error (None for JSON)."""
        if self.adapter == "json":
            return None
        if self._fallback is None:
            self._fallback = Prompt(self.signature, self.demos, "json", self.types)
        return self._fallback

    def response_format(self, structured: bool = True) -> dict[str, Any] | None:
        """The ``response_format`` DSPy's JSONAdapter sends (None for chat and XML).

        ``structured=True``: OpenAI structured outputs (LMs that support response schemas), unless an
        output field is a ``dict``, which DSPy sends in JSON mode. ``structured=False``: JSON mode.
        """
        if self.adapter != "json":
            return None
        annotations = {name: f.annotation for name, f in self._out.items()}
        if not structured or json_mode(annotations):
            return {"type": "json_object"}
        return structured_response_format(annotations)

    # -- parsing ---------------------------------------------------------------------------------
    def _error(
        self, text: str, message: str | None = None, parsed: Mapping[str, Any] | None = None
    ) -> LMParseError:
        lines = [message] if message else []
        lines.append(f"Adapter {_ADAPTER_CLASS[self.adapter]} failed to parse the LM response.")
        lines.append(f"Expected to find output fields in the LM response: [{', '.join(self._out)}]")
        if parsed is not None:
            lines.append(f"Actual output fields parsed from the LM response: [{', '.join(parsed)}]")
        lines.append(f"LM response: {text[:2000]}")
        return LMParseError("\n".join(lines), response=text)

    def _convert(self, name: str, value: Any, text: str) -> Any:
        try:
            return self._out[name].parse(value)
        except (ValueError, TypeError, RecursionError, MemoryError) as exc:
            shown = value if len(str(value)) < 500 else str(value)[:500] + "..."
            raise self._error(
                text, f"Failed to parse field {name} with value {shown!r} from the LM response: {exc}"
            ) from exc

    def _finish(self, fields: dict[str, Any], text: str) -> dict[str, Any]:
        completed: dict[str, Any] = {}
        for name, field in self._out.items():
            if name in fields:
                completed[name] = fields[name]
            elif allows_none(field.annotation):
                completed[name] = None
        if len(completed) != len(self._out):
            raise self._error(text, parsed=completed)
        return completed

    def _parse_chat(self, text: str) -> dict[str, Any]:
        out = self._out
        raw: dict[str, str] = {}
        header: str | None = None
        lines = text.splitlines()
        first = ""  # the text after the header on its own line
        start = 0  # the section's first line after its header
        # only lines that may be headers are looked at one by one; a section is a slice of the others
        for i in [i for i, line in enumerate(lines) if "[[ ## " in line]:
            line = lines[i]
            match = _HEADER.match(line.strip())
            if match is None:
                continue
            if header is not None and header in out and header not in raw:  # the section it closes
                raw[header] = _section(first, lines, start, i)
            header = match.group(1)
            first = line[match.end() :].strip()
            start = i + 1
        if header is not None and header in out and header not in raw:
            raw[header] = _section(first, lines, start, len(lines))
        if self._text_out:  # str fields parse to the text itself
            return self._finish(raw, text)
        fields = {name: self._convert(name, value, text) for name, value in raw.items()}
        return self._finish(fields, text)

    def _parse_json(self, text: str) -> dict[str, Any]:
        completion = text
        try:
            data = json_repair_loads(completion)
            if not isinstance(data, dict):
                found = _outermost_json_object(completion)
                if found is not None:
                    completion = found
                    data = json_repair_loads(completion)
        except (ValueError, RecursionError) as exc:
            raise self._error(text, f"LM response cannot be serialized to a JSON object: {exc}") from exc
        if not isinstance(data, dict):
            raise self._error(text, "LM response cannot be serialized to a JSON object.")
        fields = {k: self._convert(k, v, text) for k, v in data.items() if k in self._out}
        return self._finish(fields, text)

    def _parse_xml(self, text: str) -> dict[str, Any]:
        try:
            fields = xml_format.parse_fields(text, self._out)
        except xml_format.XMLParseError as exc:
            raise self._error(text, str(exc)) from exc
        except (TypeError, RecursionError, MemoryError) as exc:
            raise self._error(text, f"Failed to parse XML: {type(exc).__name__}: {exc}") from exc
        return self._finish(fields, text)


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
    types: TypeSpace | None = None,
) -> Prompt:
    """A :class:`Prompt` for a module: optional instructions override, then chain of thought."""
    if instructions is not None:
        signature = signature.model_copy(update={"instructions": instructions})
    if cot:
        signature = chain_of_thought(signature)
    return Prompt(signature, demos, adapter, types)


def dspy_annotation(field: FieldType) -> Any:
    """The annotation a DSPy signature holds for a field (``dspy.History`` for History; imports dspy)."""
    if field.expr.kind == "history":
        import dspy

        return dspy.History
    return field.annotation


def to_dspy_signature(signature: Signature, name: str = "StringSignature", types: TypeSpace | None = None) -> Any:
    """The equivalent ``dspy.Signature`` class (imports dspy; never used by the native path)."""
    import dspy

    fields: dict[str, tuple[Any, Any]] = {}
    for group, make in ((signature.inputs, dspy.InputField), (signature.outputs, dspy.OutputField)):
        resolved = resolve_fields(group, types)
        for field_name, spec in group.items():
            kwargs = {"desc": spec.desc} if spec.desc is not None else {}
            info = make(**kwargs)
            if spec.constraints:  # the text DSPy derives from ge/le/...: kept as text, as DSPy keeps it
                info.json_schema_extra["constraints"] = spec.constraints
            fields[field_name] = (dspy_annotation(resolved[field_name]), info)
    return dspy.Signature(fields, signature.instructions, signature_name=name)
