"""Engines and migrations: where the database is, how SQLite is tuned, and bringing a schema to head.

SQLite is tuned for many writer processes: WAL (readers never block the writer), a busy timeout
(waiters queue instead of failing), foreign keys on, and writes start with ``BEGIN IMMEDIATE`` so a
transaction takes the write lock up front instead of failing with "database is locked" when it
tries to upgrade a read lock (SQLAlchemy's pysqlite "serializable isolation" recipe).
"""

from __future__ import annotations

import os
import threading
import zlib
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from stepbridge.errors import StorageError
from stepbridge.secrets import register_url, scrub

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = [
    "MIGRATIONS_DIR",
    "check_known",
    "current_revision",
    "default_url",
    "ensure_schema",
    "head_revision",
    "make_engine",
    "normalise_url",
    "redacted",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 60.0
#: the execution option that picks the SQLite BEGIN flavour for one connection
SQLITE_BEGIN = "stepbridge_sqlite_begin"


def default_url() -> str:
    """``STEPBRIDGE_DATABASE_URL``, else a SQLite file under ``STEPBRIDGE_HOME`` or the XDG data dir."""
    url = os.environ.get("STEPBRIDGE_DATABASE_URL")
    if url:
        return url
    home = os.environ.get("STEPBRIDGE_HOME")
    if home:
        base = Path(home).expanduser()
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "stepbridge"
    return f"sqlite:///{base / 'stepbridge.db'}"


def normalise_url(url: str) -> str:
    """Accept ``postgres://``/``postgresql://`` (psycopg 3 driver) and bare file paths (SQLite)."""
    url = url.strip()
    if "://" not in url and not url.startswith("sqlite:"):
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def redacted(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return scrub(url)


def load_json(text: str | bytes) -> Any:
    """A stored JSON value, or a typed error: a row is untrusted, and one with an integer Python cannot
    convert (over 4,300 digits) or nesting deeper than Python's recursion limit must not crash a read."""
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise StorageError("a stored JSON value is nested too deeply to read; the row is refused") from None
    except ValueError as exc:
        raise StorageError(f"a stored JSON value cannot be read ({str(exc)[:120]}); the row is refused") from None


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their directory created and the concurrency settings."""
    url = normalise_url(url)
    register_url(url, source="the database URL")  # scrubbed from every message from then on
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise StorageError(f"invalid database URL {redacted(url)!r}: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, parsed.database)
    if backend == "postgresql":
        if parsed.get_driver_name() not in ("psycopg", "psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        try:
            engine = create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=10)
        except (ImportError, SQLAlchemyError) as exc:
            raise StorageError(
                f"cannot use PostgreSQL at {redacted(url)}: {exc} (install stepbridge[postgres])"
            ) from None

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            from psycopg.types.json import set_json_loads

            set_json_loads(load_json, dbapi_conn)  # psycopg decodes json/jsonb columns itself

        return engine
    raise StorageError(f"unsupported database {backend!r} in {redacted(url)}: use sqlite:/// or postgresql://")


def _sqlite_engine(url: str, database: str | None) -> Engine:
    memory = not database or database == ":memory:" or database.startswith("file::memory:")
    if not memory and database:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}, json_deserializer=load_json
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy (the "begin" hook below emits BEGIN itself).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA foreign_keys = ON")
            if not memory:
                mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    cur.execute("PRAGMA journal_mode = WAL")
                # Safe in WAL mode (no corruption on crash); only the last commits can be lost on power loss.
                cur.execute("PRAGMA synchronous = NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front; readers opt into DEFERRED (see Store._read).
        mode = conn.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


# ------------------------------------------------------------------------------------------------
# migrations
# ------------------------------------------------------------------------------------------------
def _config() -> Config:
    from alembic.config import Config  # alembic loads only when the schema is checked or migrated

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


@cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    heads = _script().get_heads()
    if len(heads) != 1:
        raise StorageError(f"the shipped migrations have {len(heads)} heads; expected one")
    return heads[0]


def _known_revisions() -> set[str]:
    return {rev.revision for rev in _script().walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with engine.connect().execution_options(**{SQLITE_BEGIN: "DEFERRED"}) as conn:
        from alembic.runtime.migration import MigrationContext

        heads = MigrationContext.configure(conn).get_current_heads()
        conn.rollback()
    if len(heads) > 1:
        raise StorageError(f"the database has several migration heads {sorted(heads)}; it needs repair")
    return heads[0] if heads else None


def check_known(rev: str | None, engine: Engine) -> None:
    if rev is not None and rev not in _known_revisions():
        from stepbridge import __version__

        raise StorageError(
            f"the database at {redacted(str(engine.url))} is at schema revision {rev!r}, which this "
            f"stepbridge ({__version__}, schema head {head_revision()!r}) does not know: it was written by "
            "a newer stepbridge. Upgrade stepbridge; do not downgrade the database."
        )


_upgrade_lock = threading.Lock()


def ensure_schema(engine: Engine, *, target: str = "head") -> str:
    """Bring the schema to ``target`` (head by default) if it is not there already; return the revision.

    Safe when many processes start at once: SQLite serialises on ``BEGIN IMMEDIATE`` and PostgreSQL
    on an advisory lock, and the current revision is re-read under the lock.
    """
    try:
        rev = current_revision(engine)
        check_known(rev, engine)
        wanted = head_revision() if target == "head" else target
        if rev == wanted:
            return rev
        with _upgrade_lock, engine.connect() as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({zlib.crc32(b'stepbridge-migrate')})")
            # Re-check under the lock: another process may have upgraded meanwhile.
            from alembic.runtime.migration import MigrationContext

            locked_rev = MigrationContext.configure(conn).get_current_revision()
            check_known(locked_rev, engine)
            if locked_rev != wanted:
                cfg = _config()
                cfg.attributes["connection"] = conn
                from alembic import command

                command.upgrade(cfg, target)
        return wanted
    except StorageError:
        raise
    except Exception as exc:
        reason = scrub(str(getattr(exc, "orig", None) or exc)).strip().splitlines() or [type(exc).__name__]
        raise StorageError(f"cannot migrate the database at {redacted(str(engine.url))}: {reason[0]}") from exc


def upgrade(url: str | None = None, *, target: str = "head") -> str:
    """Upgrade the database at ``url`` (default: :func:`default_url`) to ``target``; return the revision.

    This is what ``stepbridge db upgrade`` runs.
    """
    engine = make_engine(url or default_url())
    try:
        return ensure_schema(engine, target=target)
    finally:
        engine.dispose()
