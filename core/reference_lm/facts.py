"""What the inputs of one request say (:class:`Facts`): the query, passages and their sentences,
numbers and keywords, pre-digested once per request for every output field.

Answers are *extracted* from these facts, which is what makes the reference LM deterministic and
its answers sensible for the example programs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = ["NAME_HINTS", "NEGATIONS", "NUMBER", "NUMBER_HINTS", "PLACE_HINTS", "QUERY_OUTPUT_HINTS",
           "REASONING_NAMES", "Facts", "content_words", "finite", "literal_pattern", "split_words"]

#: Words of a field name (split on ``_``) that say what an object field holds.
NAME_HINTS = frozenset({"name", "who", "person", "author", "title", "entity", "speaker", "character"})
NUMBER_HINTS = frozenset({"age", "year", "count", "number", "total", "score", "amount", "price", "quantity", "size",
                          "rank"})
PLACE_HINTS = frozenset({"city", "place", "location", "country", "town", "region", "where", "state"})

_WORD = re.compile(r"\w+", re.UNICODE)
# a run of capitalised words: a name, a place ("Ada Lovelace", "New York")
_PROPER = re.compile(r"(?<![\w@.])[A-Z][\w'’-]*(?:[ \t]+[A-Z][\w'’-]*)*")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PLACE_BEFORE = frozenset({"in", "from", "at", "near", "to", "into", "via"})
MAX_ENTITIES = 20
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.]*\w)")
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
NEGATIONS = frozenset({"not", "no", "never", "false", "none", "nobody", "nothing", "neither", "nor",
                       "isn", "aren", "wasn", "weren", "doesn", "don", "didn", "cannot", "can't"})
_QUERY_NAMES = ("question", "query", "q", "claim", "statement", "prompt", "task", "request", "topic",
                "input", "text", "sentence", "message", "problem", "instruction")
_CONTEXT_HINTS = ("context", "passage", "document", "docs", "evidence", "snippet", "source", "retriev",
                  "knowledge", "fact", "corpus", "reference")
REASONING_NAMES = ("reasoning", "rationale", "thought", "explanation", "justification", "analysis")
QUERY_OUTPUT_HINTS = ("quer", "search")


def split_words(text: str) -> list[str]:
    """Lowercased word tokens."""
    return _WORD.findall(text.lower())


def content_words(text: str) -> list[str]:
    """Distinct non-stopwords, in order of first appearance."""
    seen: dict[str, None] = {}
    for w in split_words(text):
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


def _entities(text: str) -> tuple[list[str], list[str]]:
    """Capitalised phrases (leading stopwords dropped, so "The Beatles" is "Beatles") and which of
    them follow a place preposition."""
    entities: dict[str, None] = {}
    places: dict[str, None] = {}
    for m in _PROPER.finditer(text[:200_000]):
        words = m.group().split()
        while words and words[0].lower() in _STOPWORDS:
            words.pop(0)
        if not words or (len(words) == 1 and len(words[0]) < 2):
            continue
        phrase = " ".join(words)
        entities.setdefault(phrase, None)
        before = text[max(0, m.start() - 12): m.start()].split()
        if before and before[-1].lower() in _PLACE_BEFORE:
            places.setdefault(phrase, None)
        if len(entities) >= MAX_ENTITIES:
            break
    return list(entities), list(places)


def literal_pattern(option: str) -> re.Pattern[str]:
    return _literal_pattern_cached(option.lower())


@lru_cache(maxsize=4096)
def _literal_pattern_cached(option: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(option) + r"(?!\w)")


def finite(x: float) -> bool:
    return math.isfinite(x) and abs(x) < 1e15


@dataclass
class Facts:
    """What the inputs say, pre-digested once per request for every output field."""

    values: dict[str, str]
    query: str
    passages: list[str]
    sentences: list[str]
    numbers: list[float]
    keywords: list[str]
    text: str  # every input value, lowercased
    trajectory: bool
    entities: list[str] = field(default_factory=list)  # capitalised phrases, in order: names and places
    places: list[str] = field(default_factory=list)  # the entities that follow "in", "from", "at", ...
    emails: list[str] = field(default_factory=list)

    @classmethod
    def from_values(cls, values: dict[str, str]) -> Facts:
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
            for m in NUMBER.finditer(raw):
                x = float(m.group())
                if finite(x):
                    numbers.append(x)
        text = "\n".join(plain.values())
        entities, places = _entities(text)
        return cls(
            values=plain,
            query=query.strip(),
            passages=passages,
            sentences=sentences,
            numbers=numbers,
            keywords=content_words(query or text),
            text=text.lower(),
            trajectory=any("trajectory" in n.lower() and v.strip() for n, v in values.items()),
            entities=entities,
            places=places,
            emails=list(dict.fromkeys(_EMAIL.findall(text)))[:MAX_ENTITIES],
        )

    def people(self) -> list[str]:
        """Entities that are not places (names of people, organisations...)."""
        return [e for e in self.entities if e not in self.places]

    def sentence_with(self, phrase: str) -> str | None:
        """The first sentence of the inputs that mentions ``phrase``."""
        for source in (self.sentences, _SENTENCE_SPLIT.split(self.query)):
            for s in source:
                if phrase in s:
                    return s.strip()
        for value in self.values.values():
            for s in _SENTENCE_SPLIT.split(value):
                if phrase in s:
                    return s.strip()
        return None

    def best_sentence(self) -> tuple[str, int] | None:
        if not self.sentences:
            return None
        q = set(self.keywords)
        words = [q.intersection(split_words(s)) for s in self.sentences]
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
