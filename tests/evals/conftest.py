"""Fixtures for the evaluation and optimization tests: every stored test runs on a fresh SQLite file and
on a fresh PostgreSQL schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sb_evals import LM, serve_lm
from stepbridge.storage import Store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    from sb_postgres import fresh_schema

    with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def lm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LM]:
    """``stepbridge lm serve`` with latency and a request log, in its own process."""
    with serve_lm(tmp_path_factory.mktemp("lm") / "lm-requests.jsonl") as lm:
        yield lm


@pytest.fixture
def lm(lm_server: LM) -> LM:
    lm_server.since = lm_server.log.stat().st_size
    return lm_server
