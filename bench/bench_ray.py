"""Ray backend benchmarks, each against its peers measured in the same run (DESIGN section 9: reported).

1. Round trip (one request at a time) of a trivial program (a single ``return`` step): the ray adapter
   (2 actors on a local Ray) vs the ZeroMQ pool (2 workers) vs a bare Ray task round trip
   (``ray.get(echo.remote(x))`` on the same instance) and a bare async actor call doing the same echo
   (the least an actor-based Ray backend can cost).
2. I/O-bound throughput: ``examples/classify.yaml`` against a loopback reference LM with 50 ms latency
   (its own process), ``--runs`` runs at ``--concurrency``: the ray adapter vs the pool, the same number of
   actors and workers, each allowed the whole concurrency.

Peers alternate in rounds (same processes throughout) so that load elsewhere on a shared machine falls on
all of them alike; each figure is the median over ``--repeats`` rounds.

    python bench/bench_ray.py [--round-trips 500] [--runs 2000] [--concurrency 200] [--latency-ms 50]
                              [--processes 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import stepbridge as sb
from stepbridge import RunOptions
from stepbridge.bridge.pool import PoolAdapter
from stepbridge.bridge.ray import RayAdapter, require_ray
from stepbridge.reference_lm import running_server_process
from stepbridge.validate import validate_data

PROGRAM = Path(__file__).resolve().parent.parent / "examples" / "classify.yaml"
ECHO = {"stepbridge": 1, "name": "echo", "signature": "question -> answer",
        "steps": [{"return": {"answer": "$inputs.question"}}]}


def p50(values: list[float]) -> float:
    return statistics.median(values)


async def adapter_round_trips(adapter: Any, n: int) -> list[float]:
    program = validate_data(ECHO)
    out = []
    for i in range(n):
        start = time.perf_counter()
        result = await adapter.run(program, {"question": f"q{i}"}, RunOptions())
        out.append(time.perf_counter() - start)
        assert result.outputs == {"answer": f"q{i}"}
    return out


def bare_ray_round_trips(n: int) -> list[float]:
    ray = require_ray()

    @ray.remote(num_cpus=0)
    def echo(body: dict[str, str]) -> dict[str, str]:
        return {"answer": body["question"]}

    ray.get(echo.remote({"question": "warm"}))
    out = []
    for i in range(n):
        start = time.perf_counter()
        assert ray.get(echo.remote({"question": f"q{i}"})) == {"answer": f"q{i}"}
        out.append(time.perf_counter() - start)
    return out


def bare_actor_round_trips(n: int) -> list[float]:
    """The same echo as an async actor's method: what one actor call costs, with no stepbridge in it."""
    ray = require_ray()

    @ray.remote(num_cpus=0)
    class Echo:
        async def echo(self, body: dict[str, str]) -> dict[str, str]:
            return {"answer": body["question"]}

    actor = Echo.remote()
    ray.get(actor.echo.remote({"question": "warm"}))
    out = []
    for i in range(n):
        start = time.perf_counter()
        assert ray.get(actor.echo.remote({"question": f"q{i}"})) == {"answer": f"q{i}"}
        out.append(time.perf_counter() - start)
    ray.kill(actor)
    return out


def rows(n: int) -> list[dict[str, Any]]:
    return [{"ticket": f"ticket {i}: I was charged twice, please refund me"} for i in range(n)]


async def throughput(runner: sb.Runner, runs: int, concurrency: int) -> float:
    start = time.perf_counter()
    items = await runner.batch(PROGRAM, rows(runs), concurrency=concurrency)
    elapsed = time.perf_counter() - start
    failed = [i for i in items if not i.ok]
    assert not failed, failed[0].error
    return runs / elapsed


async def bench(args: argparse.Namespace, url: str) -> dict[str, list[float]]:
    # the actors and workers read the LM from their environment (actors: forwarded when they start)
    os.environ["STEPBRIDGE_LM_BASE_URL"] = url
    os.environ["STEPBRIDGE_LM_MODEL"] = "openai/reference"
    found: dict[str, list[float]] = {}
    ray_adapter = RayAdapter(actors=args.processes, concurrency=args.concurrency)
    pool = PoolAdapter(workers=args.processes, capacity=args.concurrency)
    async with sb.Runner(ray_adapter) as ray_runner, sb.Runner(pool) as pool_runner:
        await ray_adapter.start()
        await pool.start()
        assert pool.router is not None
        await pool.router.wait_ready(args.processes, 60)
        # warm both: programs cached in every actor and worker, connections open
        await ray_runner.batch(PROGRAM, rows(args.concurrency), concurrency=args.concurrency)
        await pool_runner.batch(PROGRAM, rows(args.concurrency), concurrency=args.concurrency)
        await adapter_round_trips(ray_adapter, 20)
        await adapter_round_trips(pool, 20)
        for r in range(args.repeats):
            found.setdefault("ray round trip", []).append(p50(await adapter_round_trips(ray_adapter, args.round_trips)))
            found.setdefault("pool round trip", []).append(p50(await adapter_round_trips(pool, args.round_trips)))
            found.setdefault("bare ray task round trip", []).append(
                p50(await asyncio.to_thread(bare_ray_round_trips, args.round_trips)))
            found.setdefault("bare ray actor round trip", []).append(
                p50(await asyncio.to_thread(bare_actor_round_trips, args.round_trips)))
            found.setdefault("ray throughput", []).append(await throughput(ray_runner, args.runs, args.concurrency))
            found.setdefault("pool throughput", []).append(await throughput(pool_runner, args.runs, args.concurrency))
            print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1] * 1e6:.0f} us" if "trip" in k
                                                                else f"{k} {v[-1]:,.0f}/s" for k, v in found.items()),
                  flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--processes", type=int, default=2, help="ray actors, and pool workers")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ideal = args.concurrency / (args.latency_ms / 1000)
    with running_server_process(latency_ms=args.latency_ms) as url:
        found = asyncio.run(bench(args, url))
    med = {k: statistics.median(v) for k, v in found.items()}
    print(f"\nmedian of {args.repeats} rounds; {args.processes} actors / workers; round trips: {args.round_trips} "
          f"one at a time; throughput: {args.runs} runs at concurrency {args.concurrency}, LM latency "
          f"{args.latency_ms:.0f} ms (ideal {ideal:,.0f} runs/s)")
    for name in ("ray round trip", "pool round trip", "bare ray task round trip", "bare ray actor round trip"):
        print(f"{name:<26}: p50 {med[name] * 1e6:8.0f} us")
    print(f"ray / pool round trip     : {med['ray round trip'] / med['pool round trip']:8.2f}x")
    print(f"ray / bare ray task       : {med['ray round trip'] / med['bare ray task round trip']:8.2f}x")
    print(f"ray / bare ray actor call : {med['ray round trip'] / med['bare ray actor round trip']:8.2f}x")
    for name in ("ray throughput", "pool throughput"):
        print(f"{name:<26}: {med[name]:8,.0f} runs/s = {med[name] / ideal:6.1%} of ideal")
    print(f"ray / pool throughput     : {med['ray throughput'] / med['pool throughput']:8.2f}")


if __name__ == "__main__":
    main()
