"""Which event loop a worker process serves on: uvloop's where it is installed, asyncio's otherwise."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, cast

import pytest
from stepbridge.bridge.worker import _run_loop


class _Probe:
    """Stands in for a Worker: serving returns the module of the loop it ran on."""

    async def serve(self) -> Any:
        return type(asyncio.get_running_loop()).__module__


def test_a_worker_serves_on_uvloop_where_installed_and_on_asyncio_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    assert str(_run_loop(cast(Any, _Probe()))).startswith("uvloop")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a platform without it: the import fails
    assert str(_run_loop(cast(Any, _Probe()))).startswith("asyncio")
