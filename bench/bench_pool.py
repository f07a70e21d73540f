"""Pool benchmarks, each against its peer measured in the same run.

1. Round trip (one request at a time) of a trivial program (a single ``return`` step):
   the pool adapter vs a bare pyzmq DEALER/ROUTER + msgpack echo (targets: p50 at most 1.5x the
   bare echo) vs ``concurrent.futures.ProcessPoolExecutor`` running the same program through the
   native executor (target: pool p50 below it).
2. Throughput: ``examples/classify.yaml`` (in-process reference LM) through the pool vs through a
   ``ProcessPoolExecutor`` with the same number of processes, each running the native executor
   (target: at least 2x, DESIGN section 9).

The peers alternate in ``--rounds`` chunks (same processes throughout) so that noise from a shared
machine falls on all of them alike. Besides wall clock, each peer's CPU time per round trip (per run)
is printed for this process (caller and router) and the other ones (echo peer, pool workers,
executor processes), every thread counted: on a loaded machine those are the steadier figures. The
whole measurement runs ``--repeat`` times and the medians close the output.

    python bench/bench_pool.py [--round-trips 2000] [--runs 4000] [--workers 2] [--concurrency 256] [--rounds 5]
                               [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio
from cpu import cpu_seconds
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


class CpuMeter:
    """CPU seconds spent by this process and by some child processes between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.caller = 0.0
        self.peer = 0.0

    def measure(self, peer_pids: list[int]) -> Any:
        meter = self

        class _Span:
            def __enter__(self) -> None:
                self.t = (cpu_seconds(), sum(cpu_seconds(p) for p in peer_pids))

            def __exit__(self, *exc: Any) -> None:
                meter.caller += cpu_seconds() - self.t[0]
                meter.peer += sum(cpu_seconds(p) for p in peer_pids) - self.t[1]

        return _Span()


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


# -- 1. round trips ----------------------------------------------------------------------------
class BareEcho:
    """A bare pyzmq ROUTER in this process and a DEALER echo process: the floor for a round trip."""

    async def start(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"sb-bench-{os.getpid()}"
        directory.mkdir(mode=0o700, exist_ok=True)
        address = f"ipc://{directory}/echo.sock"
        self.router.bind(address)
        self.proc = subprocess.Popen([sys.executable, "-c", ECHO_WORKER, address])
        self.identity, _ = await self.router.recv_multipart()

    async def round_trips(self, n: int, offset: int = 0) -> list[float]:
        times = []
        for i in range(offset, offset + n):
            t0 = time.perf_counter()
            await self.router.send_multipart([self.identity, b"REQ", msgpack.packb({"question": f"q{i}"})])
            _, _, body = await self.router.recv_multipart()
            msgpack.unpackb(body)
            times.append(time.perf_counter() - t0)
        return times

    async def close(self) -> None:
        await self.router.send_multipart([self.identity, b"STOP"])
        self.proc.wait(timeout=10)
        self.router.close(linger=0)
        self.ctx.term()


async def pool_round_trips(pool: PoolAdapter, n: int, offset: int = 0) -> list[float]:
    program = validate_data(ECHO)
    times = []
    for i in range(offset, offset + n):
        t0 = time.perf_counter()
        await pool.run(program, {"question": f"q{i}"})
        times.append(time.perf_counter() - t0)
    return times


def ppe_round_trips(ex: ProcessPoolExecutor, n: int, offset: int = 0) -> list[float]:
    times = []
    for i in range(offset, offset + n):
        t0 = time.perf_counter()
        ex.submit(_ppe_run, ECHO, {"question": f"q{i}"}).result()
        times.append(time.perf_counter() - t0)
    return times


async def round_trip_rounds(n: int, rounds: int) -> tuple[dict[str, list[list[float]]], dict[str, CpuMeter]]:
    """Alternate the three peers in ``rounds`` chunks so machine noise hits them alike; also the CPU
    each spends (this process: caller and router; the other: the echo peer, pool worker or executor process)."""
    echo = BareEcho()
    await echo.start()
    pool = PoolAdapter(workers=1, capacity=16)
    await pool.start()
    assert pool.router is not None
    out: dict[str, list[list[float]]] = {"echo": [], "pool": [], "ppe": []}
    cpu = {k: CpuMeter() for k in out}
    try:
        with ProcessPoolExecutor(max_workers=1) as ex:
            await echo.round_trips(50)
            await pool_round_trips(pool, 50)
            ppe_round_trips(ex, 50)
            pids = {"echo": [echo.proc.pid], "pool": [s.pid for s in pool.router.scheduler.slots if s.pid],
                    "ppe": list(ex._processes)}
            chunk = max(1, n // rounds)
            for r in range(rounds):
                with cpu["echo"].measure(pids["echo"]):
                    out["echo"].append(await echo.round_trips(chunk, r * chunk))
                with cpu["pool"].measure(pids["pool"]):
                    out["pool"].append(await pool_round_trips(pool, chunk, r * chunk))
                with cpu["ppe"].measure(pids["ppe"]):
                    out["ppe"].append(ppe_round_trips(ex, chunk, r * chunk))
    finally:
        await pool.aclose()
        await echo.close()
    return out, cpu


# -- 2. throughput ------------------------------------------------------------------------------
TICKETS = ["I was charged twice, please refund me", "The app crashes when I log in",
           "Can I get a quote for 50 seats?", "My invoice is wrong", "Password reset does not work"]


async def pool_throughput(pool: PoolAdapter, runs: int, concurrency: int) -> float:
    """``concurrency`` callers, each running one request after another (as in bench_io.py). Not a task
    per run behind a semaphore: thousands of pending tasks cost this process 15-25 µs per run in the
    cyclic garbage collector walking them, a cost of the harness rather than of the pool."""
    program = load_program(EXAMPLES / "classify.yaml")
    todo = iter(range(runs))

    async def caller() -> None:
        for i in todo:
            await pool.run(program, {"ticket": TICKETS[i % len(TICKETS)]})

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(min(concurrency, runs))))
    return runs / (time.perf_counter() - t0)


