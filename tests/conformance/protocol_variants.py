"""Correct adapters written in less usual styles: the suite must accept them.

``prepare`` is a coroutine function behind a decorator (``functools.wraps`` of a plain function that
returns the coroutine), ``run`` is a plain method returning an awaitable, ``aclose`` returns a
Future. The protocol asks for awaitables, not for ``async def``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from stepbridge.adapter import RunOptions
from stepbridge.adapters.native import NativeAdapter
from stepbridge.program import Program
from stepbridge.result import RunResult

F = TypeVar("F", bound=Callable[..., Any])


def logged(fn: F) -> F:
    """A decorator as people write them: the wrapper is a plain function returning the coroutine."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class StyledAdapter:
    name = "styled"
    capabilities = NativeAdapter.capabilities

    def __init__(self) -> None:
        self.inner = NativeAdapter()

    @logged
    async def prepare(self, program: Program) -> None:
        await self.inner.prepare(program)

    def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> Awaitable[RunResult]:
        return self.inner.run(program, inputs, options)

    def aclose(self) -> Awaitable[None]:
        return asyncio.ensure_future(self.inner.aclose())
