"""Retrievers: the built-in BM25 over a jsonl/txt corpus, and the protocol for pluggable ones.

A retriever is anything with ``search(query, k) -> Hits``. Plugins register a factory
``factory(spec: RetrieverSpec, base_dir: Path) -> retriever`` under an exact name (entry point
group ``stepbridge.retrievers``). Indexes are built once per process and corpus file version, and a bounded number kept.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .lru import LRU
from .program import RetrieverSpec

__all__ = ["BM25Retriever", "Hits", "Retriever", "make_retriever", "read_corpus"]


@dataclass(frozen=True)
class Hits:
    passages: list[str]
    ids: list[str]
    scores: list[float]

    def as_outputs(self) -> dict[str, Any]:
        return {"passages": self.passages, "ids": self.ids, "scores": self.scores}


class Retriever(Protocol):
    def search(self, query: str, k: int) -> Hits: ...


def read_corpus(path: Path) -> tuple[list[str], list[str]]:
    """(ids, passages) from a .jsonl file (``text`` plus optional ``id``/``title``) or a .txt file
    (one passage per non-empty line)."""
    ids: list[str] = []
    texts: list[str] = []
    with path.open(encoding="utf-8") as fh:
        if path.suffix == ".jsonl":
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    text = row["text"] if isinstance(row, dict) else str(row)
                except (ValueError, KeyError) as exc:
                    raise ValueError(f"{path}:{lineno}: each line must be a JSON object with 'text' ({exc})") from None
                if isinstance(row, dict) and row.get("title"):
                    text = f"{row['title']} | {text}"
                ids.append(str(row.get("id", lineno)) if isinstance(row, dict) else str(lineno))
                texts.append(str(text))
        else:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    ids.append(str(lineno))
                    texts.append(line.strip())
    if not texts:
        raise ValueError(f"corpus {path} is empty")
    return ids, texts


class BM25Retriever:
    """BM25 (via ``bm25s``) with a stable tie order, so every backend returns the same passages."""

    def __init__(self, ids: list[str], passages: list[str], *, size: int | None = None):
        import bm25s

        self._bm25s = bm25s
        self.ids = ids
        self.passages = passages
        #: about how much memory it holds (the corpus file's bytes), for the bounded index cache
        self.size = size if size is not None else sum(len(p) for p in passages)
        self._index = bm25s.BM25()
        self._index.index(bm25s.tokenize(passages, stopwords="en", show_progress=False), show_progress=False)
        self._lock = threading.Lock()

    def search(self, query: str, k: int) -> Hits:
        import numpy as np

        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        with self._lock:
            scores = self._index.get_scores(tokens) if tokens else np.zeros(len(self.passages))
        order = np.argsort(-scores, kind="stable")[:k]
        return Hits(
            passages=[self.passages[i] for i in order],
            ids=[self.ids[i] for i in order],
            scores=[round(float(scores[i]), 6) for i in order],
        )


#: built indexes kept per process: a program (or a pool request) chooses how many corpora a process
#: sees, so the least recently used go first past this many, or past this many corpus bytes
MAX_INDEXES = 64
MAX_INDEX_BYTES = 1 << 30
_cache: LRU[tuple[str, float, int], BM25Retriever] = LRU(MAX_INDEXES, max_weight=MAX_INDEX_BYTES,
                                                          weight=lambda r: r.size)
_build_lock = threading.Lock()


def make_retriever(spec: RetrieverSpec, base_dir: Path) -> Retriever:
    """Build (or reuse) the retriever a module names."""
    if spec.kind != "bm25":
        from .registry import retrievers

        factory = retrievers.get(spec.kind)
        return factory(spec, base_dir)
    if not spec.corpus:
        raise ValueError("the bm25 retriever needs a 'corpus' file (jsonl or txt)")
    root = Path(base_dir).resolve()
    path = (root / spec.corpus).resolve()
    if not path.is_relative_to(root):  # symlinks too: a program reads only below its own folder
        raise ValueError(f"corpus {spec.corpus!r} resolves outside the program's folder ({root})")
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    hit = _cache.get(key)
    if hit is None:
        with _build_lock:  # one build at a time (bm25s is not re-entrant, and memory peaks while building)
            hit = _cache.get(key)
            if hit is None:
                hit = _cache.put(key, BM25Retriever(*read_corpus(path), size=stat.st_size))
    return hit
