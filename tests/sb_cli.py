"""``stepbridge ARGS`` in the test process, answered as ``subprocess.run`` would (a plain module: conftest files
are not importable).

A CLI process costs about half a second of CPU before it does anything (the interpreter, pydantic, typer,
the database stack for commands that record); a test that checks a command's exit code, JSON or text
through a dozen invocations spends most of its time starting processes. What only a real process shows
(start-up imports, signals, exit codes set by the interpreter, output of a fresh console) keeps its own
real-process tests: tests/test_cli_startup.py, and at least one per behaviour in the files that use this.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping

from typer.testing import CliRunner


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command line's ``main`` on ``args`` with ``env`` as the environment (unset names stay as they
    are); its exit code, stdout and stderr."""
    from stepbridge.cli import main

    changed = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}
    sigint = signal.getsignal(signal.SIGINT)  # main() installs its Ctrl-C handler: the test process keeps its own
    code: int = 0
    with CliRunner().isolation(env=changed) as (out, err, _):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            signal.signal(signal.SIGINT, sigint)
            sys.stdout.flush()
            sys.stderr.flush()
        stdout, stderr = out.getvalue().decode("utf-8", "replace"), err.getvalue().decode("utf-8", "replace")
    return subprocess.CompletedProcess(["stepbridge", *args], code, stdout, stderr)
