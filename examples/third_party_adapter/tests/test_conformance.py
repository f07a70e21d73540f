"""Certify TinyAdapter with stepbridge's shared conformance suite."""

from stepbridge.conformance import AdapterConformance
from tiny_adapter import make_adapter


class TestTinyAdapter(AdapterConformance):
    adapter_factory = make_adapter
