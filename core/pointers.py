"""JSON pointers (RFC 6901): how every issue and error says where in a program it is.

One escaping rule for every place that builds one (the loader's line map, validation, control-flow
checks, value references, DSPy state checks): ``~`` becomes ``~0`` and ``/`` becomes ``~1``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["escape"]


def escape(token: Any) -> str:
    """One reference token of a JSON pointer (a key or an index), escaped."""
    return str(token).replace("~", "~0").replace("/", "~1")
