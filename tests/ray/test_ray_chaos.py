"""Chaos on a real local Ray: actor processes SIGKILLed (their PIDs asked through Ray) under load. Every run
returns exactly once: right, or with a typed error; nothing hangs, nothing is delivered twice."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from typing import Any

from conftest import skip_without_ray

skip_without_ray()

import sb_pool as h  # noqa: E402
import sb_ray  # noqa: E402, F401  (registers the tools on this side too)
from stepbridge import Runner, StepbridgeError  # noqa: E402
from stepbridge.bridge.ray import RayAdapter  # noqa: E402
from stepbridge.validate import validate_data  # noqa: E402

KILLS = 4
KILL_EVERY = 50


def test_sigkill_actors_under_load_every_run_returns_exactly_once(ray_kwargs: dict[str, Any]) -> None:
    nap = validate_data(h.tool_program("sbtest_nap", "nap"))
    charge = validate_data(h.tool_program("sbtest_charge", "charge"))
    n_runs = 400

    async def go() -> None:
        adapter = RayAdapter(**{**ray_kwargs, "actors": 3, "max_attempts": 20})
        async with Runner(adapter) as runner:
            await adapter.start()
            stop = asyncio.Event()
            killed: list[int] = []

            async def chaos() -> None:
                # a kill each time another 50 runs have returned (progress, not time, paces it: under load)
                rng = random.Random(7)
                while not stop.is_set() and len(killed) < KILLS:
                    if len(delivered) < KILL_EVERY * (len(killed) + 1):
                        await asyncio.sleep(0.02)
                        continue
                    try:  # through Ray: each actor reports its own process id (restarted ones, their new one)
                        actors = await adapter.describe_actors(timeout=2)
                    except Exception:
                        continue  # an actor is restarting: ask again
                    busy = [a["pid"] for a in actors if a["in_flight"] and a["pid"] not in killed]
                    if busy:
                        victim = rng.choice(busy)
                        os.kill(victim, signal.SIGKILL)
                        killed.append(victim)

            killer = asyncio.ensure_future(chaos())
            delivered: dict[int, int] = {}

            async def one(i: int) -> Any:
                program, inputs = (charge, {"seconds": 0.3}) if i % 10 == 0 else (nap, {"seconds": 0.3})
                try:
                    return await runner.run(program, inputs)
                finally:
                    delivered[i] = delivered.get(i, 0) + 1

            results = await asyncio.gather(*(one(i) for i in range(n_runs)), return_exceptions=True)
            stop.set()
            await killer
            assert all(delivered[i] == 1 for i in range(n_runs))
            untyped = [r for r in results if isinstance(r, BaseException) and not isinstance(r, StepbridgeError)]
            assert not untyped, untyped[:3]
            ok = [(i, r) for i, r in enumerate(results) if not isinstance(r, BaseException)]
            assert all(r.outputs == {"slept": 0.3} for _, r in ok)
            assert len({r.execution_id for _, r in ok}) == len(ok)
            # idempotent runs all succeed (retried elsewhere); only side-effect runs may fail, each typed
            failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
            assert all(i % 10 == 0 for i in failed), [(i, results[i]) for i in failed[:3]]
            assert all(type(results[i]).__name__ == "WorkerLostError" for i in failed)
            assert len(killed) == KILLS and adapter.stats["lost"] >= KILLS and adapter.stats["retried"] > 0
            assert any(r.attempts > 1 for _, r in ok)
            assert all(r.attempts == 1 for i, r in ok if i % 10 == 0)  # a side effect never ran twice

    asyncio.run(go())
