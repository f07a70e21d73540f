"""The PostgreSQL database of one test session (a plain module: conftest files are not importable).

``STEPBRIDGE_TEST_POSTGRES_URL`` names a server (and a database to connect to for administration,
e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``). Each test session creates its own database
there, with a unique name, and drops it at the end, failures included, so sessions running at the
same time (and the shared databases on the server) never see each other's rows. Unset: the
PostgreSQL tests skip with that reason. Set but unreachable: they skip too, unless
``STEPBRIDGE_TEST_POSTGRES_REQUIRED=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from stepbridge.storage import Store
from stepbridge.storage.db import normalise_url

ENV = "STEPBRIDGE_TEST_POSTGRES_URL"
REQUIRED_ENV = "STEPBRIDGE_TEST_POSTGRES_REQUIRED"


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRED_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRED_ENV}=1)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def session_database() -> Iterator[str]:
    """Create a uniquely named database on the configured server; yield its URL; drop it afterwards."""
    server = os.environ.get(ENV, "").strip()
    if not server:
        _unavailable(f"PostgreSQL tests need {ENV} (a server URL on which they may create a database)")
    admin = create_engine(normalise_url(server), isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"sbtest_{uuid.uuid4().hex[:16]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        shown = make_url(normalise_url(server)).render_as_string(hide_password=True)
        _unavailable(f"PostgreSQL at {shown} could not create a test database: {str(exc).splitlines()[0]}")
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:  # FORCE: a test that leaked a connection must not keep the database
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def with_schema(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_schema(database_url: str) -> Iterator[str]:
    """A new empty schema inside the session's database; yields a URL that uses it; drops it after."""
    schema = f"sbtest_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(database_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield with_schema(database_url, schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


# Fixtures for every test folder whose tests run on both databases (its conftest imports them).
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
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
