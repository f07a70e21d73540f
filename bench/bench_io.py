"""I/O-bound throughput: 2,000 runs at concurrency 200 against a loopback LM with 50 ms latency.

Ideal = concurrency / latency = 4,000 runs/s. The practical ceiling on one machine is a bare aiohttp
client sending the same request bodies (the prompts native builds) at the same concurrency to the same
server: target native >= 90% of it (DESIGN section 9). DSPy's own ``Evaluate(num_threads=...)`` running
the same one-predictor program against the same server is reported too, in the same run. The reference
LM runs in its own process so it does not share our GIL.

Each figure is the median of ``--repeats`` runs; the client's CPU time per run (``time.process_time``)
is printed beside the wall-clock rate because it stays meaningful on a loaded machine, and so is the
LM server's (every thread of its process): when the two cores are the limit, the server and the client
share them, so a client's CPU per run decides its rate as much as the server's does.

    python bench/bench_io.py [--runs 2000] [--concurrency 200] [--latency-ms 50] [--repeats 3]
                             [--backends aiohttp,native,pool,dspy] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import stepbridge as sb
from cpu import cpu_seconds
from stepbridge.lm import LMPool, LMProfile
from stepbridge.reference_lm import running_server_process

PROGRAM = Path(__file__).resolve().parent.parent / "examples" / "classify.yaml"


def rows(n: int) -> list[dict[str, Any]]:
    return [{"ticket": f"ticket {i}: my invoice is wrong"} for i in range(n)]


Measure = tuple[float, float, float]  # (runs per second, client and server CPU microseconds per run)
SERVER_PID: list[int] = []  # the LM server process, once started


def server_cpu() -> float:
    """CPU seconds of the LM server process so far, every thread (0 where Linux's accounting is missing)."""
    return sum(cpu_seconds(pid) for pid in SERVER_PID)


def _clock() -> tuple[float, float, float]:
    return time.perf_counter(), time.process_time(), server_cpu()


def _run(main: Callable[[], Coroutine[Any, Any, Measure]], use_uvloop: bool) -> Measure:
    if use_uvloop:
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def _timed(n: int, began: tuple[float, float, float]) -> Measure:
    start, cpu, server = began
    elapsed, used, served = time.perf_counter() - start, time.process_time() - cpu, server_cpu() - server
    return n / elapsed, used / n * 1e6, served / n * 1e6


def request_bodies(rows_: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat-completions bodies native sends for these rows (same prompts, same model name)."""
    from stepbridge.formats import Prompt
    from stepbridge.lm import ChatRequest

    program = sb.load_program(PROGRAM)
    module = program.modules["route"]
    prompt = Prompt(module.effective_signature, module.demos, "chat", getattr(program, "type_space", None))
    return [ChatRequest(model="openai/reference", messages=prompt.messages(r)).body() for r in rows_]


def bench_aiohttp(url: str, n: int, concurrency: int, use_uvloop: bool = False) -> Measure:
    """The practical ceiling: one aiohttp session, ``concurrency`` workers, each POSTing a prepared body,
    reading the JSON reply and taking the completion text. Nothing else."""
    import aiohttp

    warm, bodies = request_bodies(rows(concurrency)), request_bodies(rows(n))
    endpoint = url.rstrip("/") + "/chat/completions"

    async def go() -> Measure:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def post(body: dict[str, Any]) -> str:
                data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
                async with session.post(endpoint, data=data, headers={"content-type": "application/json"}) as resp:
                    assert resp.status == 200, resp.status
                    reply = await resp.json()
                text = reply["choices"][0]["message"]["content"]
                assert isinstance(text, str)
                return text

            async def drain(queue: list[dict[str, Any]]) -> None:
                while queue:
                    await post(queue.pop())

            async def all_of(items: list[dict[str, Any]]) -> None:
                queue = list(items)
                await asyncio.gather(*(drain(queue) for _ in range(concurrency)))

            await all_of(warm)  # warm connections
            began = _clock()
            await all_of(bodies)
            return _timed(n, began)

    return _run(go, use_uvloop)


def bench_native(url: str, n: int, concurrency: int, use_uvloop: bool = False) -> Measure:
    profile = LMProfile(name="default", base_url=url, model="openai/reference", concurrency=concurrency)
    from stepbridge.adapters.native import NativeAdapter

    adapter = NativeAdapter(lm=LMPool(profiles={"default": profile}))

    async def go() -> Measure:
        async with sb.Runner(adapter) as runner:
            await runner.batch(PROGRAM, rows(concurrency), concurrency=concurrency)  # warm connections
            began = _clock()
            items = await runner.batch(PROGRAM, rows(n), concurrency=concurrency)
            measured = _timed(n, began)
        failed = [i for i in items if not i.ok]
        assert not failed, failed[0].error
        return measured

    return _run(go, use_uvloop)


def bench_pool(url: str, n: int, concurrency: int, workers: int) -> Measure | None:
    try:
        from stepbridge.bridge.pool import PoolAdapter
    except ImportError:
        return None
    os.environ["STEPBRIDGE_LM_BASE_URL"] = url
    os.environ["STEPBRIDGE_LM_MODEL"] = "openai/reference"
    try:
        async def go() -> Measure:
            async with sb.Runner(PoolAdapter(workers=workers, capacity=concurrency)) as runner:
                await runner.batch(PROGRAM, rows(concurrency), concurrency=concurrency)
                began = _clock()
                items = await runner.batch(PROGRAM, rows(n), concurrency=concurrency)
                rate, _, served = _timed(n, began)
            failed = [i for i in items if not i.ok]
            assert not failed, failed[0].error
            return rate, float("nan"), served  # the client's CPU is in the worker processes

        return asyncio.run(go())
    finally:
        os.environ.pop("STEPBRIDGE_LM_BASE_URL", None)
        os.environ.pop("STEPBRIDGE_LM_MODEL", None)


def bench_dspy_evaluate(url: str, n: int, threads: int) -> Measure:
    import dspy

    program = dspy.Predict("ticket -> team: Literal['billing', 'technical', 'sales'], urgent: bool")
    lm = dspy.LM("openai/reference", api_base=url, api_key="unused", cache=False, num_retries=0)
    devset = [dspy.Example(**r).with_inputs("ticket") for r in rows(n)]
    evaluate = dspy.Evaluate(devset=devset, metric=lambda ex, pred, trace=None: True, num_threads=threads,
                             display_progress=False, provide_traceback=True)
    with dspy.context(lm=lm):
        evaluate(program, devset=devset[:threads])  # warm up
        began = _clock()
        evaluate(program)
        return _timed(n, began)


def _median(values: list[Measure]) -> Measure:
    return (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values),
            statistics.median(v[2] for v in values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="aiohttp,native,pool,dspy")
    parser.add_argument("--uvloop", action="store_true", help="run native and its aiohttp peer on uvloop")
    args = parser.parse_args()
    ideal = args.concurrency / (args.latency_ms / 1000)
    chosen = set(args.backends.split(","))
    found: dict[str, list[Measure]] = {}
    with running_server_process(latency_ms=args.latency_ms) as url:
        SERVER_PID[:] = [url.pid] if url.pid else []
        print(f"ideal: {ideal:,.0f} runs/s  ({args.runs} runs, concurrency {args.concurrency}, "
              f"LM latency {args.latency_ms:.0f} ms, median of {args.repeats}, "
              f"{'uvloop' if args.uvloop else 'asyncio'} loop)")
        for _ in range(args.repeats):  # interleaved, so a burst of load elsewhere hits every side alike
            if "aiohttp" in chosen:
                found.setdefault("aiohttp", []).append(bench_aiohttp(url, args.runs, args.concurrency, args.uvloop))
            if "native" in chosen:
                found.setdefault("native", []).append(bench_native(url, args.runs, args.concurrency, args.uvloop))
            if "pool" in chosen and (pooled := bench_pool(url, args.runs, args.concurrency, args.workers)):
                found.setdefault("pool", []).append(pooled)
            if "dspy" in chosen:
                found.setdefault("dspy", []).append(bench_dspy_evaluate(url, args.runs, args.concurrency))
    med = {name: _median(values) for name, values in found.items()}
    labels = {"aiohttp": "bare aiohttp (ceiling)", "native": "native", "pool": f"pool ({args.workers} workers)",
              "dspy": "dspy Evaluate"}
    for name, (rate, cpu, served) in med.items():
        cpu_text = f"  {cpu:7.0f} us CPU/run" if cpu == cpu else f"  {'':7} (client CPU elsewhere)"
        print(f"{labels[name]:<24}: {rate:8,.0f} runs/s = {rate / ideal:6.1%} of ideal{cpu_text}; "
              f"LM server {served:5.0f} us CPU/run")
    if "native" in med and "aiohttp" in med:
        (rate, cpu, served), (peer, peer_cpu, peer_served) = med["native"], med["aiohttp"]
        print(f"native / aiohttp        : {rate / peer:8.2f}  (target >= 0.9); CPU per run {cpu / peer_cpu:.2f}x, "
              f"client + server {(cpu + served) / (peer_cpu + peer_served):.2f}x")
    if "native" in med and "dspy" in med:
        print(f"native / dspy Evaluate  : {med['native'][0] / med['dspy'][0]:8.1f}x")


if __name__ == "__main__":
    main()
