"""The reference LM: a deterministic, OpenAI-compatible chat-completions server (design section 6).

It exists so that every backend, test and benchmark has an LM that needs no network, answers the
same request the same way forever, and speaks the exact prompt format DSPy's ChatAdapter and
JSONAdapter build. Answers are *extracted from the inputs* (the context sentence that best
overlaps the question, the Literal option mentioned in the text, numbers found in the inputs...)
so example programs give sensible outputs.

Pieces:

* :class:`ReferenceModel` — the deterministic model, callable in-process (``model.complete``).
* :func:`create_app` — a Starlette app serving ``POST /v1/chat/completions`` and ``GET /v1/models``
  (also without ``/v1``), with fault injection by model name, a request log and cassettes.
* :func:`running_server` / :func:`running_server_process` — run it on a free loopback port for
  tests and benchmarks; :func:`serve` — the blocking runner behind ``stepbridge lm serve``.

Fault injection (any ``/``-separated segment of the request's model name, or the server-wide
``fault`` option): ``error-<status>`` (``error-429`` carries ``Retry-After``), ``garbage``
(text no adapter can parse), ``empty``, ``slow-<ms>``, ``flaky-<n>`` (the first ``n`` attempts of
each distinct request get a 503, then it succeeds), ``ratelimit-<n>`` (the same with 429 and
``Retry-After: 0``). Example: ``dspy.LM("openai/reference/error-500",
api_base=url)``.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import contextlib
import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

__all__ = [
    "DEFAULT_PORT",
    "VOLATILE_FIELDS",
    "Cassette",
    "CassetteMiss",
    "Faults",
    "PromptSpec",
    "ReferenceModel",
    "RequestLog",
    "ServerURL",
    "create_app",
    "parse_faults",
    "parse_system_message",
    "request_hash",
    "running_server",
    "running_server_process",
    "serve",
]

#: The port ``stepbridge lm serve`` listens on when none is given.
DEFAULT_PORT = 8765
#: Name the server reports in ``/v1/models`` and answers with when a request names none.
MODEL_NAME = "reference"
#: Request-body fields that do not change what an LM answers; left out of the cassette hash.
VOLATILE_FIELDS = frozenset(
    {"stream", "stream_options", "user", "metadata", "timeout", "request_timeout", "num_retries",
     "extra_headers", "headers", "api_key", "api_base", "base_url", "rollout_id", "store"}
)

try:  # orjson is much faster for the large prompt bodies; plain json is the fallback.
    import orjson as _orjson

    def _dumps(obj: Any) -> bytes:
        return _orjson.dumps(obj)

    def _loads(data: bytes | str) -> Any:
        return _orjson.loads(data)
except ImportError:  # pragma: no cover - orjson ships with litellm/dspy
    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()

    def _loads(data: bytes | str) -> Any:
        return json.loads(data)


# ================================================================================================
# Prompt parsing: what DSPy's ChatAdapter / JSONAdapter put in the system and user messages
# ================================================================================================

_INPUT_HDR = "Your input fields are:\n"
_OUTPUT_HDR = "\nYour output fields are:\n"
_STRUCT_HDR = "\nAll interactions will be structured in the following way, with the appropriate values filled in."
_TASK_HDR = "\nIn adhering to this structure, your objective is: "
_JSON_OUTPUTS_HDR = "Outputs will be a JSON object with the following fields.\n\n"
_NOTE = "        # note: the value you produce "
_CHAT_REMINDER = "\n\nRespond with the corresponding output fields, starting with the field "
_JSON_REMINDER = "\n\nRespond with a JSON object in the following order of fields: "
_FIELD_LINE = re.compile(r"^\d+\. `([^`\n]+)` \(", re.MULTILINE)


@dataclass(frozen=True)
class FieldSpec:
    """One input or output field of the prompt: its name and a JSON schema of its type."""

    name: str
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class PromptSpec:
    """The signature a DSPy-formatted system message describes, and which format it asks for."""

    format: str  # "chat" | "json"
    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]


def _scan_annotation(text: str, start: int) -> int:
    """Index of the ``)`` closing the annotation that starts at ``start`` (quote and bracket aware)."""
    depth = 0
    quote = ""
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in "[(":
            depth += 1
        elif c in "])":
            if depth == 0:
                return i
            depth -= 1
        elif c == "\n":
            return -1
        i += 1
    return -1


def _field_list(section: str) -> list[tuple[str, str]]:
    """``[(name, annotation text)]`` from a "1. `name` (type): desc" list."""
    out: list[tuple[str, str]] = []
    for m in _FIELD_LINE.finditer(section):
        end = _scan_annotation(section, m.end())
        if end < 0:
            continue
        out.append((m.group(1), section[m.end():end]))
    return out


class _UnknownType(Exception):
    pass


_SCALAR_SCHEMAS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
    "bool": {"type": "boolean"}, "NoneType": {"type": "null"}, "None": {"type": "null"},
    "Any": {}, "Reasoning": {"type": "string"}, "object": {},
}
_LIST_NAMES = {"list", "List", "set", "Set", "frozenset", "tuple", "Tuple", "Sequence"}


def _annotation_schema(node: ast.expr) -> dict[str, Any]:
    """A JSON schema for a type annotation *text* DSPy printed; parsed with ``ast``, never evaluated."""
    if isinstance(node, ast.Constant) and node.value is None:
        return {"type": "null"}
    if isinstance(node, ast.Attribute):
        node = ast.Name(id=node.attr)
    if isinstance(node, ast.Name):
        if node.id in _SCALAR_SCHEMAS:
            return dict(_SCALAR_SCHEMAS[node.id])
        if node.id in _LIST_NAMES:
            return {"type": "array", "items": {}}
        if node.id in ("dict", "Dict"):
            return {"type": "object"}
        raise _UnknownType(node.id)
    if isinstance(node, ast.Subscript):
        base = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Literal":
            return {"enum": [ast.literal_eval(a) for a in args]}
        if base in _LIST_NAMES:
            return {"type": "array", "items": _annotation_schema(args[0])}
        if base in ("dict", "Dict") and len(args) == 2:
            return {"type": "object", "additionalProperties": _annotation_schema(args[1])}
        if base == "Optional":
            return {"anyOf": [_annotation_schema(args[0]), {"type": "null"}]}
        if base == "Union":
            return {"anyOf": [_annotation_schema(a) for a in args]}
    raise _UnknownType(ast.dump(node))


def _note_schema(note: str) -> dict[str, Any] | None:
    """The schema a ``# note: the value you produce ...`` comment states, when it states one."""
    if note.startswith("must adhere to the JSON schema: "):
        with contextlib.suppress(ValueError):
            value, _ = json.JSONDecoder().raw_decode(note, len("must adhere to the JSON schema: "))
            if isinstance(value, dict):
                return value
    elif note.startswith("must be one of: "):  # an Enum: its values, "; "-joined
        return {"enum": note[len("must be one of: "):].split("; ")}
    elif note.startswith("must be True or False"):
        return {"type": "boolean"}
    elif note.startswith("must be a single int value"):
        return {"type": "integer"}
    elif note.startswith("must be a single float value"):
        return {"type": "number"}
    return None


