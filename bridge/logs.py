"""Logging that a flood cannot turn into a stall.

Two separate problems, two tools:

- :class:`Throttle` rate-limits a kind of message (a refused frame, a refused connection): the first
  ``burst`` per ``window`` are logged, the rest are counted and summarised in one line when the
  window ends. Peers choose how many bad frames they send; they do not choose how many lines we write.
- :func:`configure_process_logging` (for processes we own: the broker, workers) puts a bounded queue
  between the loggers and stderr. The I/O loop only ever does a non-blocking ``put``; one thread
  writes to a duplicate of stderr's file descriptor. If nobody reads stderr (a full pipe), that
  thread blocks, the queue fills, and further records are dropped and counted (reported once the
  writer gets through again) instead of blocking the loop that serves requests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from stepbridge.secrets import scrub

__all__ = ["Throttle", "configure_process_logging"]


class Throttle:
    """At most ``burst`` records per key and ``window`` seconds; the rest are counted, then summarised."""

    def __init__(self, logger: logging.Logger, *, burst: int = 5, window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.burst = burst
        self.window = window
        self.clock = clock
        self._state: dict[str, list[float]] = {}  # key -> [window start, logged, suppressed]
        self.suppressed_total = 0

    def log(self, level: int, key: str, msg: str, *args: Any) -> None:
        now = self.clock()
        state = self._state.get(key)
        if state is None or now - state[0] >= self.window:
            if state is not None:
                self._summarise(key, state, now)
            state = self._state[key] = [now, 0, 0]
        if state[1] < self.burst:
            state[1] += 1
            self.logger.log(level, msg, *args)
        else:
            state[2] += 1
            self.suppressed_total += 1

    def warning(self, key: str, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def flush(self) -> None:
        """Summarise windows that have ended (call now and then, e.g. from a housekeeping tick)."""
        now = self.clock()
        for key, state in list(self._state.items()):
            if now - state[0] >= self.window:
                self._summarise(key, state, now)
                del self._state[key]

    def _summarise(self, key: str, state: list[float], now: float) -> None:
        if state[2]:
            self.logger.warning("%d more %s message(s) suppressed in the last %.0fs", int(state[2]), key,
                                now - state[0])


class _QueueHandler(logging.Handler):
    """Formats (and scrubs) on the caller's thread, then a non-blocking put; a full queue drops and counts."""

    def __init__(self, records: queue.Queue[str | None]):
        super().__init__()
        self.records = records
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # the writer uses its own descriptor (no wrapper of sys.stderr sees it): scrub here
            line = scrub(self.format(record))
        except Exception:
            self.handleError(record)
            return
        try:
            self.records.put_nowait(line)
        except queue.Full:
            self.dropped += 1


def _writer(records: queue.Queue[str | None], handler: _QueueHandler, fd: int) -> None:
    reported = 0
    with contextlib.suppress(Exception):
        out = os.fdopen(fd, "wb", buffering=0)
        while True:
            line = records.get()
            if line is None:
                return
            dropped = handler.dropped
            if dropped != reported:
                out.write(f"... {dropped - reported} log record(s) dropped: stderr was not being read\n".encode())
                reported = dropped
            out.write((line + "\n").encode("utf-8", "replace"))


def configure_process_logging(level: int | str, fmt: str, *, capacity: int = 10_000) -> logging.Handler:
    """Route this process's logging through a bounded queue to a writer thread (stderr never blocks us).

    Only for processes stepbridge owns (the broker, workers): a library does not reconfigure logging.
    """
    if isinstance(level, str):
        level = getattr(logging, level.upper(), logging.WARNING)
    records: queue.Queue[str | None] = queue.Queue(capacity)
    handler = _QueueHandler(records)
    handler.setFormatter(logging.Formatter(fmt))
    handler.setLevel(level)  # also for libraries that set their own loggers' levels lower
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # a daemon thread on a duplicate descriptor: at exit it is abandoned, even mid-write to a full pipe,
    # and it shares no lock with sys.stderr or the logging module
    fd = os.dup(2)
    threading.Thread(target=_writer, args=(records, handler, fd), name="stepbridge-log", daemon=True).start()
    return handler
