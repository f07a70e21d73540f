"""Recording overhead: native throughput with every execution recorded vs without, same run.

Target: recording cuts throughput by at most 20%. Runs use the in-process reference LM (no socket),
which makes this the worst case: the LM costs almost nothing, so storage is all that differs.
``--latency-ms`` adds LM latency (a loopback server) for the realistic case.

    python bench/bench_storage.py [--runs 2000] [--concurrency 32] [--db sqlite|postgresql://...] [--repeat N]

``--repeat`` alternates the two measurements N times (default 3) and prints the median of each, with
the process's CPU time per run (``time.process_time``: the loop and the writer thread together),
which stays meaningful when the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import stepbridge as sb
from stepbridge.adapters.native import NativeAdapter
from stepbridge.lm import LMPool, LMProfile

PROGRAM = Path(__file__).resolve().parent.parent / "examples" / "classify.yaml"


def throughput(runs: int, concurrency: int, store: Any, url: str | None) -> tuple[float, float]:
    profiles = {"default": LMProfile(base_url=url, model="openai/reference", concurrency=concurrency)} if url else {}
    rows = [{"ticket": f"ticket {i}: my invoice is wrong"} for i in range(runs)]

    async def go() -> tuple[float, float]:
        async with sb.Runner(NativeAdapter(lm=LMPool(profiles=profiles)), store=store) as runner:
            await runner.batch(PROGRAM, rows[:50], concurrency=concurrency)
            start, cpu = time.perf_counter(), time.process_time()
            items = await runner.batch(PROGRAM, rows, concurrency=concurrency)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert all(i.ok for i in items), next(i.error for i in items if not i.ok)
        return runs / elapsed, cpu / runs * 1e6

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--db", default="sqlite")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from stepbridge.storage import Store

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url = None
        if args.latency_ms:
            from stepbridge.reference_lm import running_server_process

            url = stack.enter_context(running_server_process(latency_ms=args.latency_ms))
        db = f"sqlite:///{tmp}/bench.db" if args.db == "sqlite" else args.db
        store = Store(db)
        plains, recordeds = [], []
        for _ in range(max(1, args.repeat)):
            plains.append(throughput(args.runs, args.concurrency, None, url))
            recordeds.append(throughput(args.runs, args.concurrency, store, url))
        store.close()
    plain, plain_cpu = (statistics.median(p[i] for p in plains) for i in (0, 1))
    recorded, recorded_cpu = (statistics.median(r[i] for r in recordeds) for i in (0, 1))
    print(f"LM latency {args.latency_ms:.0f} ms, concurrency {args.concurrency}, {args.runs} runs, "
          f"median of {max(1, args.repeat)}")
    print(f"native, not recorded : {plain:8,.0f} runs/s  {plain_cpu:6.0f} us CPU/run")
    print(f"native, recorded     : {recorded:8,.0f} runs/s  {recorded_cpu:6.0f} us CPU/run  ({args.db})")
    print(f"cost of recording    : {1 - recorded / plain:8.1%}   (target <= 20%); "
          f"CPU per run +{recorded_cpu - plain_cpu:.0f} us")


if __name__ == "__main__":
    main()