def _notes(fmt: str, structure: str, names: Sequence[str]) -> dict[str, str]:
    notes: dict[str, str] = {}
    if fmt == "json":
        start = structure.find(_JSON_OUTPUTS_HDR)
        if start >= 0:
            try:
                obj, _ = json.JSONDecoder().raw_decode(structure, start + len(_JSON_OUTPUTS_HDR))
            except ValueError:
                obj = {}
            if isinstance(obj, dict):
                for name in names:
                    text = obj.get(name)
                    if isinstance(text, str):
                        _, sep, rest = text.partition(_NOTE)
                        if sep:
                            notes[name] = rest
        return notes
    for name in names:
        marker = f"[[ ## {name} ## ]]\n{{{name}}}"
        i = structure.find(marker)
        if i < 0:
            continue
        j = i + len(marker)
        if structure.startswith(_NOTE, j):
            end = structure.find("\n", j)
            notes[name] = structure[j + len(_NOTE): end if end >= 0 else len(structure)]
    return notes


@lru_cache(maxsize=2048)
def parse_system_message(text: str) -> PromptSpec | None:
    """The signature described by a DSPy ChatAdapter/JSONAdapter system message, or None.

    Cached by the message text: a program sends the same system message on every call.
    """
    start = text.find(_INPUT_HDR)
    if start < 0:
        return None
    mid = text.find(_OUTPUT_HDR, start)
    if mid < 0:
        return None
    end = text.find(_STRUCT_HDR, mid)
    if end < 0:
        return None
    task = text.rfind(_TASK_HDR)
    structure = text[end: task if task > end else len(text)]
    fmt = "json" if ("\n" + _JSON_OUTPUTS_HDR) in structure else "chat"
    inputs = _field_list(text[start + len(_INPUT_HDR): mid + 1])
    outputs = _field_list(text[mid + len(_OUTPUT_HDR): end + 1])
    if not outputs:
        return None
    notes = _notes(fmt, structure, [n for n, _ in outputs])

    def schema_for(name: str, annotation: str) -> dict[str, Any]:
        from_note = _note_schema(notes[name]) if name in notes else None
        if from_note is not None and "enum" not in from_note:
            return from_note  # pydantic's own schema: authoritative for nested and custom types
        try:
            return _annotation_schema(ast.parse(annotation.strip(), mode="eval").body)
        except (_UnknownType, SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
            return from_note or {"type": "string"}

    return PromptSpec(
        format=fmt,
        inputs=tuple(FieldSpec(n, {"type": "string"}) for n, _ in inputs),
        outputs=tuple(FieldSpec(n, schema_for(n, a)) for n, a in outputs),
    )


def _input_values(content: str, names: Sequence[str]) -> dict[str, str]:
    """The ``[[ ## name ## ]]`` sections of a user message, for the given input names, in order."""
    found: list[tuple[str, int, int]] = []
    pos = 0
    for name in names:
        header = f"[[ ## {name} ## ]]"
        i = content.find(header + "\n", pos)
        if i < 0:
            i = content.find(header, pos)
            if i < 0 or i + len(header) != len(content.rstrip()):
                continue
        found.append((name, i, i + len(header)))
        pos = i + len(header)
    tail = len(content)
    for reminder in (_CHAT_REMINDER, _JSON_REMINDER):
        k = content.rfind(reminder, found[-1][2] if found else 0)
        if k >= 0:
            tail = min(tail, k)
    values: dict[str, str] = {}
    for idx, (name, _, vstart) in enumerate(found):
        vend = found[idx + 1][1] if idx + 1 < len(found) else tail
        values[name] = content[vstart:max(vstart, vend)].strip()
    return values


# ================================================================================================
# Answer generation
# ================================================================================================

_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]*\w)")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_STOPWORDS = frozenset(
    re.findall(
        r"\S+",
        "a an the of in on at to for from by with and or is are was were be been being what which who whom "
        "whose when where why how do does did this that these those it its as into than then there their "
        "they them he she his her i you your we our me my can could should would will shall may might must "
        "about please tell give find list name",
    )
)
_NEGATIONS = frozenset({"not", "no", "never", "false", "none", "nobody", "nothing", "neither", "nor",
                        "isn", "aren", "wasn", "weren", "doesn", "don", "didn", "cannot", "can't"})
