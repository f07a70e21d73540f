"""Ray tests: a real local Ray instance (started once per test process by the first adapter, 2 CPUs, no
dashboard) and real actor processes. The actors host ``sb_ray:make_adapter``, which registers the
pool tests' tools and the conformance suite's; both folders go on the actors' PYTHONPATH."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
POOL_TESTS = HERE.parent / "pool"
for _path in (HERE, POOL_TESTS):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every Ray test on one pytest-xdist worker: one local Ray instance (2 CPUs), not one per worker."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.xdist_group("ray"))


def ray_installed() -> bool:
    """Ray itself (``tests/ray`` is on sys.path as a namespace folder: that one has no ``init``)."""
    try:
        import ray
    except ImportError:
        return False
    return hasattr(ray, "init")


def skip_without_ray() -> None:
    if not ray_installed():
        pytest.skip("ray is not installed: pip install -e '.[test,ray]' (.ci/run installs it)", allow_module_level=True)


def actor_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(POOL_TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture
def ray_kwargs() -> dict[str, Any]:
    """A small adapter hosting the test helpers' adapter."""
    return {"backend": "sb_ray:make_adapter", "env": actor_env(), "actors": 2, "concurrency": 8,
            "start_timeout": 120.0}
