"""Reading an operator's file (a program, a dataset) without letting the file choose how long that takes.

Only a regular file is read, and at most ``limit`` bytes of it: a FIFO would block the command until a
writer came, and a device (``/dev/zero``, a terminal) never ends. The file is opened non-blocking and
checked on the open descriptor, so a file swapped for a FIFO between a check and the open cannot block
the read either.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["FileRefused", "read_regular"]


class FileRefused(ValueError):
    """The path is not a regular file, or it is larger than the limit (``size`` then says how large)."""

    def __init__(self, message: str, size: int | None = None):
        super().__init__(message)
        self.size = size


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``); ``OSError`` when it cannot be opened or
    read, :class:`FileRefused` when it is not a regular file or is larger than ``limit``."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "folder" if stat.S_ISDIR(info.st_mode) else "pipe" if stat.S_ISFIFO(info.st_mode) else \
                "device or socket"
            raise FileRefused(f"{path}: a {kind}, not a regular file")
        if info.st_size > limit:
            raise FileRefused(f"{path}: {info.st_size} bytes is more than the {limit} allowed", info.st_size)
        os.set_blocking(fd, True)
        raw = fh.read(limit + 1)  # bounded: the file may grow while it is read
    if len(raw) > limit:
        raise FileRefused(f"{path}: more than the {limit} bytes allowed", len(raw))
    return raw
