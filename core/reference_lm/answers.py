"""Answer values: :class:`ValueGenerator` builds a value of a JSON schema from the request's
:class:`~.facts.Facts` (strings, numbers, booleans, enums, arrays, tuples, objects, dicts with typed
keys, ``$ref``/``anyOf``).

Typed objects are *extracted*: inside an object, a field named like a name, a place or an email takes
a capitalised phrase, a place after "in/from/at", an email address of the inputs; a list of objects
with a name field gets one object per person the inputs name (its fields, numbers and enum choices
taken from the sentence about that person; an ``Optional`` field nothing is said about is ``None``).

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
    NAME_HINTS,
    NEGATIONS,
    NUMBER,
    NUMBER_HINTS,
    PLACE_HINTS,
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
#: Most objects a list of objects gets (one per entity the inputs name).
MAX_LIST_OBJECTS = 5

class ValueGenerator:
    """Builds a value of a JSON schema from the facts; recursion bounded, never raises on odd schemas."""

    def __init__(self, facts: Facts, root: Mapping[str, Any]):
        self.facts = facts
        self.root = root
        #: the entity the object being built is about (an element of a list of objects)
        self.focus: str | None = None
        #: how many objects are being built (fields of objects are extracted: names, places, emails)
        self.in_object = 0

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
                if len(usable) < len(variants) and self.absent(name):
                    return None
                if not usable:
                    return None
                # DSPy reads a union's text as JSON first: a string that reads as other JSON ("{", "1")
                # would not come back as itself, so another variant answers when there is one
                for variant in usable:
                    value = self.value(variant, name, depth + 1)
                    if not (isinstance(value, str) and _reads_as_json(value)):
                        return value
                return self.value(usable[0], name, depth + 1)
        if isinstance(schema.get("allOf"), list) and schema["allOf"]:
            return self.value(schema["allOf"][0], name, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None and not schema and set(name.lower().split("_")) & NUMBER_HINTS and self.facts.numbers:
            return round(self.number(name))  # an untyped leaf (an XML skeleton) named like a number
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
        extracted = self.extract(lname) if self.in_object else None
        if extracted is not None:
            return extracted
        best = f.best_sentence()
        if best is not None:
            return best[0]
        return f.first_sentence()

    def extract(self, lname: str) -> str | None:
        """A value for a field named like a name, place or email, taken from the inputs (from what is said
        about the entity this object is about, when there is one)."""
        f = self.facts
        local = f.sentence_with(self.focus) if self.focus is not None else None
        words = set(lname.split("_"))
        if "mail" in lname:
            found = [e for e in f.emails if local is None or e in local]
            if found:
                return found[0]
        if words & PLACE_HINTS:
            places = [p for p in (f.places or f.entities) if local is None or p in local]
            if places:
                return places[0]
        if words & NAME_HINTS:
            if self.focus is not None:
                return self.focus
            people = f.people() or f.entities
            if people:
                return people[0]
        return local

    def absent(self, name: str) -> bool:
        """Whether an optional field of an object is better left None: it names an email, a place or a
        number, and nothing of that kind is said (about the object's entity, or in the inputs)."""
        if not self.in_object:
            return False
        f = self.facts
        lname = name.lower()
        local = (f.sentence_with(self.focus) or "") if self.focus is not None else "\n".join(f.values.values())
        words = set(lname.split("_"))
        if "mail" in lname:
            return not any(e in local for e in f.emails)
        if words & PLACE_HINTS:
            return not any(p in local for p in f.places)
        if words & NUMBER_HINTS:
            return NUMBER.search(local) is None
        return False

    def boolean(self) -> bool:
        f = self.facts
        best = f.best_sentence()
        if best is not None and f.keywords:
            return best[1] >= max(1, (len(f.keywords) + 1) // 2)
        return not any(w in NEGATIONS for w in split_words(f.query or f.text))

    def number(self, name: str) -> float:
        nums = self.facts.numbers
        if self.focus is not None:  # the numbers said about the entity this object is about
            sentence = self.facts.sentence_with(self.focus)
            local = [float(m.group()) for m in NUMBER.finditer(sentence or "")]
            nums = [x for x in local if finite(x)] or nums
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
        if self.focus is not None:  # what is said about this object's entity decides first
            sentence = (f.sentence_with(self.focus) or "").lower()
            for opt in options:
                if str(opt).strip() and literal_pattern(str(opt)).search(sentence):
                    return opt
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
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list):  # a tuple: one value per position
            return [self.value(s, name, depth + 1) for s in prefix]
        items = schema.get("items", {})
        if isinstance(items, list):  # tuple-style prefixItems
            return [self.value(s, name, depth + 1) for s in items]
        target = self.resolve(str(items["$ref"])) if isinstance(items, Mapping) and "$ref" in items else items
        if isinstance(target, Mapping) and _names_something(target) and self.focus is None:
            entities = (f.people() or f.entities)[:MAX_LIST_OBJECTS]
            if not entities:
                return []  # a list of named things, and the inputs name nothing
            if entities:
                out_objects = []
                for entity in entities:
                    self.focus = entity
                    try:
                        out_objects.append(self.value(items, name, depth + 1))
                    finally:
                        self.focus = None
                return out_objects
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
            self.in_object += 1
            try:
                return {str(k): self.value(v, str(k), depth + 1) for k, v in props.items()}
            finally:
                self.in_object -= 1
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping) and extra:
            key = self.key(schema.get("propertyNames"))
            return {key: self.value(extra, key, depth + 1)}
        return {}

    def key(self, names: Any) -> str:
        """A dict key of the kind ``propertyNames`` allows (an enum value, a number...)."""
        if isinstance(names, Mapping) and "$ref" in names:
            names = self.resolve(str(names["$ref"]))
        if isinstance(names, Mapping):
            if "const" in names:
                return str(names["const"])
            if isinstance(names.get("enum"), list) and names["enum"]:
                return str(self.choice(names["enum"]))
            kind = names.get("type")
            if kind == "integer":
                return str(round(self.number("key")))
            if kind == "number":
                return str(float(self.number("key")))
            if kind == "boolean":
                return "true" if self.boolean() else "false"
        return self.facts.keywords[0] if self.facts.keywords else "key"


def _reads_as_json(text: str) -> bool:
    """Whether DSPy's reading of a union's text (``json_repair``, then ``ast.literal_eval``) would turn
    this string into something else than itself."""
    import ast

    import json_repair

    try:
        candidate = json_repair.loads(text)
        if candidate == "" and text != "":
            candidate = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
        return False
    return candidate != text


def _names_something(schema: Mapping[str, Any]) -> bool:
    """An object schema with a string field named like a name (what a list of entities is made of)."""
    props = schema.get("properties")
    return isinstance(props, Mapping) and any(set(str(k).lower().split("_")) & NAME_HINTS for k in props)