def ppe_throughput(ex: ProcessPoolExecutor, runs: int) -> float:
    source = str(EXAMPLES / "classify.yaml")
    t0 = time.perf_counter()
    futures = [ex.submit(_ppe_run, source, {"ticket": TICKETS[i % len(TICKETS)]}) for i in range(runs)]
    for fut in futures:
        fut.result()
    return runs / (time.perf_counter() - t0)


async def throughput_rounds(runs: int, workers: int, concurrency: int,
                            rounds: int) -> tuple[dict[str, list[float]], dict[str, CpuMeter]]:
    pool = PoolAdapter(workers=workers, capacity=max(1, concurrency // workers))
    await pool.start()
    assert pool.router is not None
    await pool.router.wait_ready(workers)
    out: dict[str, list[float]] = {"pool": [], "ppe": []}
    cpu = {k: CpuMeter() for k in out}
    try:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            await pool_throughput(pool, min(200, runs), concurrency)  # warm up
            ppe_throughput(ex, min(200, runs))
            pids = {"pool": [s.pid for s in pool.router.scheduler.slots if s.pid], "ppe": list(ex._processes)}
            chunk = max(1, runs // rounds)
            for _ in range(rounds):
                with cpu["pool"].measure(pids["pool"]):
                    out["pool"].append(await pool_throughput(pool, chunk, concurrency))
                with cpu["ppe"].measure(pids["ppe"]):
                    out["ppe"].append(ppe_throughput(ex, chunk))
    finally:
        await pool.aclose()
    return out, cpu


def us(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e6:6.0f} µs"


def one_run(args: argparse.Namespace) -> dict[str, float]:
    """One full measurement; the figures it returns are summarised as medians over ``--repeat``."""
    print(f"round trip, trivial program, {args.round_trips} sequential requests per peer, "
          f"alternating in {args.rounds} rounds")
    rt, rt_cpu = asyncio.run(round_trip_rounds(args.round_trips, args.rounds))
    echo, pool, ppe = ([t for chunk in rt[k] for t in chunk] for k in ("echo", "pool", "ppe"))
    n = len(echo)
    for name, label, values in (("echo", "bare pyzmq DEALER/ROUTER + msgpack echo", echo),
                                ("pool", "pool adapter", pool), ("ppe", "ProcessPoolExecutor (native executor)", ppe)):
        c = rt_cpu[name]
        print(f"  {label:40} {fmt(values)}   CPU per round trip: this process {us(c.caller, n)}, "
              f"the other {us(c.peer, n)}")
    p50 = pct(pool, 0.5)
    per_round = sorted(pct(pl, 0.5) / pct(e, 0.5) for pl, e in zip(rt["pool"], rt["echo"], strict=True))
    figures = {
        "rt_p50_echo": p50 / pct(echo, 0.5), "rt_p50_ppe": p50 / pct(ppe, 0.5),
        "rt_cpu_echo": (rt_cpu["pool"].caller + rt_cpu["pool"].peer) / (rt_cpu["echo"].caller + rt_cpu["echo"].peer),
        "rt_cpu_ppe": (rt_cpu["pool"].caller + rt_cpu["pool"].peer) / (rt_cpu["ppe"].caller + rt_cpu["ppe"].peer),
        **{f"rt_cpu_{k}_{side}_us": getattr(c, side) / n * 1e6
           for k, c in rt_cpu.items() for side in ("caller", "peer")},
    }
    print(f"  pool p50 / bare echo p50 = {figures['rt_p50_echo']:.2f}x (target <= 1.5x; per round "
          f"{per_round[0]:.2f}-{per_round[-1]:.2f}x); pool p50 / ProcessPoolExecutor p50 = "
          f"{figures['rt_p50_ppe']:.2f}x (target < 1x)")
    print(f"  CPU per round trip, both processes: pool / echo = {figures['rt_cpu_echo']:.2f}x, "
          f"pool / ProcessPoolExecutor = {figures['rt_cpu_ppe']:.2f}x")

    print(f"\nthroughput, classify.yaml (in-process reference LM, CPU-bound), {args.runs} runs per peer, "
          f"{args.workers} processes, alternating in {args.rounds} rounds")
    tp, tp_cpu = asyncio.run(throughput_rounds(args.runs, args.workers, args.concurrency, args.rounds))
    pool_tp, ppe_tp = statistics.median(tp["pool"]), statistics.median(tp["ppe"])
    ratios = sorted(a / b for a, b in zip(tp["pool"], tp["ppe"], strict=True))
    runs = max(1, args.runs // args.rounds) * args.rounds
    print(f"  pool (concurrency {args.concurrency})               {pool_tp:9.0f} runs/s (median of rounds)   "
          f"CPU per run: this process {us(tp_cpu['pool'].caller, runs)}, workers {us(tp_cpu['pool'].peer, runs)}")
    print(f"  ProcessPoolExecutor (native executor)    {ppe_tp:9.0f} runs/s (median of rounds)   "
          f"CPU per run: this process {us(tp_cpu['ppe'].caller, runs)}, workers {us(tp_cpu['ppe'].peer, runs)}")
    pool_cpu = tp_cpu["pool"].caller + tp_cpu["pool"].peer
    ppe_cpu = tp_cpu["ppe"].caller + tp_cpu["ppe"].peer
    figures.update(tp_ratio=pool_tp / ppe_tp, tp_cpu_ratio=ppe_cpu / pool_cpu,
                   tp_cpu_pool_caller_us=tp_cpu["pool"].caller / runs * 1e6,
                   tp_cpu_pool_peer_us=tp_cpu["pool"].peer / runs * 1e6,
                   tp_cpu_ppe_caller_us=tp_cpu["ppe"].caller / runs * 1e6,
                   tp_cpu_ppe_peer_us=tp_cpu["ppe"].peer / runs * 1e6)
    print(f"  pool / ProcessPoolExecutor = {figures['tp_ratio']:.2f}x (target >= 2x; per round "
          f"{ratios[0]:.2f}-{ratios[-1]:.2f}x); runs per CPU second, all processes: "
          f"{figures['tp_cpu_ratio']:.2f}x")
    print(f"\n(machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, Python "
          f"{sys.version.split()[0]}, pyzmq {zmq.__version__}; the I/O-bound figure is bench/bench_io.py)")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="alternate the peers in this many chunks")
    parser.add_argument("--repeat", type=int, default=3, help="whole measurements; medians are reported")
    args = parser.parse_args()
    results = []
    for i in range(args.repeat):
        print(f"=== measurement {i + 1} of {args.repeat}")
        results.append(one_run(args))
        print()
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"=== medians of {args.repeat} measurements")
    print(f"  round trip p50: pool / echo {med['rt_p50_echo']:.2f}x (target <= 1.5x), pool / ProcessPoolExecutor "
          f"{med['rt_p50_ppe']:.2f}x (target < 1x)")
    print(f"  CPU per round trip (caller+router | other process): echo {med['rt_cpu_echo_caller_us']:.0f} | "
          f"{med['rt_cpu_echo_peer_us']:.0f} µs; pool {med['rt_cpu_pool_caller_us']:.0f} | "
          f"{med['rt_cpu_pool_peer_us']:.0f} µs; ProcessPoolExecutor {med['rt_cpu_ppe_caller_us']:.0f} | "
          f"{med['rt_cpu_ppe_peer_us']:.0f} µs; pool / echo {med['rt_cpu_echo']:.2f}x, pool / ProcessPool "
          f"{med['rt_cpu_ppe']:.2f}x")
    print(f"  throughput: pool / ProcessPoolExecutor {med['tp_ratio']:.2f}x wall clock (target >= 2x), "
          f"{med['tp_cpu_ratio']:.2f}x runs per CPU second; CPU per run (caller+router | workers): pool "
          f"{med['tp_cpu_pool_caller_us']:.0f} | {med['tp_cpu_pool_peer_us']:.0f} µs, ProcessPoolExecutor "
          f"{med['tp_cpu_ppe_caller_us']:.0f} | {med['tp_cpu_ppe_peer_us']:.0f} µs")


if __name__ == "__main__":
    main()
