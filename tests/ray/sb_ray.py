"""What the test actors host: the native adapter, with the pool tests' tools (nap, charge, ...) and the
conformance suite's (conformance_raise, ...) registered in the actor process."""

from __future__ import annotations

from typing import Any

import sb_pool  # noqa: F401  (registers sbtest_nap, sbtest_charge, ...)
from stepbridge.adapters.native import NativeAdapter
from stepbridge.conformance.fixtures import register

register()


def make_adapter(**kwargs: Any) -> NativeAdapter:
    return NativeAdapter(**kwargs)