_QUERY_NAMES = ("question", "query", "q", "claim", "statement", "prompt", "task", "request", "topic",
                "input", "text", "sentence", "message", "problem", "instruction")
_CONTEXT_HINTS = ("context", "passage", "document", "docs", "evidence", "snippet", "source", "retriev",
                  "knowledge", "fact", "corpus", "reference")
_REASONING_NAMES = ("reasoning", "rationale", "thought", "explanation", "justification", "analysis")
_QUERY_OUTPUT_HINTS = ("quer", "search")
_MAX_DEPTH = 8


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _content_words(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for w in _words(text):
        if w not in _STOPWORDS and w not in seen:
            seen[w] = None
    return list(seen)


def _strip_blob(text: str) -> str:
    s = text.strip()
    if s.startswith("«««") and s.endswith("»»»"):
        inner = s[3:-3].strip("\n")
        return "\n".join(line[4:] if line.startswith("    ") else line for line in inner.split("\n"))
    if s.startswith("«") and s.endswith("»"):
        return s[1:-1]
    return s


_NUMBERED = re.compile(r"^\[\d+\] ", re.MULTILINE)


def _as_items(raw: str) -> list[str] | None:
    """A list input as DSPy renders it (JSON list, or ``[1] «...»`` lines), else None."""
    s = raw.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            value = json.loads(s)
        except ValueError:
            value = None
        if isinstance(value, list):
            return [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value]
    if s.startswith("[1] "):
        parts = _NUMBERED.split(s)
        return [_strip_blob(p) for p in parts if p.strip()]
    if s.startswith("«") and s.endswith("»"):
        return [_strip_blob(s)]
    return None


def _literal_pattern(option: str) -> re.Pattern[str]:
    return _literal_pattern_cached(option.lower())


@lru_cache(maxsize=4096)
def _literal_pattern_cached(option: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(option) + r"(?!\w)")


def _finite(x: float) -> bool:
    return math.isfinite(x) and abs(x) < 1e15


@dataclass
class _Facts:
    """What the inputs say, pre-digested once per request for every output field."""

    values: dict[str, str]
    query: str
    passages: list[str]
    sentences: list[str]
    numbers: list[float]
    keywords: list[str]
    text: str  # every input value, lowercased
    trajectory: bool

    @classmethod
    def from_values(cls, values: dict[str, str]) -> _Facts:
        passages: list[str] = []
        plain: dict[str, str] = {}
        for name, raw in values.items():
            items = _as_items(raw)
            lname = name.lower()
            if items is not None or any(h in lname for h in _CONTEXT_HINTS):
                passages.extend(i for i in (items if items is not None else [raw]) if i.strip())
                plain[name] = "\n".join(items) if items is not None else raw
            else:
                plain[name] = raw
        query = ""
        for cand in _QUERY_NAMES:
            for name in values:
                if name.lower() == cand:
                    query = plain[name]
                    break
            if query:
                break
        if not query:
            for name, raw in plain.items():
                lname = name.lower()
                if raw and not any(h in lname for h in _CONTEXT_HINTS) and _as_items(values[name]) is None:
                    query = raw
                    break
        sentences = [s.strip() for p in passages for s in _SENTENCE_SPLIT.split(p) if s.strip()]
        numbers: list[float] = []
        for raw in plain.values():
            for m in _NUMBER.finditer(raw):
                x = float(m.group())
                if _finite(x):
                    numbers.append(x)
        text = "\n".join(plain.values())
        return cls(
            values=plain,
            query=query.strip(),
            passages=passages,
            sentences=sentences,
            numbers=numbers,
            keywords=_content_words(query or text),
            text=text.lower(),
            trajectory=any("trajectory" in n.lower() and v.strip() for n, v in values.items()),
        )

    def best_sentence(self) -> tuple[str, int] | None:
        if not self.sentences:
            return None
        q = set(self.keywords)
        words = [q.intersection(_words(s)) for s in self.sentences]
        # rarer question words weigh more (idf-like), so "designed" beats a name every passage repeats
        df: dict[str, int] = {}
        for found in words:
            for w in found:
                df[w] = df.get(w, 0) + 1
        best, best_score, best_weight = self.sentences[0], -1, -1.0
        for s, found in zip(self.sentences, words, strict=True):
            weight = sum(1.0 / df[w] for w in found)
            if weight > best_weight:
                best, best_score, best_weight = s, len(found), weight
        return best, best_score

    def first_sentence(self) -> str:
        source = self.query or next((v for v in self.values.values() if v.strip()), "")
        for s in _SENTENCE_SPLIT.split(source):
            if s.strip():
                return s.strip()
        return "N/A"


class _Generator:
    """Builds a value of a JSON schema from the facts; recursion bounded, never raises on odd schemas."""

    def __init__(self, facts: _Facts, root: Mapping[str, Any]):
        self.facts = facts
        self.root = root

    def value(self, schema: Any, name: str, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH or not isinstance(schema, Mapping):
            return self.text(name) if depth <= _MAX_DEPTH else None
        if "$ref" in schema:
            target = self.resolve(str(schema["$ref"]))
            return self.value(target, name, depth + 1) if target is not None else self.text(name)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
            return self.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            variants = schema.get(key)
            if isinstance(variants, list) and variants:
                usable = [v for v in variants if not (isinstance(v, Mapping) and v.get("type") == "null")]
                return self.value(usable[0], name, depth + 1) if usable else None
        if isinstance(schema.get("allOf"), list) and schema["allOf"]:
            return self.value(schema["allOf"][0], name, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "string" or (kind is None and not ("properties" in schema or "items" in schema)):
            return self.text(name)
        if kind == "boolean":
            return self.boolean()
        if kind == "integer":
            return self.clamp(round(self.number(name)), schema)
        if kind == "number":
            return self.clamp(float(self.number(name)), schema)
        if kind == "null":
            return None
        if kind == "array" or "items" in schema:
            return self.array(schema, name, depth)
        return self.object(schema, name, depth)

    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            return None
        node: Any = self.root
        for part in ref[2:].split("/"):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    # -- scalars ---------------------------------------------------------------------------------
    def text(self, name: str) -> str:
        f = self.facts
        lname = name.lower()
        if name in f.values and f.values[name].strip():
            return f.values[name].strip()
        if any(h in lname for h in _REASONING_NAMES):
            words = ", ".join(f.keywords[:5]) or "the inputs"
            return f"The relevant terms are {words}; the answer follows from the most related input text."
        if any(h in lname for h in _QUERY_OUTPUT_HINTS):
            return f.query or " ".join(f.keywords) or "N/A"
        best = f.best_sentence()
        if best is not None:
            return best[0]
        return f.first_sentence()

    def boolean(self) -> bool:
        f = self.facts
        best = f.best_sentence()
        if best is not None and f.keywords:
            return best[1] >= max(1, (len(f.keywords) + 1) // 2)
        return not any(w in _NEGATIONS for w in _words(f.query or f.text))

    def number(self, name: str) -> float:
        nums = self.facts.numbers
        if not nums:
            return 0
        lname = name.lower()
        if "sum" in lname or "total" in lname:
            result = math.fsum(nums)
        elif "product" in lname:
            result = math.prod(nums)
        elif "max" in lname or "largest" in lname or "highest" in lname:
            result = max(nums)
        elif "min" in lname or "smallest" in lname or "lowest" in lname:
            result = min(nums)
        else:
            result = nums[0]
        return result if _finite(result) else nums[0]

    @staticmethod
    def clamp(x: Any, schema: Mapping[str, Any]) -> Any:
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if isinstance(lo, int | float) and x < lo:
            x = type(x)(lo)
        if isinstance(hi, int | float) and x > hi:
            x = type(x)(hi)
        return x

    def choice(self, options: list[Any]) -> Any:
        f = self.facts
        if f.trajectory and "finish" in options:
            return "finish"
        best, best_score = options[0], 0
        for opt in options:
            needle = str(opt)
            if not needle.strip():
                continue
            score = len(_literal_pattern(needle).findall(f.text))
            if score > best_score:
                best, best_score = opt, score
        if best_score == 0:
            words = set(_words(f.text))
            for opt in options:
                score = len(words.intersection(_content_words(str(opt))))
                if score > best_score:
                    best, best_score = opt, score
        return best

    # -- containers ------------------------------------------------------------------------------
    def array(self, schema: Mapping[str, Any], name: str, depth: int) -> list[Any]:
        f = self.facts
        items = schema.get("items", {})
        if isinstance(items, list):  # tuple-style prefixItems
            return [self.value(s, name, depth + 1) for s in items]
        kind = items.get("type") if isinstance(items, Mapping) else None
        plain = isinstance(items, Mapping) and not ({"enum", "const", "$ref", "anyOf", "oneOf"} & set(items))
        out: list[Any]
        if plain and kind in ("string", None) and not (isinstance(items, Mapping) and "properties" in items):
            lname = name.lower()
            if any(h in lname for h in _QUERY_OUTPUT_HINTS):
                out = list(dict.fromkeys(q for q in (f.query, " ".join(f.keywords)) if q))
            elif f.keywords:
                out = f.keywords[:5]
            else:
                out = f.sentences[:3]
        elif plain and kind == "integer":
            out = [self.clamp(round(x), items) for x in f.numbers[:5]]
        elif plain and kind == "number":
            out = [self.clamp(float(x), items) for x in f.numbers[:5]]
        else:
            out = [self.value(items, name, depth + 1)]
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        if isinstance(hi, int) and len(out) > hi:
            out = out[:hi]
        if isinstance(lo, int):
            while len(out) < min(lo, 64):
                out.append(self.value(items, name, depth + 1))
        return out

    def object(self, schema: Mapping[str, Any], name: str, depth: int) -> dict[str, Any]:
        props = schema.get("properties")
        if isinstance(props, Mapping) and props:
            return {str(k): self.value(v, str(k), depth + 1) for k, v in props.items()}
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping) and extra:
            key = self.facts.keywords[0] if self.facts.keywords else "key"
            return {key: self.value(extra, key, depth + 1)}
        return {}


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text"
        )
    return "" if content is None else str(content)


_MARKER_FIX = re.compile(r"\[\[ ## (\w+) ## \]\]")


def _render_chat(outputs: Sequence[FieldSpec], values: Mapping[str, Any]) -> str:
    parts = []
    for spec in outputs:
        v = values[spec.name]
        if isinstance(v, str):
            text = _MARKER_FIX.sub(r"[ ## \1 ## ]", v)
        elif isinstance(v, bool) or v is None:
            text = str(v)
        else:
            text = json.dumps(v, ensure_ascii=False)
        parts.append(f"[[ ## {spec.name} ## ]]\n{text}")
    return "\n\n".join(parts) + "\n\n[[ ## completed ## ]]\n"


class ReferenceModel:
    """The deterministic model: reads a DSPy-formatted prompt, answers in the requested format.

    ``complete`` is pure (same messages, same answer) and cheap: the system message parse is cached
    by its text and whole answers by (system, last user message, response format).
    """

    def __init__(self, cache_size: int = 4096):
        self._cache: dict[tuple[str, str, str], str] = {}
        self._cache_size = cache_size

    def complete(self, messages: Sequence[Mapping[str, Any]], *, response_format: Any = None) -> str:
        system = ""
        user = ""
        for m in messages:
            role = m.get("role")
            if role in ("system", "developer") and not system:
                system = _message_text(m.get("content"))
            elif role == "user":
                user = _message_text(m.get("content"))
        rf_key = "" if response_format is None else json.dumps(response_format, sort_keys=True, default=str)
        key = (system, user, rf_key)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        answer = self._answer(system, user, response_format)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = answer
        return answer

    __call__ = complete

    def _answer(self, system: str, user: str, response_format: Any) -> str:
        spec = parse_system_message(system) if system else None
        rf_type = response_format.get("type") if isinstance(response_format, Mapping) else None
        if spec is None:
            facts = _Facts.from_values({"input": user})
            schema = _response_schema(response_format)
            if schema is not None:
                return json.dumps(_Generator(facts, schema).value(schema, "output"), ensure_ascii=False)
            if rf_type == "json_object":
                return json.dumps({"answer": facts.first_sentence()}, ensure_ascii=False)
            return facts.first_sentence()
        facts = _Facts.from_values(_input_values(user, [f.name for f in spec.inputs]))
        values: dict[str, Any] = {}
        for out in spec.outputs:
            values[out.name] = _Generator(facts, out.schema).value(out.schema, out.name)
        if spec.format == "json" or rf_type in ("json_object", "json_schema"):
            return json.dumps(values, indent=2, ensure_ascii=False)
        return _render_chat(spec.outputs, values)


def _response_schema(response_format: Any) -> Mapping[str, Any] | None:
    if isinstance(response_format, Mapping) and response_format.get("type") == "json_schema":
        js = response_format.get("json_schema")
        if isinstance(js, Mapping) and isinstance(js.get("schema"), Mapping):
            schema: Mapping[str, Any] = js["schema"]
            return schema
    return None


# ================================================================================================
# Faults, request log, cassettes
# ================================================================================================

GARBAGE_TEXT = "Lorem ipsum dolor sit amet: this reply deliberately ignores the requested format."
_FAULT = re.compile(r"^(error|slow|flaky|ratelimit)-(\d{1,6})$|^(garbage|empty)$")


@dataclass(frozen=True)
class Faults:
    """Faults to inject into one request (from its model name and the server's ``fault`` option)."""

    error: int | None = None
    slow_ms: int = 0
    flaky: int = 0
    ratelimit: int = 0
    garbage: bool = False
    empty: bool = False


@lru_cache(maxsize=1024)
def parse_faults(*names: str | None) -> Faults:
    """Faults named by ``/``-separated segments, e.g. ``reference/error-429`` or ``slow-200/garbage``."""
    error, slow, flaky, ratelimit, garbage, empty = None, 0, 0, 0, False, False
    for name in names:
        for seg in (name or "").split("/"):
            m = _FAULT.match(seg.strip().lower())
            if not m:
                continue
            kind, num, flag = m.group(1), m.group(2), m.group(3)
            if kind == "error" and 100 <= int(num) <= 599:
                error = int(num)
            elif kind == "slow":
                slow = int(num)
            elif kind == "flaky":
                flaky = int(num)
            elif kind == "ratelimit":
                ratelimit = int(num)
            elif flag == "garbage":
                garbage = True
            elif flag == "empty":
                empty = True
    return Faults(error=error, slow_ms=slow, flaky=flaky, ratelimit=ratelimit, garbage=garbage, empty=empty)


class RequestLog:
    """Every completion request body the server received, in order (bounded), optionally mirrored to JSONL.

    Tests read it to compare exactly what different backends sent. Headers (and so API keys) are
    never recorded.
    """

    def __init__(self, limit: int = 100_000, path: str | os.PathLike[str] | None = None):
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
        self._lock = threading.Lock()
        self._seq = 0
        self.path = Path(path) if path is not None else None
        self._file = open(self.path, "ab") if self.path is not None else None  # noqa: SIM115

    def append(self, path: str, body: Any) -> dict[str, Any]:
        with self._lock:
            self._seq += 1
            entry = {"seq": self._seq, "time": time.time(), "path": path, "body": body}
            self._entries.append(entry)
            if self._file is not None:
                self._file.write(_dumps(entry) + b"\n")
                self._file.flush()
        return entry

    def entries(self, since: int = 0) -> list[dict[str, Any]]:
        """Log entries (``seq``, ``time``, ``path``, ``body``) with ``seq > since``."""
        with self._lock:
            return [e for e in self._entries if e["seq"] > since]

    def bodies(self) -> list[Any]:
        """Just the request bodies, oldest first."""
        return [e["body"] for e in self.entries()]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def request_hash(body: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a request body without :data:`VOLATILE_FIELDS` (the cassette key)."""
    stable = {k: v for k, v in body.items() if k not in VOLATILE_FIELDS}
    canonical = json.dumps(stable, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class CassetteMiss(LookupError):
    """A replayed request has no recorded response."""

    def __init__(self, key: str, path: Path):
        super().__init__(f"cassette miss: no recorded response for request hash {key} in {path}")
        self.key = key
        self.path = path


class Cassette:
    """Recorded responses keyed by :func:`request_hash`, stored as JSONL (one ``{hash, request, response}``
    object per line; appending keeps recording crash-safe and diffs readable; the last line for a
    hash wins)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._responses: dict[str, Any] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        self._responses[str(rec["hash"])] = rec["response"]
                    except (ValueError, KeyError, TypeError) as exc:
                        raise ValueError(f"{self.path}:{lineno}: not a cassette record ({exc})") from exc

    def __len__(self) -> int:
        return len(self._responses)

    def __contains__(self, key: object) -> bool:
        return key in self._responses

    def get(self, key: str) -> Any:
        try:
            return self._responses[key]
        except KeyError:
            raise CassetteMiss(key, self.path) from None

    def record(self, key: str, request: Any, response: Any) -> None:
        with self._lock:
            self._responses[key] = response
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"hash": key, "request": request, "response": response},
                                    ensure_ascii=False, sort_keys=True) + "\n")


