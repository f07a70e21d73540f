"""Test tools and adapters that pool workers host (``--backend sb_pool:make_adapter``).

Imported by the tests too, so the tools are registered on both sides of the wire (the client
validates programs, the worker runs them).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from stepbridge.adapters.native import NativeAdapter
from stepbridge.registry import tools

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def worker_env() -> dict[str, str]:
    """The environment of a worker process: this folder on its PYTHONPATH, so it can import this module."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


async def nap(seconds: float) -> float:
    """Sleep without blocking the loop."""
    await asyncio.sleep(seconds)
    return seconds


async def freeze(seconds: float) -> float:
    """Block the worker's event loop (a program that ignores cancel and silences heartbeats)."""
    time.sleep(seconds)
    return seconds


async def charge(seconds: float) -> float:
    """A side-effecting tool: never retried elsewhere."""
    await asyncio.sleep(seconds)
    return seconds


def crash(seconds: float) -> float:
    os._exit(13)


tools.register("sbtest_nap", nap)
tools.register("sbtest_freeze", freeze)
tools.register("sbtest_charge", charge, side_effects=True)
tools.register("sbtest_crash", crash)


def make_adapter(**kwargs: Any) -> NativeAdapter:
    return NativeAdapter(**kwargs)


def crashing_adapter(**kwargs: Any) -> NativeAdapter:
    os._exit(7)


def tool_program(tool: str, name: str = "toolprog") -> dict[str, Any]:
    return {
        "stepbridge": 1,
        "name": name,
        "signature": "seconds: float -> slept: float",
        "modules": {"t": {"type": "tool", "tool": tool}},
        "steps": [{"call": "t", "with": {"seconds": "$inputs.seconds"}, "as": "r"},
                  {"return": {"slept": "$r.result"}}],
    }


ECHO = {
    "stepbridge": 1,
    "name": "echo",
    "signature": "question -> answer",
    "steps": [{"return": {"answer": "$inputs.question"}}],
}
