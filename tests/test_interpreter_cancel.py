"""``parallel``: when one call fails, the calls still running are cancelled and stop calling the LM
(no retry of an in-flight request reaches the server), on native and dspy, over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import stepbridge as sb
from stepbridge.errors import StepError
from stepbridge.lm import LMPool, LMProfile
from stepbridge.reference_lm import ServerURL, running_server


@pytest.fixture(scope="module")
def server() -> Iterator[ServerURL]:
    with running_server() as url:
        yield url


@pytest.fixture(autouse=True)
def failing_tool() -> Iterator[None]:
    async def fail_soon(text: str) -> str:
        await asyncio.sleep(0.05)
        raise ValueError(f"no {text}")

    sb.tools.register("cancel_fail_soon", fail_soon)
    yield
    sb.tools.unregister("cancel_fail_soon")


def adapter(backend: str, url: str) -> Any:
    profile = LMProfile(name="default", base_url=str(url), model="openai/reference", max_retries=5)
    if backend == "native":
        from stepbridge.adapters.native import NativeAdapter

        return NativeAdapter(lm=LMPool(profiles={"default": profile}))
    from stepbridge.adapters.dspy import DSPyAdapter

    return DSPyAdapter(profiles={"default": profile})


@pytest.mark.parametrize("backend", ["native", "dspy"])
def test_a_failed_call_cancels_an_lm_call_that_would_retry(server: ServerURL, backend: str) -> None:
    program = sb.load_program({
        "stepbridge": 2, "name": "cancel", "signature": "question -> answer",
        "modules": {
            # the server answers 503 to the first 3 attempts of this request: the client would retry
            "ask": {"type": "predict", "signature": "question -> answer",
                    "lm": {"model": "openai/reference/flaky-3"}},
            "fail": {"type": "tool", "tool": "cancel_fail_soon", "signature": "text -> result"},
        },
        "steps": [
            {"parallel": [{"call": "ask", "with": {"question": "$inputs.question"}, "as": "a"},
                          {"call": "fail", "with": {"text": "luck"}, "as": "f"}]},
            {"return": {"answer": "$a.answer"}},
        ],
    })
    assert server.log is not None
    question = f"Is this cancelled on {backend}? {time.time()}"  # a request no earlier test made

    def attempts() -> int:
        return sum(1 for e in server.log.entries()  # type: ignore[union-attr]
                   if question in str(e["body"].get("messages")))

    async def go() -> None:
        async with sb.Runner(adapter(backend, server)) as runner:
            with pytest.raises(StepError) as info:
                await runner.run(program, {"question": question})
            assert info.value.pointer == "/steps/0/parallel/1"
            seen = attempts()
            await asyncio.sleep(2.0)  # longer than the client's backoff before a retry
            assert attempts() == seen <= 1

    asyncio.run(go())
