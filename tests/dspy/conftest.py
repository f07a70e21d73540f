"""Shared fixtures: one real loopback reference LM server per module, no mocks."""

from __future__ import annotations

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
def dspy_adapter(profiles: dict[str, LMProfile]) -> Iterator[Any]:
    adapter = load_adapter(ADAPTER_SPEC, profiles=profiles)
    yield adapter
    adapter.close()


@pytest.fixture
def native_adapter(profiles: dict[str, LMProfile]) -> Iterator[Any]:
    from stepbridge.adapters.native import NativeAdapter

    adapter = NativeAdapter(lm=LMPool(profiles=profiles))
    yield adapter
    import asyncio

    asyncio.run(adapter.aclose())


@pytest.fixture
def dspy_lm(server: ServerURL) -> Any:
    from stepbridge.adapters.dspy import dspy

    return dspy.LM("openai/reference", api_base=str(server), api_key="unused", cache=False)


