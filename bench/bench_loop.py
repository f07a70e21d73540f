"""A format-2 loop of 100 passes over an instant LM, per pass, vs the same loop written in DSPy with
DummyLM, same run (target: >= 20x less time per pass).

Each pass calls a predictor and appends its answer to the loop state; the loop stops on ``until``
after the 100th pass. Both sides use an instant in-process LM that returns a canned, correctly
formatted answer, so the figure is framework overhead: the interpreter (loop, set, operations,
trace) plus one module call per pass.

    python bench/bench_loop.py [--runs 30] [--passes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import stepbridge as sb
from bench_native import settle  # the same heap settling before each measured side (this folder is on sys.path)
from stepbridge.adapters.native import NativeAdapter
from stepbridge.lm import InProcessLMClient, LMPool

CANNED = "[[ ## answer ## ]]\nParis\n\n[[ ## completed ## ]]"


def program(passes: int) -> dict[str, Any]:
    return {
        "stepbridge": 2, "name": "loop", "signature": "question -> answers: list[str]",
        "modules": {"qa": {"type": "predict", "signature": "question -> answer"}},
        "steps": [
            {"set": {"answers": []}},
            {"loop": {"max": passes, "steps": [
                {"call": "qa", "with": {"question": "$inputs.question"}, "as": "r"},
                {"set": {"answers": {"$concat": ["$answers", ["$r.answer"]]}}},
            ], "until": {"$ge": [{"$len": "$answers"}, passes]}}},
            {"return": {"answers": "$answers"}},
        ],
    }


class InstantLM:
    def complete(self, messages: list[dict[str, str]], *, response_format: object = None) -> str:
        return CANNED


def bench_native(runs: int, passes: int) -> tuple[float, float]:
    pool = LMPool(profiles={})
    pool.mount("reference", InProcessLMClient(InstantLM()))
    prog = sb.load_program(program(passes))

    async def go() -> float:
        async with sb.Runner(NativeAdapter(lm=pool)) as runner:
            for _ in range(3):
                await runner.run(prog, {"question": "What is the capital of France?"})
            settle()
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(runs):
                result = await runner.run(prog, {"question": "What is the capital of France?"})
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            assert result.outputs == {"answers": ["Paris"] * passes}
            return elapsed / (runs * passes), cpu / (runs * passes)

    return asyncio.run(go())


def bench_dspy(runs: int, passes: int) -> tuple[float, float]:
    import dspy
    from dspy.utils.dummies import DummyLM

    class Loop(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qa = dspy.Predict("question -> answer")

        def forward(self, question: str) -> dspy.Prediction:
            answers: list[str] = []
            for _ in range(passes):
                answers = [*answers, self.qa(question=question).answer]
                if len(answers) >= passes:
                    break
            return dspy.Prediction(answers=answers)

    lm = DummyLM([{"answer": "Paris"}] * ((runs + 3) * passes))
    module = Loop()
    with dspy.context(lm=lm):
        for _ in range(3):
            module(question="What is the capital of France?")
        settle()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(runs):
            out = module(question="What is the capital of France?")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert out.answers == ["Paris"] * passes
    return elapsed / (runs * passes), cpu / (runs * passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--passes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    natives, dspys = [], []
    for _ in range(args.repeats):  # interleaved: a burst of load elsewhere hits both sides alike
        natives.append(bench_native(args.runs, args.passes))
        dspys.append(bench_dspy(args.runs, args.passes))
    for i, label in enumerate(("wall clock", "CPU time (steadier on a loaded machine)")):
        native = statistics.median(n[i] for n in natives)
        dspy_t = statistics.median(d[i] for d in dspys)
        print(f"{label}:")
        print(f"  stepbridge loop (native), per pass : {native * 1e6:8.1f} us")
        print(f"  DSPy loop + DummyLM, per pass      : {dspy_t * 1e6:8.1f} us")
        print(f"  ratio (dspy / native)              : {dspy_t / native:8.1f}x   (target >= 20x)")


if __name__ == "__main__":
    main()
