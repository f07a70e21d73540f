"""Who owns a running execution, and whether that owner is still alive.

A pid alone is not enough: pids are reused and machines reboot. The marker is the boot id plus the
process start time (from /proc), so a live process that happens to have a dead owner's pid is not
mistaken for it. Where /proc is missing we fall back to the pid alone (conservative: a live pid
counts as alive).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["Owner", "current_owner", "owner_alive"]


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    marker: str | None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """Process start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return fields[19]
    except IndexError:
        return None


def _marker(pid: int) -> str | None:
    boot, start = _boot_id(), _start_time(pid)
    if boot is None or start is None:
        return None
    return f"{boot}:{start}"


@cache
def _host() -> str:
    return socket.gethostname()


_current: dict[int, Owner] = {}


def current_owner() -> Owner:
    """This process (recomputed after fork, since the pid changes)."""
    pid = os.getpid()
    owner = _current.get(pid)
    if owner is None:
        owner = _current[pid] = Owner(host=_host(), pid=pid, marker=_marker(pid))
    return owner


def owner_alive(host: str | None, pid: int | None, marker: str | None) -> bool | None:
    """True if alive, False if certainly gone, None if we cannot tell (another host, no pid)."""
    if host is None or pid is None:
        return None
    if host != _host():
        return None
    if marker is not None:
        boot = marker.split(":", 1)[0]
        current_boot = _boot_id()
        if current_boot is not None and boot != current_boot:
            return False  # the machine rebooted since
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if marker is not None:
        now = _marker(pid)
        if now is not None and now != marker:
            return False  # the pid was reused by a different process
        # A zombie (killed but not yet reaped) is dead for our purposes.
        try:
            state = Path(f"/proc/{pid}/stat").read_text()
            state = state[state.rfind(")") + 2 :].split()[0]
            if state in ("Z", "X"):
                return False
        except (OSError, IndexError):
            pass
    return True
