"""Pool benchmarks, each against its peer measured in the same run.

1. Round trip (one request at a time) of a trivial program (a single ``return`` step):
   the pool adapter vs a bare pyzmq DEALER/ROUTER + msgpack echo (targets: p50 at most 2x the
   bare echo) vs ``concurrent.futures.ProcessPoolExecutor`` running the same program through the
   native executor (target: pool p50 below it).
2. Throughput: ``examples/classify.yaml`` (in-process reference LM) through the pool vs through a
   ``ProcessPoolExecutor`` with the same number of processes, each running the native executor
   (target: at least 3x).

    python bench/bench_pool.py [--round-trips 2000] [--runs 4000] [--workers 2] [--concurrency 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio
from stepbridge import RunOptions, load_program
from stepbridge.bridge.pool import PoolAdapter
from stepbridge.validate import validate_data

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ECHO = {"stepbridge": 1, "name": "echo", "signature": "question -> answer",
        "steps": [{"return": {"answer": "$inputs.question"}}]}

ECHO_WORKER = """
import sys, zmq, msgpack
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.IDENTITY, b"echo")
s.connect(sys.argv[1])
s.send_multipart([b"READY"])
while True:
    frames = s.recv_multipart()
    if frames[0] == b"STOP":
        break
    body = msgpack.unpackb(frames[1])
    s.send_multipart([b"REPLY", msgpack.packb({"answer": body["question"]})])
"""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def fmt(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5) * 1e6:8.0f} µs   p99 {pct(values, 0.99) * 1e6:8.0f} µs"


# -- ProcessPoolExecutor side: the native executor in each process ------------------------------
_STATE: dict[str, Any] = {}


def _ppe_run(source: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    from stepbridge.adapters.native import NativeAdapter

    if "loop" not in _STATE:
        _STATE["loop"] = asyncio.new_event_loop()
        _STATE["adapter"] = NativeAdapter()
        _STATE["programs"] = {}
    key = str(source)
    program = _STATE["programs"].get(key)
    if program is None:
        program = _STATE["programs"][key] = (load_program(Path(source)) if isinstance(source, str)
                                             else validate_data(source))
    result = _STATE["loop"].run_until_complete(_STATE["adapter"].run(program, inputs, RunOptions()))
    return result.outputs


# -- 1. round trips -----------------------------------------------------------------------------
async def bare_echo(n: int) -> list[float]:
    ctx = zmq.asyncio.Context()
    router = ctx.socket(zmq.ROUTER)
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"sb-bench-{os.getpid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    address = f"ipc://{directory}/echo.sock"
    router.bind(address)
    proc = subprocess.Popen([sys.executable, "-c", ECHO_WORKER, address])
    try:
        identity, _ = await router.recv_multipart()
        times = []
        for i in range(n + 50):
            t0 = time.perf_counter()
            await router.send_multipart([identity, b"REQ", msgpack.packb({"question": f"q{i}"})])
            _, _, body = await router.recv_multipart()
            msgpack.unpackb(body)
            if i >= 50:
                times.append(time.perf_counter() - t0)
        await router.send_multipart([identity, b"STOP"])
        return times
    finally:
        proc.wait(timeout=10)
        router.close(linger=0)
        ctx.term()


async def pool_round_trips(n: int) -> list[float]:
    program = validate_data(ECHO)
    pool = PoolAdapter(workers=1, capacity=16)
    await pool.start()
    try:
        times = []
        for i in range(n + 50):
            t0 = time.perf_counter()
            await pool.run(program, {"question": f"q{i}"}, RunOptions())
            if i >= 50:
                times.append(time.perf_counter() - t0)
        return times
    finally:
        await pool.aclose()


def ppe_round_trips(n: int) -> list[float]:
    with ProcessPoolExecutor(max_workers=1) as ex:
        times = []
        for i in range(n + 50):
            t0 = time.perf_counter()
            ex.submit(_ppe_run, ECHO, {"question": f"q{i}"}).result()
            if i >= 50:
                times.append(time.perf_counter() - t0)
        return times


# -- 2. throughput ------------------------------------------------------------------------------
TICKETS = ["I was charged twice, please refund me", "The app crashes when I log in",
           "Can I get a quote for 50 seats?", "My invoice is wrong", "Password reset does not work"]


async def pool_throughput(runs: int, workers: int, concurrency: int) -> float:
    program = load_program(EXAMPLES / "classify.yaml")
    pool = PoolAdapter(workers=workers, capacity=max(1, concurrency // workers))
    await pool.start()
    assert pool.router is not None
    await pool.router.wait_ready(workers)
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with limit:
            await pool.run(program, {"ticket": TICKETS[i % len(TICKETS)]}, RunOptions())

    try:
        await asyncio.gather(*(one(i) for i in range(min(200, runs))))  # warm up
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(runs)))
        return runs / (time.perf_counter() - t0)
    finally:
        await pool.aclose()


def ppe_throughput(runs: int, workers: int) -> float:
    source = str(EXAMPLES / "classify.yaml")
    with ProcessPoolExecutor(max_workers=workers) as ex:
        list(ex.map(_ppe_run, [source] * 200, [{"ticket": TICKETS[i % 5]} for i in range(200)]))  # warm up
        t0 = time.perf_counter()
        futures = [ex.submit(_ppe_run, source, {"ticket": TICKETS[i % len(TICKETS)]}) for i in range(runs)]
        for fut in futures:
            fut.result()
        return runs / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()

    print(f"round trip, trivial program, {args.round_trips} sequential requests")
    echo = asyncio.run(bare_echo(args.round_trips))
    pool = asyncio.run(pool_round_trips(args.round_trips))
    ppe = ppe_round_trips(args.round_trips)
    print(f"  bare pyzmq DEALER/ROUTER + msgpack echo  {fmt(echo)}")
    print(f"  pool adapter                             {fmt(pool)}")
    print(f"  ProcessPoolExecutor (native executor)    {fmt(ppe)}")
    p50 = pct(pool, 0.5)
    print(f"  pool p50 / bare echo p50 = {p50 / pct(echo, 0.5):.2f}x (target <= 2x); "
          f"pool p50 / ProcessPoolExecutor p50 = {p50 / pct(ppe, 0.5):.2f}x (target < 1x)")

    print(f"\nthroughput, classify.yaml, {args.runs} runs, {args.workers} processes")
    pool_tp = asyncio.run(pool_throughput(args.runs, args.workers, args.concurrency))
    ppe_tp = ppe_throughput(args.runs, args.workers)
    print(f"  pool (concurrency {args.concurrency})               {pool_tp:9.0f} runs/s")
    print(f"  ProcessPoolExecutor (native executor)    {ppe_tp:9.0f} runs/s")
    print(f"  pool / ProcessPoolExecutor = {pool_tp / ppe_tp:.2f}x (target >= 3x)")
    print(f"\n(machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, pyzmq {zmq.__version__})")


if __name__ == "__main__":
    main()
