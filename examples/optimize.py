"""Optimization round trip: compile a program with DSPy's BootstrapFewShot, get a new program back.

    python examples/optimize.py [OUT.yaml]   (default: ./classify.optimized.yaml)

1. load ``classify.yaml`` and run it through the DSPy adapter as a real ``dspy.Module``;
2. compile it with ``dspy.BootstrapFewShot`` against the LM (the reference LM when no profile is
   configured: the adapter starts it on a loopback port);
3. turn the compiled module back into a program file (demos filled in, a ``source:`` note in the
   description) and run it on the native backend and on DSPy: same outputs, same messages.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from stepbridge import RunOptions, load_program
from stepbridge.adapters.dspy import DSPyAdapter, dspy
from stepbridge.adapters.dspy_interop import optimize
from stepbridge.adapters.native import NativeAdapter
from stepbridge.lm import LMPool, LMProfile

HERE = Path(__file__).resolve().parent
TRAIN = [
    {"ticket": "I was charged twice, refund please", "team": "billing", "urgent": True},
    {"ticket": "The invoice amount is wrong", "team": "billing", "urgent": False},
    {"ticket": "The app crashes with an error when I log in", "team": "technical", "urgent": True},
    {"ticket": "I want to buy the enterprise plan for sales", "team": "sales", "urgent": False},
]


def team_matches(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.team == prediction.team)


def main() -> None:
    program = load_program(HERE / "classify.yaml")
    adapter = DSPyAdapter()
    try:
        url = adapter.reference_url() if not adapter.profiles else None
        optimized, provenance = optimize(
            program, TRAIN, team_matches, adapter=adapter,
            optimizer=dspy.BootstrapFewShot(metric=team_matches, max_bootstrapped_demos=2, max_labeled_demos=2))
        out = Path(sys.argv[1] if len(sys.argv) > 1 else "classify.optimized.yaml")
        optimized.dump(out)
        print(f"wrote {out.name}: {len(optimized.modules['route'].demos)} demos; {provenance['message']}")

        # The optimized program runs the same on the native backend (pointed at the same LM).
        profiles = adapter.profiles or {"default": LMProfile(name="default", base_url=url, model="openai/reference")}
        inputs = {"ticket": "My card was billed but the invoice is missing"}

        async def both() -> tuple[Any, Any]:
            native = NativeAdapter(lm=LMPool(profiles=profiles))
            on_dspy = DSPyAdapter(profiles=profiles)
            try:
                a = await native.run(optimized, inputs, RunOptions())
                b = await on_dspy.run(optimized, inputs, RunOptions())
            finally:
                await native.aclose()
                await on_dspy.aclose()
            return a, b

        native_result, dspy_result = asyncio.run(both())
        same_messages = native_result.trace[0].lm_calls[0].messages == dspy_result.trace[0].lm_calls[0].messages
        print(f"native: {native_result.outputs}")
        print(f"dspy:   {dspy_result.outputs}")
        print(f"same outputs: {native_result.outputs == dspy_result.outputs}; same messages: {same_messages}")
    finally:
        adapter.close()


if __name__ == "__main__":
    main()
