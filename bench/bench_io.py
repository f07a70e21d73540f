"""I/O-bound throughput: 2,000 runs at concurrency 200 against a loopback LM with 50 ms latency.

Ideal = concurrency / latency = 4,000 runs/s (target: >= 90% on native and pool). The peer is
DSPy's own ``Evaluate(num_threads=...)`` running the same one-predictor program against the same
server, in the same run. The reference LM runs in its own process so it does not share our GIL.

    python bench/bench_io.py [--runs 2000] [--concurrency 200] [--latency-ms 50] [--backends native,pool,dspy]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import stepbridge as sb
from stepbridge.lm import LMPool, LMProfile
from stepbridge.reference_lm import running_server_process

PROGRAM = Path(__file__).resolve().parent.parent / "examples" / "classify.yaml"


def rows(n: int) -> list[dict[str, Any]]:
    return [{"ticket": f"ticket {i}: my invoice is wrong"} for i in range(n)]


def bench_native(url: str, n: int, concurrency: int) -> float:
    profile = LMProfile(name="default", base_url=url, model="openai/reference", concurrency=concurrency)
    from stepbridge.adapters.native import NativeAdapter

    adapter = NativeAdapter(lm=LMPool(profiles={"default": profile}))

    async def go() -> float:
        async with sb.Runner(adapter) as runner:
            await runner.batch(PROGRAM, rows(concurrency), concurrency=concurrency)  # warm connections
            start = time.perf_counter()
            items = await runner.batch(PROGRAM, rows(n), concurrency=concurrency)
            elapsed = time.perf_counter() - start
        failed = [i for i in items if not i.ok]
        assert not failed, failed[0].error
        return n / elapsed

    return asyncio.run(go())


def bench_pool(url: str, n: int, concurrency: int, workers: int) -> float | None:
    try:
        from stepbridge.bridge.pool import PoolAdapter
    except ImportError:
        return None
    os.environ["STEPBRIDGE_LM_BASE_URL"] = url
    os.environ["STEPBRIDGE_LM_MODEL"] = "openai/reference"
    try:
        async def go() -> float:
            async with sb.Runner(PoolAdapter(workers=workers, capacity=concurrency)) as runner:
                await runner.batch(PROGRAM, rows(concurrency), concurrency=concurrency)
                start = time.perf_counter()
                items = await runner.batch(PROGRAM, rows(n), concurrency=concurrency)
                elapsed = time.perf_counter() - start
            failed = [i for i in items if not i.ok]
            assert not failed, failed[0].error
            return n / elapsed

        return asyncio.run(go())
    finally:
        os.environ.pop("STEPBRIDGE_LM_BASE_URL", None)
        os.environ.pop("STEPBRIDGE_LM_MODEL", None)


def bench_dspy_evaluate(url: str, n: int, threads: int) -> float:
    import dspy

    program = dspy.Predict("ticket -> team: Literal['billing', 'technical', 'sales'], urgent: bool")
    lm = dspy.LM("openai/reference", api_base=url, api_key="unused", cache=False, num_retries=0)
    devset = [dspy.Example(**r).with_inputs("ticket") for r in rows(n)]
    evaluate = dspy.Evaluate(devset=devset, metric=lambda ex, pred, trace=None: True, num_threads=threads,
                             display_progress=False, provide_traceback=True)
    with dspy.context(lm=lm):
        evaluate(program, devset=devset[:threads])  # warm up
        start = time.perf_counter()
        evaluate(program)
        elapsed = time.perf_counter() - start
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backends", default="native,pool,dspy")
    args = parser.parse_args()
    ideal = args.concurrency / (args.latency_ms / 1000)
    chosen = set(args.backends.split(","))
    with running_server_process(latency_ms=args.latency_ms) as url:
        print(f"ideal: {ideal:,.0f} runs/s  ({args.runs} runs, concurrency {args.concurrency}, "
              f"LM latency {args.latency_ms:.0f} ms)")
        if "native" in chosen:
            rate = bench_native(url, args.runs, args.concurrency)
            print(f"native            : {rate:8,.0f} runs/s  = {rate / ideal:6.1%} of ideal (target >= 90%)")
        if "pool" in chosen:
            pool_rate = bench_pool(url, args.runs, args.concurrency, args.workers)
            if pool_rate is None:
                print("pool              : not available")
            else:
                print(f"pool ({args.workers} workers)  : {pool_rate:8,.0f} runs/s  = {pool_rate / ideal:6.1%} of ideal")
        if "dspy" in chosen:
            peer = bench_dspy_evaluate(url, args.runs, args.concurrency)
            print(f"dspy Evaluate     : {peer:8,.0f} runs/s  = {peer / ideal:6.1%} of ideal (peer)")
            if "native" in chosen:
                print(f"native / dspy     : {rate / peer:8.1f}x")


if __name__ == "__main__":
    main()
