"""stepbridge's adapter conformance suite (design section 8).

Run it against any adapter::

    stepbridge conformance mypkg.adapter:make_adapter --report out/
    python -m stepbridge.conformance mypkg.adapter:make_adapter --report out/
    pytest -p stepbridge.conformance.plugin --pyargs stepbridge.conformance --adapter mypkg.adapter:make_adapter

or subclass :class:`AdapterConformance` in the adapter's own tests (``adapter_factory = make_adapter``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SUITE_VERSION", "AdapterConformance"]

#: The suite's version: major for a new or stricter check (an adapter that passed may now fail), minor for
#: new cases of existing checks, patch for messages and speed. Reports name it beside the adapter's version.
SUITE_VERSION = "2.1.0"


def __getattr__(name: str) -> Any:  # imported lazily: importing the package must not import pytest
    if name == "AdapterConformance":
        from .suite import AdapterConformance

        return AdapterConformance
    raise AttributeError(name)
