"""Deliberately broken adapters: the conformance suite must fail each one and say what to fix.

Each wraps the native adapter and breaks one promise. The suite loads them by
``broken_adapters:<Factory>`` with this folder on ``PYTHONPATH`` (nothing is installed).
"""

from __future__ import annotations

from typing import Any

from stepbridge.adapter import RunOptions
from stepbridge.adapters.native import NativeAdapter
from stepbridge.errors import StepbridgeError
from stepbridge.program import Program
from stepbridge.result import RunResult


class _Wrapper:
    name = "broken"
    capabilities = NativeAdapter.capabilities

    def __init__(self) -> None:
        self.inner = NativeAdapter()

    async def prepare(self, program: Program) -> None:
        await self.inner.prepare(program)

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        return await self.inner.run(program, inputs, options)

    async def aclose(self) -> None:
        await self.inner.aclose()


class WrongOutputs(_Wrapper):
    """Returns every string output upper-cased."""

    name = "wrong-outputs"

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        result = await self.inner.run(program, inputs, options)
        outputs = {k: v.upper() if isinstance(v, str) else v for k, v in result.outputs.items()}
        return result.model_copy(update={"outputs": outputs})


class LostErrorType(_Wrapper):
    """Turns every typed error into a RuntimeError (as a careless process boundary would)."""

    name = "lost-error-type"

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        try:
            return await self.inner.run(program, inputs, options)
        except StepbridgeError as exc:
            raise RuntimeError(str(exc)) from None


class ClaimsDspyModules(_Wrapper):
    """Declares ``dspy_modules`` but cannot run DSPy modules."""

    name = "claims-dspy"
    capabilities = NativeAdapter.capabilities | {"dspy_modules"}


class IgnoresTimeout(_Wrapper):
    """Declares ``timeout`` but runs without any deadline."""

    name = "ignores-timeout"

    async def run(self, program: Program, inputs: dict[str, Any], options: RunOptions) -> RunResult:
        return await self.inner.run(program, inputs, options.model_copy(update={"timeout": None}))


class HalfRunsUndeclared(_Wrapper):
    """Does not declare ``retrieve`` (so the core refuses such programs) but runs them anyway when called directly."""

    name = "half-runs"
    capabilities = NativeAdapter.capabilities - {"retrieve"}
