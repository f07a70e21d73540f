"""Standalone broker mode: ``stepbridge pool start``.

One ROUTER socket serves both sides: workers (local ones it spawns, remote ones that connect with
``stepbridge worker --connect ADDR``) and any number of client processes
(``PoolAdapter(address=ADDR)``, ``stepbridge run --backend pool --pool ADDR``), whose REQUEST
frames carry the program definition inline. ``stepbridge pool status`` asks it for a STATUS.
SIGTERM or Ctrl-C drains: queued work is refused, in-flight work finishes, workers stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from .router import Router

__all__ = ["run_broker", "serve"]

log = logging.getLogger("stepbridge.bridge.broker")


async def serve(
    *,
    bind: str | None = None,
    workers: int = 2,
    backend: str = "native",
    capacity: int = 16,
    queue_size: int = 1000,
    curve_secret: str | Path | None = None,
    curve_clients: str | Path | None = None,
    allow_insecure_tcp: bool = False,
    announce: Any = None,
    **router_options: Any,
) -> None:
    """Run a broker until SIGTERM/SIGINT; ``announce(address)`` is called once it is bound."""
    from .pool import declared_capabilities

    router = Router(bind, workers=workers, backend=backend, capacity=capacity, queue_size=queue_size,
                    curve_secret=curve_secret, allowed_clients=curve_clients, allow_insecure_tcp=allow_insecure_tcp,
                    expected_capabilities=declared_capabilities(backend) if workers else frozenset(),
                    serve_clients=True, **router_options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await router.start()
    if announce is not None:
        announce(router.address)
    try:
        await stop.wait()
    finally:
        log.info("broker draining")
        await router.close(drain=True)


def run_broker(**kwargs: Any) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s broker %(levelname)s %(message)s")

    def announce(address: str) -> None:
        sys.stdout.write(f"stepbridge pool listening on {address}\n")
        sys.stdout.flush()

    asyncio.run(serve(announce=announce, **kwargs))
