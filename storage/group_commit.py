"""Group commit: the recording writes of concurrent runs share one transaction.

A run's start and end are each one small write. Committed one by one they cost more than a fast
run itself; here every write submitted while a transaction is in flight joins the next one, so
under load the cost per run falls with concurrency while each caller still waits for *its* write
to be durable (recording stays exactly-once: a result is returned only after it is recorded).

Writes run in one worker thread (the process's single writer, as SQLite wants). Each write runs
in a SAVEPOINT, so one failing write (a CAS conflict, a bad row) does not undo its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from stepbridge.errors import StorageError

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("stepbridge.storage")
T = TypeVar("T")
MAX_BATCH = 256

_Item = tuple[Callable[[Connection], Any], str, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class GroupCommit:
    """Batches write callbacks ``fn(conn) -> T`` from any event loop into shared transactions."""

    def __init__(self, store: Store):
        self.store = store
        self._pending: list[_Item] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False

    async def submit(self, fn: Callable[[Connection], T], doing: str) -> T:
        """Run ``fn`` in the next shared transaction and return its result once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise StorageError("the store is closed")
            self._pending.append((fn, doing, loop, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stepbridge-group-commit", daemon=True)
                self._thread.start()
            self._wake.notify()
        return await future

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if not self._pending and self._closed:
                    return
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        results: list[tuple[bool, Any]] = []
        try:
            def all_of(conn: Connection) -> None:
                results.clear()
                for fn, doing, _, _ in batch:
                    try:
                        with conn.begin_nested():
                            results.append((True, fn(conn)))
                    except StorageError as exc:
                        results.append((False, exc))
                    except (DBAPIError, SQLAlchemyError) as exc:
                        if isinstance(exc, DBAPIError) and self._transient(exc):
                            raise  # the whole transaction is retried by Store._write
                        results.append((False, self.store._error(exc, doing)))

            self.store._write(all_of, f"recording {len(batch)} run event(s)")
        except BaseException as exc:  # the shared transaction itself failed: every caller hears it
            error = exc if isinstance(exc, StorageError) else StorageError(f"recording failed: {exc}")
            results = [(False, error)] * len(batch)
        for (_, _, loop, future), (ok, value) in zip(batch, results, strict=True):
            loop.call_soon_threadsafe(_settle, future, ok, value)

    @staticmethod
    def _transient(exc: DBAPIError) -> bool:
        from .store import _transient

        return _transient(exc)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the caller was cancelled; the write still happened (or not) exactly once
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
