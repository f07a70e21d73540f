"""Benchmark: the DSPy adapter vs the same program written directly in DSPy (target: <= 1.10x).

    python bench/bench_dspy_adapter.py [--runs 300] [--concurrency 16]

Both sides use the same ``dspy.LM`` object (DSPy's default engine, cache off) against the same
reference LM server, run in a child process so it does not share this process's GIL. The
program is ``examples/rag_qa.yaml`` (BM25 retrieval + ChainOfThought); the hand-written DSPy
module calls the same retriever and a ``dspy.ChainOfThought`` with the same signature and
instructions, through DSPy's async path (``acall``) like the adapter. Rounds alternate between
the two sides so drift hits both; the figure is the median of the per-round times.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from stepbridge import RunOptions, load_program
from stepbridge.adapters.dspy import DSPyAdapter, dspy
from stepbridge.lm import LMProfile
from stepbridge.program import LMConfig
from stepbridge.reference_lm import running_server_process
from stepbridge.retrieve import make_retriever

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUESTIONS = ["Who designed the Eiffel Tower?", "Where is Mount Everest?", "What does the Louvre house?",
             "Who created Python?"]


class RagQA(dspy.Module):
    """rag_qa.yaml written directly in DSPy."""

    def __init__(self, program: Any):
        super().__init__()
        spec = program.modules["search"]
        self.retriever = make_retriever(spec.retriever, program.base_dir)
        self.k = spec.k
        self.answer = dspy.ChainOfThought(
            dspy.Signature("context: list[str], question -> answer", "Answer using only the context."))

    async def aforward(self, question: str) -> Any:
        passages = self.retriever.search(question, self.k).passages
        return await self.answer.acall(context=passages, question=question)


async def bench(runs: int, concurrency: int, rounds: int) -> None:
    program = load_program(EXAMPLES / "rag_qa.yaml")
    with running_server_process() as url:
        adapter = DSPyAdapter(profiles={"default": LMProfile(name="default", base_url=str(url),
                                                             model="openai/reference")})
        await adapter.prepare(program)
        lm, _ = adapter.dspy_lm(program.lm or LMConfig())
        direct = RagQA(program)

        async def adapter_one(i: int) -> Any:
            return (await adapter.run(program, {"question": QUESTIONS[i % 4]}, RunOptions())).outputs["answer"]

        async def direct_one(i: int) -> Any:
            with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
                return (await direct.acall(question=QUESTIONS[i % 4])).answer

        # Same answers (and warm-up).
        for i in range(8):
            assert await adapter_one(i) == await direct_one(i)

        async def timed(fn: Any, conc: int) -> float:
            limit = asyncio.Semaphore(conc)

            async def one(i: int) -> None:
                async with limit:
                    await fn(i)

            began = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(runs)))
            return (time.perf_counter() - began) / runs * 1000

        for label, conc in (("sequential", 1), (f"concurrency {concurrency}", concurrency)):
            ours: list[float] = []
            theirs: list[float] = []
            for r in range(rounds):
                order = [(adapter_one, ours), (direct_one, theirs)]
                for fn, sink in order if r % 2 == 0 else reversed(order):
                    sink.append(await timed(fn, conc))
            a, d = statistics.median(ours), statistics.median(theirs)
            print(f"{label:>16}: dspy adapter {a:.3f} ms/run   direct DSPy {d:.3f} ms/run   ratio {a / d:.3f}"
                  f"  (target <= 1.10; {rounds} rounds x {runs} runs)")
        await adapter.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(bench(args.runs, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
