"""``stepbridge conformance ADAPTER [--report DIR] [--expected-failures FILE] [--certify]``: the suite behind
one command.

A thin wrapper over pytest with the suite's own plugin; exits with pytest's exit code (0: every
test of every declared capability passed or failed as expected).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

__all__ = ["app", "conformance", "main", "pytest_args"]


def pytest_args(adapter: str, report: Path | None = None, expected_failures: Path | None = None,
                extra: list[str] | None = None, *, certify: bool = False) -> list[str]:
    """The pytest command line the wrapper runs."""
    # hypothesis' pytest plugin is not needed and costs seconds of start-up where it is installed. The addopts of
    # the folder it runs in are not the suite's (a project's `-n auto` would scatter the suite over xdist
    # workers, each writing its own report; `-m 'not slow'` would leave tests out of a certification).
    args = ["-p", "stepbridge.conformance.plugin", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
            "-o", "addopts=", "--pyargs", "stepbridge.conformance", "--adapter", adapter, "-q", "-rfEX"]
    if report is not None:
        args += ["--conformance-report", str(report)]
    if expected_failures is not None:
        args += ["--expected-failures", str(expected_failures)]
    if certify:
        args.append("--certify")
    return args + list(extra or [])


def conformance(
    adapter: str = typer.Argument(..., help="The adapter: package.module:factory or a registered adapter name "
                                            "(native, dspy, pool, ray)."),
    report: Path | None = typer.Option(None, "--report", help="Write conformance.json, conformance.md and "
                                                               "junit.xml to this directory."),
    expected_failures: Path | None = typer.Option(None, "--expected-failures",
                                                  help="YAML file of known failures (test name or glob: reason)."),
    certify: bool = typer.Option(False, "--certify", help="Certify: nothing in the core set may be skipped or "
                                                          "expected to fail; the report says whether it certified."),
) -> None:
    """Certify an adapter against the shared conformance suite (pytest underneath)."""
    import pytest

    code = pytest.main(pytest_args(adapter, report, expected_failures, certify=certify))
    raise typer.Exit(int(code))


app = typer.Typer(add_completion=False, help="stepbridge adapter conformance suite")
app.command()(conformance)


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="stepbridge conformance")


if __name__ == "__main__":
    main()
