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

from .config import PoolConfig
from .pool import PoolAdapter, query_status

__all__ = ["PoolAdapter", "PoolConfig", "query_status"]
