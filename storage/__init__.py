"""Storage: program versions, aliases and every execution, in SQLite (default) or PostgreSQL."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
