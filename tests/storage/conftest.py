"""Fixtures: every storage test runs on a fresh SQLite file and on a fresh PostgreSQL schema (inside the
session's own database: see tests/sb_postgres.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sb_postgres import fresh_schema
from sb_storage import make_program
from stepbridge import Program
from stepbridge.storage import Store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def program() -> Program:
    return make_program()
