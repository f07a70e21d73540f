"""Shared fixtures: one real loopback reference LM server per module, no mocks."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("DSPY_CACHEDIR", tempfile.mkdtemp(prefix="stepbridge-dspy-cache-"))
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import pytest
from stepbridge.lm import LMPool, LMProfile
from stepbridge.reference_lm import ServerURL, running_server
from stepbridge.registry import load_adapter

ADAPTER_SPEC = "stepbridge.adapters.dspy:DSPyAdapter"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerURL]:
    with running_server() as url:
        yield url


@pytest.fixture
def profiles(server: ServerURL) -> dict[str, LMProfile]:
    return {"default": LMProfile(name="default", base_url=str(server), model="openai/reference")}


@pytest.fixture
def dspy_adapter(profiles: dict[str, LMProfile], loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    adapter = load_adapter(ADAPTER_SPEC, profiles=profiles)
    yield adapter
    loop.run_until_complete(adapter.aclose())


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop per test: the native adapter's connection pool belongs to the loop it started on."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture
def native_adapter(profiles: dict[str, LMProfile], loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    from stepbridge.adapters.native import NativeAdapter

    adapter = NativeAdapter(lm=LMPool(profiles=profiles))
    yield adapter
    loop.run_until_complete(adapter.aclose())


@pytest.fixture
def dspy_lm(server: ServerURL) -> Any:
    from stepbridge.adapters.dspy import dspy

    return dspy.LM("openai/reference", api_base=str(server), api_key="unused", cache=False)


