"""The ZeroMQ worker pool: an adapter that runs programs in worker processes, and a standalone broker.

Module map (one concept each):

- :mod:`~stepbridge.bridge.pool` — :class:`PoolAdapter` (local pool, or client of a broker)
- :mod:`~stepbridge.bridge.config` — :class:`PoolConfig`, every setting in one object
- :mod:`~stepbridge.bridge.scheduler` — the rules: queue, credit, retries, deadlines, routing (pure)
- :mod:`~stepbridge.bridge.router` — the sockets: frames in, scheduler actions out
- :mod:`~stepbridge.bridge.supervisor` — local worker processes: spawn, watch, kill
- :mod:`~stepbridge.bridge.worker` — the worker process; :mod:`~stepbridge.bridge.data` — data files by content
- :mod:`~stepbridge.bridge.protocol` — the wire format; :mod:`~stepbridge.bridge.net` — socket set-up
- :mod:`~stepbridge.bridge.broker` — ``stepbridge pool start``; :mod:`~stepbridge.bridge.logs` — logging
  that never blocks the I/O loop
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepbridge import lazy

if TYPE_CHECKING:
    from .config import PoolConfig
    from .pool import PoolAdapter, query_status

__all__ = ["PoolAdapter", "PoolConfig", "query_status"]

# Imported on first use: the CLI mounts `stepbridge pool` and `worker` from stepbridge.bridge.cli, and
# commands that never touch a pool must not load ZeroMQ, the scheduler and the wire format.
_MODULE = {"PoolAdapter": "pool", "PoolConfig": "config", "query_status": "pool"}

__getattr__, __dir__ = lazy.exports(__name__, _MODULE)
