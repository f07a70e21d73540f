"""Fixtures: every storage test runs on a fresh SQLite file and on a fresh PostgreSQL schema (inside the
session's own database: see tests/sb_postgres.py)."""

from __future__ import annotations

import pytest
from sb_postgres import db_url, store  # noqa: F401  (fixtures, shared with tests/evals)
from sb_storage import make_program
from stepbridge import Program


@pytest.fixture
def program() -> Program:
    return make_program()
