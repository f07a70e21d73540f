"""Fixtures of the import tests: one real loopback reference LM per module, DSPy's LM on it, and a
native adapter whose default profile is that server (no mocks)."""

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


@pytest.fixture(scope="module")
def server() -> Iterator[ServerURL]:
    with running_server() as url:
        yield url


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@pytest.fixture
def native_adapter(server: ServerURL, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    from stepbridge.adapters.native import NativeAdapter

    profiles = {"default": LMProfile(name="default", base_url=str(server), model="openai/reference")}
    adapter = NativeAdapter(lm=LMPool(profiles=profiles))
    yield adapter
    loop.run_until_complete(adapter.aclose())


@pytest.fixture
def dspy_lm(server: ServerURL) -> Any:
    from stepbridge.adapters.dspy import dspy

    return dspy.LM("openai/reference", api_base=str(server), api_key="unused", cache=False)


@pytest.fixture
def operator_lm(server: ServerURL, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> ServerURL:
    """The operator's default LM profile (what the CLI and import_module resolve) is the server."""
    monkeypatch.setenv("STEPBRIDGE_LM_BASE_URL", str(server))
    monkeypatch.setenv("STEPBRIDGE_LM_MODEL", "openai/reference")
    monkeypatch.setenv("STEPBRIDGE_CONFIG", str(tmp_path / "none.toml"))
    return server


@pytest.fixture
def dspy_adapter(server: ServerURL, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    from stepbridge.registry import load_adapter

    profiles = {"default": LMProfile(name="default", base_url=str(server), model="openai/reference")}
    adapter = load_adapter("stepbridge.adapters.dspy:DSPyAdapter", profiles=profiles)
    yield adapter
    loop.run_until_complete(adapter.aclose())


@pytest.fixture
def run_native(loop: Any, native_adapter: Any) -> Any:
    """Run a program on the native adapter: ``run_native(program, inputs)`` -> its RunResult."""
    from stepbridge import RunOptions

    def go(program: Any, inputs: dict[str, Any]) -> Any:
        async def run() -> Any:
            await native_adapter.prepare(program)
            return await native_adapter.run(program, inputs, RunOptions())

        return loop.run_until_complete(run())

    return go
