"""``python -m stepbridge.conformance ADAPTER [--report DIR] [--expected-failures FILE]``."""

from stepbridge.conformance.cli import main

main()
