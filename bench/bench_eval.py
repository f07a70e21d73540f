"""Evaluation and optimization vs DSPy (DESIGN section 9), measured in the same run.

1. ``stepbridge eval`` (the same code path: ``stepbridge.aevaluate`` with a store, so every row and
   execution is recorded) vs ``dspy.Evaluate(num_threads=N)``: the same one-predictor program, data,
   metric (exact match) and concurrency against a reference LM with 50 ms latency. Target: >= 3x the
   throughput. The concurrency, for both sides, is 200 by default, as in the I/O-bound benchmark
   (bench_io.py): ``dspy.Evaluate`` is bound by its CPU per row (one GIL) whatever its thread count, while
   at a low concurrency the ideal rate (concurrency / latency) bounds the other side first; at 64 on a
   fast machine the ideal, 1,280 rows/s, is 2.3x DSPy's rate, and the figure would measure that bound.
   The ratio the ideal allows is printed beside the figure.
2. Native few-shot bootstrapping (``stepbridge.optimize(optimizer="bootstrap")``) vs DSPy's
   ``BootstrapFewShot`` with the same settings, data and order at 20 ms latency (both give the same
   demos: tests/evals/test_optimize.py). Target: >= 10x faster wall clock.

The reference LM runs in its own process (its own GIL). Each figure is the median of ``--repeats`` runs,
the two sides interleaved so a burst of load elsewhere hits both alike.

    python bench/bench_eval.py [--rows 1000] [--concurrency 200] [--repeats 3] [--train 120]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import stepbridge as sb
from stepbridge.builtin_metrics import exact_match
from stepbridge.datasets import from_rows
from stepbridge.lm import LMPool, LMProfile
from stepbridge.reference_lm import running_server_process

PROGRAM = """\
stepbridge: 1
name: qa
signature: "question -> answer"
modules:
  answer: {type: chain_of_thought, signature: "question -> answer"}
steps:
  - call: answer
    with: {question: $inputs.question}
    as: r
  - return: {answer: $r.answer}
