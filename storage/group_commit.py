"""Group commit: the recording writes of concurrent runs share one transaction.

A run's start and end are each one small write. Committed one by one they cost more than a fast
run itself; here every write submitted while a transaction is in flight joins the next one, so
under load the cost per run falls with concurrency while each caller still waits for *its* write
to be durable (recording stays exactly-once: a result is returned only after it is recorded).

Writes run in one worker thread (the process's single writer, as SQLite wants). Starts and ends of
runs are applied in bulk (see :mod:`.recording`), without SAVEPOINTs; if a bulk statement fails, the
transaction is rolled back and the group applied again with each write that failed retried alone in
a SAVEPOINT, so one failing write does not undo its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from stepbridge.errors import StorageError

from .recording import BatchFailed, BeginOp, FinishOp, Recording
from .transactions import Transactions

log = logging.getLogger("stepbridge.storage")
T = TypeVar("T")
MAX_BATCH = 256

_Item = tuple[Any, str, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class GroupCommit:
    """Batches writes from any event loop into shared transactions.

    A write is a :class:`~.recording.BeginOp` / :class:`~.recording.FinishOp` (applied in bulk with
    the others of its group by :class:`~.recording.Recording`) or any callback ``fn(conn) -> T``
    (applied alone in its SAVEPOINT).
    """

    def __init__(self, tx: Transactions, recording: Recording):
        self.tx = tx
        self.recording = recording
        self._pending: list[_Item] = []
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closed = False

    async def submit(self, op: BeginOp | FinishOp | Callable[[Connection], T], doing: str) -> T:
        """Apply ``op`` in the next shared transaction and return its result once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise StorageError("the store is closed")
            self._pending.append((op, doing, loop, future))
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

    def apply(self, ops: list[Any]) -> list[tuple[bool, Any]]:
        """Apply ``ops`` as one group in one transaction: one outcome per op, in order."""
        doing = f"recording {len(ops)} run event(s)"
        recording = self.recording
        try:  # the success path: batched statements without SAVEPOINTs
            return self.tx.write(lambda conn: recording.apply(conn, ops, isolate=None), doing)
        except BatchFailed:  # rolled back: again, with each failing write isolated in its SAVEPOINT
            return self.tx.write(lambda conn: recording.apply(conn, ops, isolate=True), doing)

    def _commit(self, batch: list[_Item]) -> None:
        ops = [item[0] for item in batch]
        results: list[tuple[bool, Any]]
        try:
            results = self.apply(ops)
        except BaseException as exc:  # the shared transaction itself failed: every caller hears it
            error = exc if isinstance(exc, StorageError) else StorageError(f"recording failed: {exc}")
            results = [(False, error)] * len(batch)
        # one wake-up per event loop, not one per write
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, _, loop, future), (ok, value) in zip(batch, results, strict=True):
            by_loop.setdefault(loop, []).append((future, ok, value))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                log.debug("group commit: an event loop closed before its writes were acknowledged")


def _settle(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in settled:
        if future.done():  # the caller was cancelled; the write still happened (or not) exactly once
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