# ================================================================================================
# The ASGI app
# ================================================================================================

def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(_dumps(data), status_code=status, headers=headers, media_type="application/json")


def _error(status: int, message: str, kind: str, code: str | None = None, *, retry_after: str = "1",
           **extra: Any) -> Response:
    headers = {"Retry-After": retry_after} if status in (429, 503) else None
    return _json({"error": {"message": message, "type": kind, "code": code or kind, "param": None, **extra}},
                 status, headers)


@lru_cache(maxsize=4096)
def _count(text: str) -> int:
    """Whitespace-split words: a deterministic token count (cached: system prompts repeat)."""
    return len(text.split())


@dataclass
class _ServerState:
    model: ReferenceModel
    log: RequestLog
    latency_ms: float = 0.0
    fault: str | None = None
    cassette: Cassette | None = None
    record: bool = False
    upstream: str | None = None
    upstream_key_env: str | None = None
    model_name: str = MODEL_NAME
    attempts: dict[str, int] = field(default_factory=dict)
    client: Any = None  # httpx.AsyncClient, created on first use in the serving loop


def create_app(
    *,
    model: ReferenceModel | None = None,
    latency_ms: float = 0.0,
    fault: str | None = None,
    log_limit: int = 100_000,
    log_path: str | os.PathLike[str] | None = None,
    cassette: str | os.PathLike[str] | None = None,
    record: bool = False,
    upstream: str | None = None,
    upstream_key_env: str | None = "OPENAI_API_KEY",
    model_name: str = MODEL_NAME,
) -> Starlette:
    """The reference LM as a Starlette app.

    * ``latency_ms`` — sleep this long (asyncio) before every completion, for I/O-bound benchmarks.
    * ``fault`` — fault segments applied to every request (see the module docstring).
    * ``cassette`` alone — replay only; a request not in the cassette gets HTTP 404 naming its hash.
    * ``cassette`` + ``record=True`` + ``upstream`` (an OpenAI-compatible base URL such as
      ``http://host/v1``) — answer from the cassette when it has the request, otherwise forward it
      upstream and record a successful answer. The upstream key is read from the environment
      variable *named* ``upstream_key_env`` at request time and never logged.

    The request log is ``app.state.log`` (a :class:`RequestLog`) and ``GET/DELETE /_stepbridge/requests``.
    """
    if record and (not upstream or cassette is None):
        raise ValueError("record mode needs both upstream=URL and cassette=FILE")
    if upstream and not record:
        raise ValueError("upstream=URL is only used with record=True")
    state = _ServerState(
        model=model or ReferenceModel(),
        log=RequestLog(log_limit, log_path),
        latency_ms=latency_ms,
        fault=fault,
        cassette=Cassette(cassette) if cassette is not None else None,
        record=record,
        upstream=upstream.rstrip("/") if upstream else None,
        upstream_key_env=upstream_key_env,
        model_name=model_name,
    )

    async def chat_completions(request: Request) -> Response:
        return await complete(request.url.path, await request.body())

    async def complete(path: str, raw: bytes) -> Response:
        try:
            body = _loads(raw)
        except ValueError:
            state.log.append(path, {"_invalid_json": raw[:10_000].decode("utf-8", "replace")})
            return _error(400, "request body is not valid JSON", "invalid_request_error")
        state.log.append(path, body)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "request body must be a JSON object with a 'messages' list",
                          "invalid_request_error", param="messages")
        model_id = str(body.get("model") or state.model_name)
        faults = parse_faults(model_id, state.fault)
        if faults.slow_ms:
            await asyncio.sleep(faults.slow_ms / 1000)
        if state.latency_ms:
            await asyncio.sleep(state.latency_ms / 1000)
        if faults.flaky or faults.ratelimit:
            key = request_hash(body)
            seen = state.attempts.get(key, 0)
            state.attempts[key] = seen + 1
            if seen < faults.flaky:
                return _error(503, f"injected flaky failure {seen + 1} of {faults.flaky}", "server_error",
                              "flaky")
            if seen < faults.ratelimit:
                return _error(429, f"injected rate limit {seen + 1} of {faults.ratelimit}", "rate_limit_error",
                              "rate_limited", retry_after="0")
        if faults.error is not None:
            kind = "rate_limit_error" if faults.error == 429 else (
                "server_error" if faults.error >= 500 else "invalid_request_error")
            return _error(faults.error, f"injected error {faults.error} (model {model_id!r})", kind,
                          "injected_error")

        if state.cassette is not None:
            key = request_hash(body)
            if key in state.cassette or not state.record:
                try:
                    data = state.cassette.get(key)
                except CassetteMiss as miss:
                    return _error(404, str(miss), "cassette_miss", hash=key, cassette=str(miss.path))
            else:
                upstream = await _forward(state, body)
                if isinstance(upstream, Response):
                    return upstream
                data = upstream
                state.cassette.record(key, body, data)
            return _reply_recorded(body, data)

        if faults.garbage:
            content = GARBAGE_TEXT
        elif faults.empty:
            content = ""
        else:
            try:
                content = state.model.complete(body["messages"], response_format=body.get("response_format"))
            except Exception as exc:  # the model must never take the server down
                return _error(500, f"reference model failed: {type(exc).__name__}: {exc}", "server_error")
        return _reply(body, model_id, content)

    async def list_models(request: Request) -> Response:
        return _json({"object": "list", "data": [
            {"id": state.model_name, "object": "model", "created": 0, "owned_by": "stepbridge"}]})

    async def requests_log(request: Request) -> Response:
        if request.method == "DELETE":
            state.log.clear()
            return _json({"cleared": True})
        since = int(request.query_params.get("since", "0") or 0)
        entries = state.log.entries(since)
        return _json({"object": "list", "count": len(entries), "requests": entries})

    async def health(request: Request) -> Response:
        return _json({"status": "ok", "model": state.model_name})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if state.client is not None:
                await state.client.aclose()
                state.client = None
            state.log.close()

    routes = []
    for prefix in ("/v1", ""):
        routes.append(Route(f"{prefix}/chat/completions", chat_completions, methods=["POST"]))
        routes.append(Route(f"{prefix}/models", list_models, methods=["GET"]))
    routes.append(Route("/_stepbridge/requests", requests_log, methods=["GET", "DELETE"]))
    routes.append(Route("/_stepbridge/health", health, methods=["GET"]))
    app = _ReferenceApp(routes=routes, lifespan=lifespan)
    app.completion_handler = complete
    app.state.reference = state
    app.state.log = state.log
    app.state.model = state.model
    return app


_COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})


class _ReferenceApp(Starlette):
    """Starlette, with the completion endpoint served directly (no middleware or router): it is the
    hot path of the I/O-bound benchmark, and this roughly halves its per-request cost."""

    completion_handler: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in _COMPLETION_PATHS
                and self.completion_handler is not None):
            chunks = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            response = await self.completion_handler(scope["path"], b"".join(chunks))
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _reply(body: Mapping[str, Any], model_id: str, content: str) -> Response:
    n = body.get("n") or 1
    n = n if isinstance(n, int) and 1 <= n <= 128 else 1
    prompt_tokens = sum(_count(_message_text(m.get("content"))) for m in body["messages"] if isinstance(m, Mapping))
    completion_tokens = _count(content) * n
    data = {
        "id": "chatcmpl-ref-" + hashlib.sha256(content.encode()).hexdigest()[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "system_fingerprint": "stepbridge-reference",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": content}, "logprobs": None,
             "finish_reason": "stop"}
            for i in range(n)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
    if body.get("stream"):
        return _stream(body, data)
    return _json(data)


def _reply_recorded(body: Mapping[str, Any], data: Any) -> Response:
    return _stream(body, data) if body.get("stream") and isinstance(data, dict) else _json(data)


def _stream(body: Mapping[str, Any], data: dict[str, Any]) -> Response:
    """Server-sent events for ``stream: true``: the whole answer in one chunk, then finish (and usage)."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        obj = {"id": data.get("id"), "object": "chat.completion.chunk", "created": data.get("created"),
               "model": data.get("model"), "choices": choices}
        if usage is not None:
            obj["usage"] = usage
        return b"data: " + _dumps(obj) + b"\n\n"

    async def events() -> AsyncIterator[bytes]:
        for c in data.get("choices", []):
            msg = c.get("message") or {}
            yield chunk([{"index": c.get("index", 0), "delta": {"role": "assistant",
                                                                  "content": msg.get("content") or ""},
                          "finish_reason": None}])
            yield chunk([{"index": c.get("index", 0), "delta": {}, "finish_reason": c.get("finish_reason")}])
        if include_usage:
            yield chunk([], data.get("usage"))
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _forward(state: _ServerState, body: dict[str, Any]) -> Any:
    """Send a request upstream (non-streaming); the JSON answer, or an error Response to pass back."""
    import httpx

    if state.client is None:
        state.client = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0))
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(state.upstream_key_env) if state.upstream_key_env else None
    if key:
        headers["Authorization"] = f"Bearer {key}"
    upstream_body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    try:
        resp = await state.client.post(f"{state.upstream}/chat/completions", content=_dumps(upstream_body),
                                       headers=headers)
    except httpx.HTTPError as exc:
        return _error(502, f"upstream request failed: {type(exc).__name__}", "upstream_error")
    if resp.status_code != 200:
        passthrough = {k: v for k, v in resp.headers.items() if k.lower() == "retry-after"}
        return Response(resp.content, status_code=resp.status_code, headers=passthrough,
                        media_type=resp.headers.get("content-type", "application/json"))
    try:
        return resp.json()
    except ValueError:
        return _error(502, "upstream answered with invalid JSON", "upstream_error")


# ================================================================================================
# Running it
# ================================================================================================

class ServerURL(str):
    """The base URL of a running reference server (``http://127.0.0.1:PORT/v1``), usable as a plain
    string (``dspy.LM(..., api_base=url)``), with ``root``, ``port`` and, in-process, ``app``/``log``."""

    root: str
    port: int
    app: Starlette | None
    log: RequestLog | None

    def __new__(cls, root: str, port: int, app: Starlette | None = None) -> ServerURL:
        self = super().__new__(cls, root + "/v1")
        self.root = root
        self.port = port
        self.app = app
        self.log = app.state.log if app is not None else None
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # copies and pickles (DSPy deep-copies LM settings) become the plain URL string
        return (str, (str(self),))


def _uvicorn_config(app: Starlette, **kw: Any) -> Any:
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover
        loop = "asyncio"
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:  # pragma: no cover
        http = "h11"
    return uvicorn.Config(app, loop=loop, http=http, log_level="warning", access_log=False,
                          lifespan="on", backlog=4096, timeout_keep_alive=60, **kw)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def _url_root(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def running_server(host: str = "127.0.0.1", port: int = 0, **options: Any) -> Iterator[ServerURL]:
    """Run the reference server in a background thread (for tests); yields its :class:`ServerURL`.

    ``options`` go to :func:`create_app`. The port is free-picked when 0. The server shares this
    process's GIL: for throughput benchmarks use :func:`running_server_process`.
    """
    import uvicorn

    app = create_app(**options)
    sock = _bind(host, port)
    server = uvicorn.Server(_uvicorn_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="stepbridge-reference-lm",
                              daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("reference LM server failed to start")
            time.sleep(0.005)
        yield ServerURL(_url_root(host, sock.getsockname()[1]), sock.getsockname()[1], app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _cli_args(options: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


@contextlib.contextmanager
def running_server_process(host: str = "127.0.0.1", port: int = 0, **options: Any) -> Iterator[ServerURL]:
    """Run the reference server in a child process (own GIL, for benchmarks); yields its URL.

    Accepts the options of :func:`serve`; read the request log over HTTP (``url.log`` is None).
    """
    cmd = [sys.executable, "-m", "stepbridge.reference_lm", "--host", host, "--port", str(port),
           *_cli_args(options)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://\S+)/v1\s*$", line)
        if not m:
            raise RuntimeError(f"reference LM process did not start (printed {line!r})")
        root = m.group(1)
        yield ServerURL(root, int(root.rsplit(":", 1)[1]))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    cassette: str | os.PathLike[str] | None = None,
    record: bool = False,
    upstream: str | None = None,
    upstream_key_env: str | None = "OPENAI_API_KEY",
    latency_ms: float = 0.0,
    fault: str | None = None,
    log_path: str | os.PathLike[str] | None = None,
    log_limit: int = 100_000,
) -> None:
    """Serve until interrupted (``stepbridge lm serve``). Prints one line with the base URL first.

    ``record`` needs ``upstream`` and ``cassette``; ``cassette`` alone replays. Raises ValueError on
    an invalid combination before binding anything.
    """
    import uvicorn

    app = create_app(latency_ms=latency_ms, fault=fault, log_limit=log_limit, log_path=log_path,
                     cassette=cassette, record=record, upstream=upstream, upstream_key_env=upstream_key_env)
    sock = _bind(host, port)
    mode = "record" if record else ("replay" if cassette is not None else "reference")
    print(f"stepbridge reference LM ({mode}) listening on {_url_root(host, sock.getsockname()[1])}/v1",
          flush=True)
    try:
        uvicorn.Server(_uvicorn_config(app)).run(sockets=[sock])
    finally:
        sock.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m stepbridge.reference_lm``: the same options as ``stepbridge lm serve``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m stepbridge.reference_lm", description=main.__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--cassette")
    p.add_argument("--record", action="store_true")
    p.add_argument("--upstream")
    p.add_argument("--upstream-key-env", default="OPENAI_API_KEY")
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--fault")
    p.add_argument("--log-path")
    p.add_argument("--log-limit", type=int, default=100_000)
    a = p.parse_args(argv)
    try:
        serve(a.host, a.port, cassette=a.cassette, record=a.record, upstream=a.upstream,
              upstream_key_env=a.upstream_key_env, latency_ms=a.latency_ms, fault=a.fault,
              log_path=a.log_path, log_limit=a.log_limit)
    except ValueError as exc:
        p.error(str(exc))
    except KeyboardInterrupt:  # pragma: no cover
        pass


if __name__ == "__main__":
    main()
