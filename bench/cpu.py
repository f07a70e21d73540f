"""CPU time of whole processes, for the benchmarks that measure more than their own process."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time of a whole process, every thread included (ZeroMQ's I/O threads, a server's workers), from
    the scheduler's nanosecond accounting: /proc/PID/task/*/schedstat (Linux; 0 where there is none or the
    process is gone). ``getrusage`` cannot see a live child, and its tick-based figures are too coarse for
    a few hundred round trips."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid or os.getpid()}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that just ended
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9
