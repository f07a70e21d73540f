"""Recording overhead: native throughput with every execution recorded vs without, same run.

Target: recording cuts throughput by at most 20%. Runs use the in-process reference LM (no socket),
which makes this the worst case: the LM costs almost nothing, so storage is all that differs.
``--latency-ms`` adds LM latency (a loopback server) for the realistic case.

    python bench/bench_storage.py [--runs 2000] [--concurrency 32] [--db sqlite|postgresql://...] [--repeat N]

``--repeat`` alternates the two measurements N times and keeps the best of each (the machine may be
shared; the best run is the least disturbed one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import stepbridge as sb
from stepbridge.adapters.native import NativeAdapter
from stepbridge.lm import LMPool, LMProfile

PROGRAM = Path(__file__).resolve().parent.parent / "examples" / "classify.yaml"


def throughput(runs: int, concurrency: int, store: Any, url: str | None) -> float:
    profiles = {"default": LMProfile(base_url=url, model="openai/reference", concurrency=concurrency)} if url else {}
    rows = [{"ticket": f"ticket {i}: my invoice is wrong"} for i in range(runs)]

    async def go() -> float:
        async with sb.Runner(NativeAdapter(lm=LMPool(profiles=profiles)), store=store) as runner:
            await runner.batch(PROGRAM, rows[:50], concurrency=concurrency)
            start = time.perf_counter()
            items = await runner.batch(PROGRAM, rows, concurrency=concurrency)
            elapsed = time.perf_counter() - start
        assert all(i.ok for i in items), next(i.error for i in items if not i.ok)
        return runs / elapsed

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--db", default="sqlite")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    from stepbridge.storage import Store

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url = None
        if args.latency_ms:
            from stepbridge.reference_lm import running_server_process

            url = stack.enter_context(running_server_process(latency_ms=args.latency_ms))
        db = f"sqlite:///{tmp}/bench.db" if args.db == "sqlite" else args.db
        store = Store(db)
        plain = recorded = 0.0
        for _ in range(max(1, args.repeat)):
            plain = max(plain, throughput(args.runs, args.concurrency, None, url))
            recorded = max(recorded, throughput(args.runs, args.concurrency, store, url))
        store.close()
    print(f"native, not recorded : {plain:8,.0f} runs/s")
    print(f"native, recorded     : {recorded:8,.0f} runs/s  ({args.db})")
    print(f"cost of recording    : {1 - recorded / plain:8.1%}   (target <= 20%)")


if __name__ == "__main__":
    main()
