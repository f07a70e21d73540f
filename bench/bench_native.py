"""Native per-call overhead vs ``dspy.Predict`` with DSPy's DummyLM, same run (target: >= 20x less).

Both sides use an instant in-process LM that returns a canned, correctly formatted answer, so the
figure is pure framework overhead: formatting, parsing, tracing, bookkeeping. Wall clock and CPU time
(``time.process_time``, steadier on a loaded machine) are both printed, each the median of ``--repeats``.

    python bench/bench_native.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import stepbridge as sb
from stepbridge.adapters.native import NativeAdapter
from stepbridge.lm import InProcessLMClient, LMPool

CANNED = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"
PROGRAM = {
    "stepbridge": 1, "name": "qa", "signature": "question -> answer",
    "modules": {"qa": {"type": "predict", "signature": "question -> answer"}},
    "steps": [{"call": "qa", "with": {"question": "$inputs.question"}, "as": "r"}, {"return": {"answer": "$r.answer"}}],
}


class InstantLM:
    def complete(self, messages: list[dict[str, str]], *, response_format: object = None) -> str:
        return CANNED


Measure = tuple[float, float]  # (wall seconds, CPU seconds) per call



def settle() -> None:
    """Before each measured side: what ``stepbridge run``/``batch`` do once before their event loop starts
    (``stepbridge.heap.settle``), what is alive now set aside from the collector. Without it, a full
    collection walking DSPy's import-time heap and the history DummyLM keeps (~100k objects, ~40 ms)
    fell inside some measured windows and not others: native's figure swung between 10 and 29 us."""
    gc.collect()
    gc.freeze()
def bench_native(calls: int) -> Measure:
    pool = LMPool(profiles={})
    pool.mount("reference", InProcessLMClient(InstantLM()))
    program = sb.load_program(PROGRAM)

    async def go() -> Measure:
        async with sb.Runner(NativeAdapter(lm=pool)) as runner:
            for _ in range(200):
                await runner.run(program, {"question": "What is the capital of France?"})
            settle()
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                result = await runner.run(program, {"question": "What is the capital of France?"})
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            assert result.outputs == {"answer": "Paris"}
            return elapsed / calls, cpu / calls

    return asyncio.run(go())


def bench_dspy(calls: int) -> Measure:
    import dspy
    from dspy.utils.dummies import DummyLM

    lm = DummyLM([{"answer": "Paris"}] * (calls + 200))
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        for _ in range(200):
            predict(question="What is the capital of France?")
        settle()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            out = predict(question="What is the capital of France?")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert out.answer == "Paris"
    return elapsed / calls, cpu / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    natives, dspys = [], []
    for _ in range(args.repeats):  # interleaved: a burst of load elsewhere hits both sides alike
        natives.append(bench_native(args.calls))
        dspys.append(bench_dspy(args.calls))
    for i, label in enumerate(("wall clock", "CPU time (steadier on a loaded machine)")):
        native = statistics.median(n[i] for n in natives)
        dspy_t = statistics.median(d[i] for d in dspys)
        print(f"{label}:")
        print(f"  native executor, per call : {native * 1e6:8.1f} us")
        print(f"  dspy.Predict + DummyLM    : {dspy_t * 1e6:8.1f} us")
        print(f"  ratio (dspy / native)     : {dspy_t / native:8.1f}x   (target >= 20x)")


if __name__ == "__main__":
    main()
