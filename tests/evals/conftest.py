"""Fixtures for the evaluation and optimization tests: every stored test runs on a fresh SQLite file and
on a fresh PostgreSQL schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sb_evals import LM, serve_lm
from sb_postgres import db_url, store  # noqa: F401  (fixtures, shared with tests/storage)


@pytest.fixture(scope="module")
def lm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LM]:
    """``stepbridge lm serve`` with latency and a request log, in its own process."""
    with serve_lm(tmp_path_factory.mktemp("lm") / "lm-requests.jsonl") as lm:
        yield lm


@pytest.fixture
def lm(lm_server: LM) -> LM:
    lm_server.since = lm_server.log.stat().st_size
    return lm_server
