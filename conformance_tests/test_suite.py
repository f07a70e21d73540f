"""The suite as collected by ``pytest -p stepbridge.conformance.plugin --pyargs stepbridge.conformance --adapter SPEC``.

The adapter comes from ``--adapter``; to certify an adapter from your own test tree, subclass
:class:`stepbridge.conformance.AdapterConformance` instead.
"""

from __future__ import annotations

from stepbridge.conformance.suite import AdapterConformance


class TestConformance(AdapterConformance):
    """Certifies the adapter named by ``--adapter``."""
