"""The command line's heap settling: what is alive when a command starts running is set aside from the
cyclic garbage collector.

A batch or an evaluation keeps every row's result until it ends, so the collector's full collections
come round again and again as it grows, and each one walked the whole start-up heap too (the imported
libraries, SQLAlchemy's and pydantic's internals, the opened store): ~200 µs of CPU per recorded
evaluation row, measured. Frozen (:func:`gc.freeze`), those objects are never walked again; they live
as long as the process anyway. Only the CLI calls this, once, right before its event loop starts: a
library must not change its host's collector.
"""

from __future__ import annotations

import gc

__all__ = ["settle"]

_settled = False


def settle() -> None:
    """Collect what is garbage now, then freeze every surviving object out of future collections.
    Once per process: objects that are garbage by a later call (a test calling the CLI again and again)
    must stay collectable."""
    global _settled
    if not _settled:
        _settled = True
        gc.collect()
        gc.freeze()
