"""Attack regressions: real servers standing in for the attacker and the upstream, real stores, real
worker processes (helpers in sb_security.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sb_security import KEY, KEY_ENV


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh schema in the session's PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    from sb_postgres import fresh_schema

    with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def operator_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """The operator's key, in the variable their profile names."""
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY
