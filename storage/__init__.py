"""Storage: program versions, aliases and every execution, in SQLite (default) or PostgreSQL."""

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
