# The conformance suite's plugin: --adapter/--expected-failures/--conformance-report options and the reports.
pytest_plugins = ["stepbridge.conformance.plugin"]
