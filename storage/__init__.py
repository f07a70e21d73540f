"""Storage: program versions, aliases and every execution, in SQLite (default) or PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepbridge import lazy

if TYPE_CHECKING:
    from .db import default_url, upgrade
    from .models import Execution, ExecutionStatus, ProgramSummary, ProgramVersion, Source, StatusChange
    from .refs import ProgramRef, parse_ref
    from .store import Store

__all__ = [
    "Execution",
    "ExecutionStatus",
    "ProgramRef",
    "ProgramSummary",
    "ProgramVersion",
    "Source",
    "StatusChange",
    "Store",
    "default_url",
    "parse_ref",
    "upgrade",
]

# Each name is imported from its module on first use: the CLI mounts its storage commands from
# stepbridge.storage.cli, and `stepbridge --help`, `validate` or `run --no-record` must not pay for
# SQLAlchemy and SQLModel (a third of a command's start-up) to do nothing with them.
_MODULE = {"default_url": "db", "upgrade": "db", "ProgramRef": "refs", "parse_ref": "refs", "Store": "store",
           **dict.fromkeys(("Execution", "ExecutionStatus", "ProgramSummary", "ProgramVersion", "Source",
                            "StatusChange"), "models")}

__getattr__, __dir__ = lazy.exports(__name__, _MODULE)
