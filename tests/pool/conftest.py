"""Pool tests: real worker processes and real sockets. Workers import the test helpers (sb_pool) by
module name, so their directory is put on the workers' PYTHONPATH (see sb_pool.worker_env)."""

from __future__ import annotations

from typing import Any

import pytest
from sb_pool import worker_env


@pytest.fixture
def pool_kwargs() -> dict[str, Any]:
    """Small, fast defaults for a local pool hosting the test helpers' adapter."""
    return {"backend": "sb_pool:make_adapter", "worker_env": worker_env(), "heartbeat": 0.25,
            "liveness": 3, "start_timeout": 60.0}
