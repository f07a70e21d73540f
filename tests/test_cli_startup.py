"""What a command loads: the database stack (SQLAlchemy, SQLModel, Alembic), the HTTP client (aiohttp),
ZeroMQ and DSPy load only in the commands that use them. Each was a large share of every command's
start-up (about half of ``stepbridge --version``), paid again by every test that starts the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("sqlalchemy", "sqlmodel", "alembic", "aiohttp", "zmq", "dspy", "litellm", "ray", "psycopg")
# A real process (sys.modules of the test process is shared with every other test): run the command as
# the console script does, then report which heavy packages it loaded.
PROBE = """
import json, sys
from stepbridge.cli import main
code = 0
try:
    main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code or 0
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": sorted({name.partition(".")[0] for name in sys.modules})}, f)
"""


def loaded(tmp_path: Path, *args: str) -> set[str]:
    report = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, str(report), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert report.exists(), proc.stderr
    result = json.loads(report.read_text())
    assert result["code"] == 0, proc.stdout + proc.stderr  # the command did its work
    return set(result["modules"]) & set(HEAVY)


@pytest.mark.parametrize("args", [
    ["--version"],
    ["--help"],
    ["run", "--help"],
    ["validate", "examples/rag_qa.yaml"],
    ["validate", "examples/rag_qa.yaml", "--json"],
    ["run", "examples/rag_qa.yaml", "-i", "question=What is the Eiffel Tower?", "--no-record"],
], ids=" ".join)
def test_light_commands_load_no_heavy_package(tmp_path: Path, args: list[str]) -> None:
    assert loaded(tmp_path, *args) == set()


def test_the_probe_sees_what_a_command_loads(tmp_path: Path) -> None:
    """The check above can fail: a command that opens the store loads the database stack."""
    assert {"sqlalchemy", "sqlmodel"} <= loaded(tmp_path, "executions", "list", "--db",
                                                 f"sqlite:///{tmp_path / 'sb.db'}")
