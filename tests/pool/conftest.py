"""Pool tests: real worker processes and real sockets. Workers import the test helpers by
module name, so their directory is put on the workers' PYTHONPATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture
def pool_kwargs() -> dict[str, Any]:
    """Small, fast defaults for a local pool hosting the test helpers' adapter."""
    return {"backend": "sbtest_helpers:make_adapter", "worker_env": worker_env(), "heartbeat": 0.25,
            "liveness": 3, "start_timeout": 60.0}