"""


def rows(n: int, prefix: str = "question") -> list[dict[str, str]]:
    """Right (the reference LM answers with the question) unless i is a multiple of 3."""
    return [{"question": f"{prefix}-{i:05d}", "answer": f"{prefix}-{i:05d}" if i % 3 else "wrong"} for i in range(n)]


def native_adapter(url: str, concurrency: int) -> Any:
    from stepbridge.adapters.native import NativeAdapter

    profile = LMProfile(name="default", base_url=url, model="openai/reference", concurrency=concurrency)
    return NativeAdapter(lm=LMPool(profiles={"default": profile}))


def bench_eval_native(url: str, n: int, concurrency: int, store_dir: Path | None) -> tuple[float, float]:
    """(rows per second, CPU microseconds per row) of ``aevaluate``: recorded in a fresh SQLite store
    (``store_dir``) or not at all. CPU is the whole process's (the loop and the store's writer thread)."""
    import contextlib

    from stepbridge.storage import Store

    program = sb.load_program(PROGRAM)
    data = from_rows(rows(n), program=program)
    warm = from_rows(rows(concurrency, "warm"), program=program)

    async def go() -> tuple[float, float]:
        opened = Store(f"sqlite:///{store_dir / f'eval-{time.monotonic_ns()}.db'}") if store_dir else None
        with opened or contextlib.nullcontext() as store:
            async with sb.Runner(native_adapter(url, concurrency), store=store) as runner:
                await sb.aevaluate(program, warm, "exact_match", runner=runner, store=store, concurrency=concurrency)
                start, cpu = time.perf_counter(), time.process_time()
                result = await sb.aevaluate(program, data, "exact_match", runner=runner, store=store,
                                            concurrency=concurrency)
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert result.errors == 0 and abs((result.score or 0) - (n - len(range(0, n, 3))) / n) < 1e-9, result
        return n / elapsed, cpu / n * 1e6

    return asyncio.run(go())


def dspy_lm(url: str) -> Any:
    import dspy

    return dspy.LM("openai/reference", api_base=url, api_key="unused", cache=False, num_retries=0)


def bench_eval_dspy(url: str, n: int, threads: int) -> tuple[float, float]:
    import dspy

    program = dspy.ChainOfThought("question -> answer")
    devset = [dspy.Example(**r).with_inputs("question") for r in rows(n)]
    warm = [dspy.Example(**r).with_inputs("question") for r in rows(threads, "warm")]

    def metric(example: Any, prediction: Any, trace: Any = None) -> bool:
        return exact_match(example.toDict(), dict(prediction))

    evaluate = dspy.Evaluate(devset=devset, metric=metric, num_threads=threads, display_progress=False,
                             provide_traceback=True)
    with dspy.context(lm=dspy_lm(url)):
        evaluate(program, devset=warm)
        start, cpu = time.perf_counter(), time.process_time()
        result = evaluate(program)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert result.score == round(100 * (n - len(range(0, n, 3))) / n, 2), result.score  # DSPy rounds to 2 places
    return n / elapsed, cpu / n * 1e6


SETTINGS = {"max_bootstrapped_demos": 16, "max_labeled_demos": 16}


def served(url: Any, clear: bool = False) -> int:
    """How many completion requests the reference LM received since it was last cleared (``clear``: clear it
    now): the teacher runs a bootstrap paid for, the speculative ones included."""
    import httpx

    if clear:
        httpx.delete(url.root + "/_stepbridge/requests").raise_for_status()
        return 0
    time.sleep(0.05)  # a request sent just before the end is logged too
    count: int = httpx.get(url.root + "/_stepbridge/requests").json()["count"]
    return count


def bench_bootstrap_native(url: Any, n: int, concurrency: int) -> tuple[float, float, list[Any], int, float]:
    """(bootstrap alone, the whole optimize: scored before and after) in seconds, the demos, the LM requests and
    the CPU seconds of the bootstrap alone."""
    from stepbridge.optimization import abootstrap

    program = sb.load_program(PROGRAM)
    train = from_rows(rows(n, "train"), program=program)

    async def go() -> tuple[float, float, list[Any], int, float]:
        async with sb.Runner(native_adapter(url, concurrency)) as runner:
            warm = await runner.batch(program, [{"question": r["question"]} for r in rows(concurrency, "warm")],
                                      concurrency=concurrency)  # open the connections, as DSPy's side does
            assert not any(item.error for item in warm), warm[0].error
            served(url, clear=True)
            start, cpu = time.perf_counter(), time.process_time()
            compiled = await abootstrap(program, train, "exact_match", settings=SETTINGS, runner=runner,
                                        concurrency=concurrency)
            alone, cpu = time.perf_counter() - start, time.process_time() - cpu
            requests = served(url)
            start = time.perf_counter()
            await sb.aoptimize(program, train, "exact_match", settings=SETTINGS, concurrency=concurrency,
                               backend=runner.adapter)
            whole = time.perf_counter() - start
        return alone, whole, list(compiled.modules["answer"].demos), requests, cpu  # type: ignore[union-attr]

    return asyncio.run(go())


def bench_bootstrap_dspy(url: Any, n: int, threads: int) -> tuple[float, float, list[Any], int, float]:
    """(BootstrapFewShot.compile alone, compile + Evaluate before and after) in seconds, the demos, the LM
    requests and the CPU seconds of the compile alone."""
    import dspy

    train = [dspy.Example(**r).with_inputs("question") for r in rows(n, "train")]

    def metric(example: Any, prediction: Any, trace: Any = None) -> bool:
        return exact_match(example.toDict(), dict(prediction))

    evaluate = dspy.Evaluate(devset=train, metric=metric, num_threads=threads, display_progress=False)
    with dspy.context(lm=dspy_lm(url)):
        evaluate(dspy.ChainOfThought("question -> answer"), devset=[dspy.Example(**r).with_inputs("question")
                                                                   for r in rows(threads, "warm")])
        served(url, clear=True)
        start, cpu = time.perf_counter(), time.process_time()
        compiled = dspy.BootstrapFewShot(metric=metric, **SETTINGS).compile(dspy.ChainOfThought("question -> answer"),
                                                                            trainset=train)
        alone, cpu = time.perf_counter() - start, time.process_time() - cpu
        requests = served(url)
        start = time.perf_counter()
        evaluate(dspy.ChainOfThought("question -> answer"))
        compiled = dspy.BootstrapFewShot(metric=metric, **SETTINGS).compile(dspy.ChainOfThought("question -> answer"),
                                                                            trainset=train)
        evaluate(compiled)
        whole = time.perf_counter() - start
    demos = [{k: v for k, v in d.toDict().items() if k != "augmented"} for d in compiled.predict.demos]
    return alone, whole, demos, requests, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--train", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="eval,bootstrap")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    import logging

    logging.getLogger("dspy").setLevel(logging.ERROR)
    import dspy  # noqa: F401  (imported before the heap is settled, so both sides get the same collector)
    from stepbridge import heap
    from stepbridge.storage import Store  # noqa: F401

    heap.settle()  # what `stepbridge eval` does before its event loop starts
    if "eval" in parts:
        ours, bare, theirs = [], [], []
        with running_server_process(latency_ms=50) as url, tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeats):
                ours.append(bench_eval_native(url, args.rows, args.concurrency, Path(tmp)))
                bare.append(bench_eval_native(url, args.rows, args.concurrency, None))
                theirs.append(bench_eval_dspy(url, args.rows, args.concurrency))
        a, b, c = (statistics.median(r[0] for r in ours), statistics.median(r[0] for r in theirs),
                   statistics.median(r[0] for r in bare))
        a_cpu, c_cpu = statistics.median(r[1] for r in ours), statistics.median(r[1] for r in bare)
        print(f"eval, {args.rows} rows, concurrency {args.concurrency}, LM latency 50 ms (ideal "
              f"{args.concurrency / 0.05:,.0f} rows/s), median of {args.repeats}:")
        print(f"  stepbridge eval (recorded)  : {a:8,.0f} rows/s   {a_cpu:6.0f} us CPU/row   runs "
              f"{', '.join(f'{x[0]:,.0f}' for x in ours)}")
        print(f"  stepbridge.aevaluate, no store : {c:8,.0f} rows/s   {c_cpu:6.0f} us CPU/row   runs "
              f"{', '.join(f'{x[0]:,.0f}' for x in bare)}")
        b_cpu = statistics.median(r[1] for r in theirs)
        print(f"  dspy.Evaluate ({args.concurrency} threads)  : {b:8,.0f} rows/s   {b_cpu:6.0f} us CPU/row   runs "
              f"{', '.join(f'{x[0]:,.0f}' for x in theirs)}")
        print(f"  ratio, recorded / dspy      : {a / b:8.2f}x  (target >= 3x); CPU per row {b_cpu / a_cpu:.2f}x less; "
              f"the ideal allows {args.concurrency / 0.05 / b:.1f}x")
        print(f"  ratio, no store / dspy      : {c / b:8.2f}x;  CPU per row {b_cpu / c_cpu:.2f}x less")
        print(f"  (wall-clock rates on a loaded machine favour the side with more runnable threads: DSPy's "
              f"{args.concurrency} get more")
        print("   of the cores than one event loop; CPU per row is the load-independent figure)")
    if "bootstrap" in parts:
        ours_t: list[tuple[float, float, int, float]] = []
        theirs_t: list[tuple[float, float, int, float]] = []
        with running_server_process(latency_ms=20) as url:
            for _ in range(args.repeats):
                alone, whole, demos_ours, req, cpu = bench_bootstrap_native(url, args.train, args.concurrency)
                d_alone, d_whole, demos_theirs, d_req, d_cpu = bench_bootstrap_dspy(url, args.train, args.concurrency)
                assert demos_ours == demos_theirs, "native bootstrapping chose other demos than DSPy"
                ours_t.append((alone, whole, req, cpu))
                theirs_t.append((d_alone, d_whole, d_req, d_cpu))
        print(f"bootstrap, {args.train} training examples, {SETTINGS}, LM latency 20 ms, median of {args.repeats} "
              "(the same demos checked each run):")
        for i, what in enumerate(("bootstrapping alone", f"+ scored before/after ({args.concurrency} at once)")):
            a = statistics.median(t[i] for t in ours_t)
            b = statistics.median(t[i] for t in theirs_t)
            print(f"  {what}:")
            for name, runs, x in (("native", ours_t, a), ("dspy", theirs_t, b)):
                alone_only = (f"   {statistics.median(t[3] for t in runs) * 1000:5.1f} ms CPU   LM requests "
                              f"{', '.join(str(t[2]) for t in runs)}") if i == 0 else ""
                print(f"    {name:<26}: {x:8.3f} s   runs {', '.join(f'{t[i]:.3f}' for t in runs)}{alone_only}")
            print(f"    speed-up                  : {b / a:8.1f}x" + ("  (target >= 10x)" if i == 0 else ""))

if __name__ == "__main__":
    main()
