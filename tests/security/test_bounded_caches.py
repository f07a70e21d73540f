"""Caches fed by what programs name stay bounded (issue 9): a long-running process (a pool worker,
a server) that sees many distinct corpora or programs keeps a bounded number of indexes and plans,
and what it forgets is really freed. Real files, the real native executor."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

import stepbridge as sb
from stepbridge import retrieve
from stepbridge.adapters.native import MAX_PLANS, NativeAdapter
from stepbridge.program import RetrieverSpec


def retrieval_program(name: str) -> dict[str, Any]:
    return {"stepbridge": 1, "name": name, "signature": "question -> passages: list[str]",
            "modules": {"s": {"type": "retrieve", "retriever": {"kind": "bm25", "corpus": "c.txt"}}},
            "steps": [{"call": "s", "with": {"query": "$inputs.question"}, "as": "f"},
                      {"return": {"passages": "$f.passages"}}]}


def test_many_corpora_keep_a_bounded_number_of_indexes(tmp_path: Path) -> None:
    retrieve._cache.clear()
    first = None
    for i in range(retrieve.MAX_INDEXES * 3):
        folder = tmp_path / f"c{i}"
        folder.mkdir()
        (folder / "c.txt").write_text(f"passage number {i}\nanother line {i}\n")
        hit = retrieve.make_retriever(RetrieverSpec(kind="bm25", corpus="c.txt"), folder)
        if first is None:
            first = weakref.ref(hit)
        del hit
        assert len(retrieve._cache) <= retrieve.MAX_INDEXES
    gc.collect()
    assert first is not None and first() is None  # the forgotten index is freed


def test_the_index_cache_is_bounded_by_bytes_too(tmp_path: Path) -> None:
    cache = retrieve.LRU[str, bytes](1000, max_weight=10_000, weight=len)
    for i in range(100):
        cache.put(str(i), b"x" * 3000)
    assert len(cache) == 3 and "99" in cache and "96" not in cache
    cache.put("huge", b"x" * 50_000)  # the newest is kept even when it alone is over
    assert len(cache) == 1 and cache.get("huge") is not None


def prepared_runner(plan: Any, module: str) -> Any:
    """The prepared runner of ``module`` (with its bm25 index): held only by the plan's call closure, which
    looks each module's entry point up once (a bound method of the runner, or a partial around one)."""
    cells = [c.cell_contents for c in plan[1].__closure__ or ()]
    invokers = next(c for c in cells if isinstance(c, dict))
    entry = invokers[module]
    return entry.__self__ if hasattr(entry, "__self__") else entry.args[0].__self__


def test_many_programs_keep_a_bounded_number_of_plans(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("alpha beta\ngamma delta\n")
    adapter = NativeAdapter()
    first: list[Any] = []

    async def go() -> None:
        for i in range(MAX_PLANS + 200):
            program = sb.load_program(retrieval_program(f"p{i}"), base_dir=tmp_path)
            result = await adapter.run(program, {"question": "alpha"})
            assert result.outputs["passages"][0] == "alpha beta"
            if not first:
                plan = adapter._plans.get(program.plan_key)
                assert plan is not None
                first.append(weakref.ref(prepared_runner(plan, "s")))
                del plan
            assert len(adapter._plans) <= MAX_PLANS
        await adapter.aclose()

    asyncio.run(go())
    gc.collect()
    assert first[0]() is None
