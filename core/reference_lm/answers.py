"""Answer values: :class:`ValueGenerator` builds a value of a JSON schema from the request's
:class:`~.facts.Facts` (strings, numbers, booleans, enums, arrays, objects, ``$ref``/``anyOf``).

Extension points: a new kind of typed answer (named object types, tuples, unions) is a branch of
:meth:`ValueGenerator.value` or a method beside :meth:`~ValueGenerator.object`; how the model picks
among fixed options (a Literal, an enum, a ReAct agent's next tool) is :meth:`ValueGenerator.choice`.
Recursion is bounded and odd schemas never raise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .facts import (
    NEGATIONS,
    QUERY_OUTPUT_HINTS,
    REASONING_NAMES,
    Facts,
    content_words,
    finite,
    literal_pattern,
    split_words,
)

__all__ = ["MAX_DEPTH", "ValueGenerator"]

#: Deepest schema nesting answered; deeper values are None.
MAX_DEPTH = 8

class ValueGenerator:
    """Builds a value of a JSON schema from the facts; recursion bounded, never raises on odd schemas."""

    def __init__(self, facts: Facts, root: Mapping[str, Any]):
        self.facts = facts
        self.root = root

    def value(self, schema: Any, name: str, depth: int = 0) -> Any:
        if depth > MAX_DEPTH or not isinstance(schema, Mapping):
            return self.text(name) if depth <= MAX_DEPTH else None
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
        if any(h in lname for h in REASONING_NAMES):
            words = ", ".join(f.keywords[:5]) or "the inputs"
            return f"The relevant terms are {words}; the answer follows from the most related input text."
        if any(h in lname for h in QUERY_OUTPUT_HINTS):
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
        return not any(w in NEGATIONS for w in split_words(f.query or f.text))

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
        return result if finite(result) else nums[0]

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
            score = len(literal_pattern(needle).findall(f.text))
            if score > best_score:
                best, best_score = opt, score
        if best_score == 0:
            words = set(split_words(f.text))
            for opt in options:
                score = len(words.intersection(content_words(str(opt))))
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
            if any(h in lname for h in QUERY_OUTPUT_HINTS):
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
