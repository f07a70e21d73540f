"""The one transaction helper every storage write and read goes through.

Every write is one short transaction (``BEGIN IMMEDIATE`` on SQLite) retried as a whole on
transient lock or serialisation errors, so concurrent processes queue instead of failing; reads
are deferred on SQLite and never take the write lock. Database errors leave as a
:class:`~stepbridge.errors.StorageError` that names what was being done and never a secret.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from stepbridge.errors import StorageError
from stepbridge.secrets import scrub

from .db import SQLITE_BEGIN, redacted

__all__ = ["MAX_WRITE_ATTEMPTS", "Transactions", "transient"]

T = TypeVar("T")
MAX_WRITE_ATTEMPTS = 12


def transient(exc: BaseException) -> bool:
    """Lock contention or a serialisation failure: the whole transaction may simply be retried."""
    orig = getattr(exc, "orig", None)
    text = str(orig or exc).lower()
    if "database is locked" in text or "database table is locked" in text or "busy" in text:
        return True
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in ("40001", "40P01", "55P03")


class Transactions:
    """Short retried transactions on one engine (shared by the program repository, the execution log
    and the group commit)."""

    def __init__(self, engine: Engine, url: str):
        self.engine = engine
        self.url = url
        self.dialect = engine.dialect.name
        self.postgres = self.dialect == "postgresql"

    def error(self, exc: BaseException, doing: str) -> StorageError:
        """A database error as the typed error callers see: what was being done, where, and why."""
        text = scrub(str(getattr(exc, "orig", None) or exc)).strip().splitlines()
        return StorageError(f"storage error while {doing} ({redacted(self.url)}): {text[0] if text else exc}")

    def write(self, fn: Callable[[Connection], T], doing: str, *, retry_integrity: bool = False) -> T:
        """Run ``fn`` in one write transaction, retrying the whole of it on transient contention."""
        def once() -> T:
            with self.engine.begin() as conn:
                return fn(conn)

        return self._retry(once, doing, retry_integrity=retry_integrity)

    def read(self, fn: Callable[[Connection], T], doing: str) -> T:
        """Run ``fn`` in a read-only transaction (deferred on SQLite: never takes the write lock)."""
        def once() -> T:
            with self.engine.connect().execution_options(**{SQLITE_BEGIN: "DEFERRED"}) as conn:
                try:
                    return fn(conn)
                finally:
                    conn.rollback()

        return self._retry(once, doing)

    def _retry(self, once: Callable[[], T], doing: str, *, retry_integrity: bool = False) -> T:
        """Retry ``once`` with jittered backoff on lock contention (and, if asked, integrity races)."""
        delay = 0.005
        for attempt in range(MAX_WRITE_ATTEMPTS):
            last = attempt == MAX_WRITE_ATTEMPTS - 1
            try:
                return once()
            except IntegrityError as exc:
                if retry_integrity and not last:
                    time.sleep(delay * random.random())
                    continue
                raise self.error(exc, doing) from exc
            except DBAPIError as exc:
                if transient(exc) and not last:
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 0.5)
                    continue
                raise self.error(exc, doing) from exc
            except SQLAlchemyError as exc:
                raise self.error(exc, doing) from exc
        raise StorageError(f"storage busy while {doing}: gave up after {MAX_WRITE_ATTEMPTS} attempts")

    def insert(self, table: Table) -> Any:
        """INSERT with the dialect's ``ON CONFLICT`` support (``on_conflict_do_nothing``/``_do_update``)."""
        return (pg_insert if self.postgres else sqlite_insert)(table)
