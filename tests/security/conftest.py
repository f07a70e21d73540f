"""Attack regressions: real servers standing in for the attacker and the upstream, real stores, real
worker processes (helpers in sb_security.py)."""

from __future__ import annotations

import pytest
from sb_postgres import db_url  # noqa: F401  (fixture, shared with tests/storage and tests/evals)
from sb_security import KEY, KEY_ENV


@pytest.fixture
def operator_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """The operator's key, in the variable their profile names."""
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY
