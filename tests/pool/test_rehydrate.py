"""Rehydration: workers with a store look programs up there (verified), warm aliased programs at start,
and refuse tampered stored programs. Real worker processes, a real SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sb_pool as h
from stepbridge import RunOptions
from stepbridge.bridge.pool import PoolAdapter
from stepbridge.storage import Store
from stepbridge.validate import validate_data


def _program(name: str, answer: str) -> dict[str, Any]:
    return {"stepbridge": 1, "name": name, "signature": "question -> answer",
            "steps": [{"return": {"answer": answer}}]}


def test_workers_rehydrate_from_the_store_warm_aliases_and_refuse_tampered_programs(
        tmp_path: Path, pool_kwargs: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    echo = validate_data(h.ECHO)
    plain = validate_data(_program("plain", "$inputs.question"))
    shout = validate_data(_program("shout", "$inputs.question"))
    with Store(url) as store:
        store.publish(echo)
        store.set_alias("echo", "prod", echo.content_hash)
        store.publish(plain)  # stored, but behind no alias: found on demand, not warmed
        store.publish(shout)
        store.set_alias("shout", "prod", shout.content_hash)
        from stepbridge.storage.programs import versions

        with store.engine.begin() as conn:  # changed outside stepbridge: same identity, other content
            conn.execute(versions.update().where(versions.c.hash == shout.content_hash)
                         .values(program=_program("shout", "pwned")))

    async def go() -> None:
        pool = PoolAdapter(workers=1, capacity=4, store_url=url, **{**pool_kwargs, "heartbeat": 1.0})
        await pool.start()
        try:
            router = pool.router
            assert router is not None
            await router.wait_ready(1, 60)
            (worker,) = router.workers.values()
            # warm-up happened at start (READY reports it): the aliased good program, not the tampered one
            assert worker.warmed == (echo.content_hash,)
            assert pool.status()["workers"][0]["warmed"] == 1

            # by hash, from the worker's cache (warmed) or its store: the router never sends a definition
            got = await pool.run(echo, {"question": "hello"}, RunOptions())
            assert got.outputs == {"answer": "hello"}
            got = await pool.run(plain, {"question": "plain"}, RunOptions())
            assert got.outputs == {"answer": "plain"}
            assert router.stats["programs_sent"] == 0

            # the tampered stored copy is refused; the router's (hash-verified) definition is used instead
            got = await pool.run(shout, {"question": "real"}, RunOptions())
            assert got.outputs == {"answer": "real"}
            assert router.stats["programs_sent"] == 1, router.stats
            got = await pool.run(shout, {"question": "again"}, RunOptions())  # cached now
            assert got.outputs == {"answer": "again"} and router.stats["programs_sent"] == 1
        finally:
            await pool.aclose()

    asyncio.run(go())
    err = capfd.readouterr().err
    assert "refused to warm stored program 'shout@prod'" in err
    assert "does not match its identity" in err
    assert f"refused stored program {shout.content_hash[:12]}" in err


def test_without_a_store_the_router_sends_definitions_once_per_worker(pool_kwargs: dict[str, Any]) -> None:
    echo = validate_data(h.ECHO)

    async def go() -> None:
        pool = PoolAdapter(workers=1, capacity=4, **{**pool_kwargs, "heartbeat": 1.0})
        await pool.start()
        try:
            assert pool.router is not None
            results = await asyncio.gather(*(pool.run(echo, {"question": str(i)}, RunOptions()) for i in range(5)))
            assert [r.outputs["answer"] for r in results] == [str(i) for i in range(5)]
            # once per worker, not once per request (a worker that reconnects keeps its cache)
            assert pool.router.stats["programs_sent"] == 1, pool.router.stats
        finally:
            await pool.aclose()

    asyncio.run(go())
