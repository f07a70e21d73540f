"""Local worker processes: spawn them with the pool's settings, watch them exit, kill on request.

The decisions (respawn now, back off, quarantine a slot that keeps dying before READY) are the
scheduler's (:meth:`stepbridge.bridge.scheduler.Scheduler.slot_exited`); this module only does what
they say to real processes and reports every exit (with whether we killed it on purpose) back.

Workers get ``--parent-pid``, so they exit when this process dies, even by SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from .config import PoolConfig

__all__ = ["Supervisor"]

log = logging.getLogger("stepbridge.bridge.supervisor")


class Supervisor:
    """Owns the local worker processes of one router, one per slot."""

    def __init__(self, config: PoolConfig, address: str, *, data_cache: Path,
                 curve_files: tuple[Path, Path] | None, on_exit: Callable[[int, int, bool], None]):
        self.config = config
        self.address = address
        self.data_cache = data_cache
        self.curve_files = curve_files
        self.on_exit = on_exit  # (slot, pid, killed by us)
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self._killed: set[int] = set()  # pids we killed on purpose
        self._watchers: set[asyncio.Task[None]] = set()
        self.stopping = False

    def command(self) -> list[str]:
        c = self.config
        cmd = [sys.executable, "-m", "stepbridge.bridge.worker", "--connect", self.address,
               "--backend", c.backend, "--capacity", str(c.capacity), "--heartbeat", str(c.heartbeat),
               "--liveness", str(c.liveness), "--parent-pid", str(os.getpid()),
               "--log-level", c.worker_log_level, *c.worker_args]
        if c.store_url is not None and "--db" not in c.worker_args:
            cmd += ["--db", c.store_url]
        if c.warm is not None:
            cmd.append("--warm" if c.warm else "--no-warm")
        if "--data-cache" not in c.worker_args:
            cmd += ["--data-cache", str(c.data_cache or self.data_cache)]
        if "--data-cache-bytes" not in c.worker_args:
            cmd += ["--data-cache-bytes", str(c.data_cache_bytes)]
        if c.data_root is not None and "--data-root" not in c.worker_args:
            cmd += ["--data-root", str(c.data_root)]
        if self.curve_files is not None and "--curve-secret" not in c.worker_args:
            cmd += ["--curve-secret", str(self.curve_files[0]), "--curve-server", str(self.curve_files[1])]
        return cmd

    async def spawn(self, slot: int) -> int | None:
        """Start the worker of ``slot``; its pid (None while stopping)."""
        if self.stopping:
            return None
        env = dict(os.environ if self.config.worker_env is None else self.config.worker_env)
        proc = await asyncio.create_subprocess_exec(*self.command(), stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL, env=env)
        self.processes[slot] = proc
        task = asyncio.ensure_future(self._watch(slot, proc))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return proc.pid

    async def _watch(self, slot: int, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        if self.processes.get(slot) is proc:
            del self.processes[slot]
        killed = proc.pid in self._killed
        self._killed.discard(proc.pid)
        if not self.stopping:
            self.on_exit(slot, proc.pid, killed)

    def kill(self, slot: int, reason: str) -> None:
        """Kill the worker of ``slot`` (hung, or ignoring a cancel); its exit is reported as ours."""
        proc = self.processes.get(slot)
        if proc is None or proc.returncode is not None:
            return
        log.warning("killing local worker %d (pid %d): %s", slot, proc.pid, reason)
        self._killed.add(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    async def stop(self, timeout: float) -> None:
        """SIGTERM every worker (they drain), wait up to ``timeout``, then SIGKILL the rest."""
        self.stopping = True
        procs = [p for p in self.processes.values() if p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), max(0.5, timeout))
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
