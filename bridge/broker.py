"""Standalone broker mode: ``stepbridge pool start``.

Two sockets, two roles. Clients (``PoolAdapter(address=ADDR)``, ``stepbridge run --backend pool
--pool ADDR``) connect to the **client** address and send REQUESTs that carry their program
definition inline and their data files by content; ``stepbridge pool status`` asks there too.
Workers (the local ones it spawns, remote ones started with ``stepbridge worker --connect WADDR``)
connect to the **worker** address, which over TCP admits only the worker keys the operator
authorised (``--curve-workers``). A client can never act as a worker.

The broker's logging goes through a bounded queue to a writer thread, and refused frames are
rate-limited, so a peer flooding it with garbage, or a stderr pipe that nobody reads, never stalls
the loop that serves requests. SIGTERM or Ctrl-C drains: queued work is refused, in-flight work
finishes, workers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable

from stepbridge.recorder import ProgramSource

from .config import PoolConfig
from .logs import configure_process_logging
from .router import Router

__all__ = ["run_broker", "serve"]

log = logging.getLogger("stepbridge.bridge.broker")


async def serve(config: PoolConfig, *, store: ProgramSource | None = None,
                announce: Callable[[Router], None] | None = None) -> None:
    """Run a broker until SIGTERM/SIGINT; ``announce(router)`` is called once it is bound."""
    from .pool import declared_capabilities

    router = Router(config, store=store, serve_clients=True,
                    expected_capabilities=declared_capabilities(config.backend) if config.workers else frozenset())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await router.start()
    if announce is not None:
        announce(router)
    try:
        await stop.wait()
    finally:
        log.info("broker draining")
        await router.close(drain=True)


def run_broker(config: PoolConfig) -> None:
    from stepbridge.secrets import scrub_process_output

    scrub_process_output()
    configure_process_logging(logging.INFO, "%(asctime)s broker %(levelname)s %(message)s")

    def announce(router: Router) -> None:
        sys.stdout.write(f"stepbridge pool listening on {router.client_address}\n"
                         f"stepbridge pool workers connect to {router.worker_address}\n")
        sys.stdout.flush()

    asyncio.run(serve(config, announce=announce))
