"""Shared test setup: an isolated environment (no user config, no home database, DSPy offline),
a real reference LM server on loopback, and this session's own PostgreSQL database."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# No timing limits in tests: on a loaded 2-core machine a property test's example can take longer than
# hypothesis's 200 ms deadline (or its generation look "too slow") without anything being wrong.
settings.register_profile("stepbridge", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("stepbridge")

_TMP = tempfile.mkdtemp(prefix="stepbridge-tests-")
# Before anything imports dspy/litellm: never fetch the model cost map, keep caches out of $HOME.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["DSPY_CACHEDIR"] = os.path.join(_TMP, "dspy-cache")
os.environ["STEPBRIDGE_CONFIG"] = os.path.join(_TMP, "no-config.toml")
os.environ["STEPBRIDGE_HOME"] = os.path.join(_TMP, "home")
for _key in [k for k in os.environ if k.startswith("STEPBRIDGE_LM_")]:
    del os.environ[_key]
os.environ.pop("STEPBRIDGE_DATABASE_URL", None)
os.environ.pop("STEPBRIDGE_POOL", None)
# Output width is each test's choice (the env of its process, or of run_cli in tests/sb_cli.py). pytest-xdist
# gives its workers the terminal's COLUMNS, and rich fixes a console's width from COLUMNS when it is made
# (at import): with it set, an in-process command would print at 80 columns whatever the test asked.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)


@pytest.fixture(autouse=True)
def _own_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test its own runtime folder, so a `stepbridge pool start` binds a default address no other test
    (nor the user's own pool) uses. Short, because an ipc path has at most ~107 bytes."""
    folder = tempfile.mkdtemp(prefix="sbrt-")
    monkeypatch.setenv("XDG_RUNTIME_DIR", folder)
    yield
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def reference_lm() -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT/v1``) of a reference LM server running for the whole session."""
    from stepbridge.reference_lm import running_server

    with running_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL database created for this test session and dropped after it (see sb_postgres);
    skips with the reason when ``STEPBRIDGE_TEST_POSTGRES_URL`` is unset or unreachable."""
    from sb_postgres import session_database

    with session_database() as url:
        yield url
