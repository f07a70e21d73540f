"""The command line as a newcomer meets it: version, batch results on screen, --out in input order, Ctrl-C,
configuration mistakes caught before anything runs (with file, line and "did you mean"), the executions
table, plain option help, and a standalone pool found without pasting its address. Each test runs its
command in a real process; read-backs and variations go through the CLI's ``main`` (tests/sb_cli.py)."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sb_cli import run_cli
from stepbridge.cli import _InOrder

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLASSIFY = str(EXAMPLES / "classify.yaml")


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "STEPBRIDGE_HOME": str(home), "CI": "true", "COLUMNS": "160", **extra}


def cli(*args: str, home: Path, real: bool = False, **extra: str) -> subprocess.CompletedProcess[str]:
    """``stepbridge ARGS`` with its home in ``home``: in this process, or (``real``) in a process of its own."""
    if not real:
        return run_cli(*args, env={"STEPBRIDGE_HOME": str(home), "CI": "true", "COLUMNS": "160", **extra})
    return subprocess.run([sys.executable, "-m", "stepbridge.cli", *args], capture_output=True, text=True,
                          env=env_for(home, **extra), timeout=180)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def rows_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"ticket": f"ticket number {i}"}) + "\n" for i in range(n)))
    return path


def recorded(home: Path) -> list[dict]:
    return json.loads(cli("executions", "list", "--json", home=home).stdout)


def test_version(home: Path) -> None:
    done = cli("--version", home=home, real=True)
    assert done.returncode == 0 and done.stdout.startswith("stepbridge 0.")


def test_batch_without_json_or_out_shows_every_row(home: Path, tmp_path: Path) -> None:
    done = cli("run", CLASSIFY, "--inputs", str(rows_file(tmp_path, 3)), home=home, real=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["#", "ticket", "team", "urgent"]  # inputs, then outputs
    assert [line.split()[0] for line in lines[1:]] == ["0", "1", "2"]
    assert all(f"ticket number {i}" in lines[1 + i] for i in range(3))
    assert "3/3 succeeded" in done.stderr


def test_out_rows_are_in_input_order_with_their_index(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = cli("run", CLASSIFY, "--inputs", str(rows_file(tmp_path, 30)), "--concurrency", "16", "--out", str(out),
               home=home, real=True)
    assert done.returncode == 0, done.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in written] == list(range(30))
    assert [r["inputs"]["ticket"] for r in written] == [f"ticket number {i}" for i in range(30)]
    assert done.stdout == ""  # the results are in the file, not repeated on screen


def test_in_order_writer_holds_rows_until_those_before_them_are_written() -> None:
    for _ in range(50):
        order = list(range(40))
        random.shuffle(order)
        fh = io.StringIO()
        fh.close = lambda: None  # type: ignore[method-assign]
        sink = _InOrder(fh)
        for i in order:
            sink.add(i, {"index": i})
            written = [json.loads(line)["index"] for line in fh.getvalue().splitlines()]
            assert written == list(range(len(written)))  # a prefix, never a gap
        sink.close()
        assert [json.loads(line)["index"] for line in fh.getvalue().splitlines()] == list(range(40))


def test_ctrl_c_exits_130_and_leaves_nothing_running(home: Path, tmp_path: Path) -> None:
    rows = rows_file(tmp_path, 12)
    proc = subprocess.Popen([sys.executable, "-m", "stepbridge.cli", "run", CLASSIFY, "--inputs", str(rows),
                             "--lm", "reference/slow-30000", "--concurrency", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(home))
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "batch ID: 12 row(s) recorded": the rows are in the store, runs have begun
    assert "recorded" in line, line
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    statuses = {e["status"] for e in recorded(home)}
    assert statuses == {"cancelled"}, statuses


def test_a_mistyped_lm_profile_is_a_configuration_error_and_nothing_is_recorded(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[lm.profiles.local]\nmodel = "openai/llama3"\nbase_url = "http://127.0.0.1:9/v1"\n')
    done = cli("run", CLASSIFY, "-i", "ticket=hi", "--lm", "locl", home=home, real=True,
               STEPBRIDGE_CONFIG=str(config))
    assert done.returncode == 2
    assert "ConfigurationError" in done.stderr and "did you mean 'local'?" in done.stderr
    assert recorded(home) == []
    as_json = cli("run", CLASSIFY, "-i", "ticket=hi", "--lm", "locl", "--json", home=home,
                  STEPBRIDGE_CONFIG=str(config))
    error = json.loads(as_json.stdout)["error"]
    assert error["type"] == "ConfigurationError" and error["details"] == {"where": "--lm", "suggestion": "local"}


def test_a_program_naming_an_unknown_profile_fails_before_running(home: Path, tmp_path: Path) -> None:
    program = tmp_path / "p.yaml"
    program.write_text((EXAMPLES / "classify.yaml").read_text().replace("name: classify",
                                                                       "name: classify\nlm: {profile: locl}", 1))
    done = cli("run", str(program), "-i", "ticket=hi", home=home, real=True)
    assert done.returncode == 2 and "/lm: unknown LM profile 'locl'" in done.stderr, done.stderr
    assert recorded(home) == []


def test_a_config_file_with_a_toml_error_is_named_with_its_line(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[lm.profiles.local]\nmodel = "openai/llama3\n')
    done = cli("run", CLASSIFY, "-i", "ticket=hi", home=home, real=True, STEPBRIDGE_CONFIG=str(config))
    assert done.returncode == 2
    assert str(config) in done.stderr and "line 2" in done.stderr and "adapter" not in done.stderr
    config.write_text('[lm.profiles.local]\nmodle = "openai/llama3"\n')
    done = cli("run", CLASSIFY, "-i", "ticket=hi", home=home, STEPBRIDGE_CONFIG=str(config))
    assert done.returncode == 2 and "[lm.profiles.local]: modle" in done.stderr, done.stderr


def test_executions_list_shows_errors_and_refuses_unknown_statuses(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ticket": 5}\n')
    assert cli("run", CLASSIFY, "--inputs", str(bad), home=home, real=True).returncode == 1
    listed = cli("executions", "list", home=home)
    assert "InputValidationError: input 'ticket' must be str" in listed.stdout, listed.stdout
    typo = cli("executions", "list", "--status", "faild", home=home)
    assert typo.returncode == 2 and "did you mean 'failed'?" in typo.stderr
    short = cli("executions", "show", "ab", home=home)
    assert short.returncode == 2 and "too short" in short.stderr
    unknown = cli("executions", "show", "abcdef0123", home=home)
    assert unknown.returncode == 1 and "no execution" in unknown.stderr


def test_executions_list_reads_at_80_columns(home: Path, tmp_path: Path) -> None:
    """Tries and duration stay on screen, the error gets lines of its own (at most three), and stored text
    cannot move the terminal's cursor."""
    from stepbridge import LMError, RunOptions, StepError, load_program
    from stepbridge.storage import Store

    url = f"sqlite:///{tmp_path / 'sb.db'}"
    with Store(url) as store:
        begun = store.begin(load_program(CLASSIFY), {"ticket": "hi"}, RunOptions(),
                            "stepbridge.conformance.hosted:pool_native")
        store.fail(begun.execution_id, StepError("the LM said \x1b[2J" + "try again later; " * 30, step=0,
                                                 cause=LMError("503")))
    done = cli("executions", "list", "--db", url, home=home, real=True, COLUMNS="80")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, done.stdout
    assert lines[0].split() == ["id", "program", "backend", "status", "tries", "duration", "created"]
    program, backend, status, tries = lines[1].split()[1:5]
    assert (program, status, tries) == ("classify", "failed", "1") and backend.endswith("…"), lines[1]
    assert [line[:2] for line in lines[2:]] == ["  "] * 3 and lines[-1].endswith("…"), done.stdout
    assert lines[2].startswith("  StepError: the LM said \ufffd[2Jtry again later;"), lines[2]
    assert "\x1b" not in done.stdout


@pytest.mark.parametrize("command", [["run"], ["executions", "list"], ["lm", "serve"], ["pool", "start"], ["--"]])
def test_option_help_has_no_python_type_tags(command: list[str]) -> None:
    """In-process (the click command the console script runs): help is text, and a process each costs seconds."""
    from click.testing import CliRunner
    from stepbridge.cli import command as cli_command

    args = [c for c in command if c != "--"]
    done = CliRunner().invoke(cli_command(), [*args, "--help"], prog_name="stepbridge", env={"COLUMNS": "160"})
    assert done.exit_code == 0, done.output
    assert "<bool>" not in done.output and "<str>" not in done.output and "<list[" not in done.output
    assert "--help" in done.output and "Usage: stepbridge" in done.output


def test_lm_serve_records_with_upstream_and_needs_a_cassette(home: Path) -> None:
    done = cli("lm", "serve", "--upstream", "http://127.0.0.1:9/v1", home=home, real=True)
    assert done.returncode == 2 and "--cassette" in done.stderr
    assert "--record" not in cli("lm", "serve", "--help", home=home).stdout  # kept working, no longer advertised
    assert "echoes the inputs" in cli("lm", "serve", "--help", home=home).stdout


def test_pool_start_then_run_and_status_need_no_address(home: Path) -> None:
    runtime = tempfile.mkdtemp(prefix="sbrt-")  # short: ipc paths are limited to ~107 bytes
    extra = {"XDG_RUNTIME_DIR": runtime}
    broker = subprocess.Popen([sys.executable, "-m", "stepbridge.cli", "pool", "start", "--workers", "1"],
                              stdout=subprocess.PIPE, text=True, env=env_for(home, **extra))
    try:
        assert broker.stdout is not None
        line = broker.stdout.readline()
        assert f"listening on ipc://{runtime}/stepbridge/pool.sock" in line, line
        done = cli("run", CLASSIFY, "-i", "ticket=refund me", "--backend", "pool", "--json", home=home, real=True,
                   **extra)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["backend"] == "pool"
        status = cli("pool", "status", "--json", home=home, **extra)
        assert status.returncode == 0, status.stderr
        assert sum(w["done"] for w in json.loads(status.stdout)["workers"]) == 1
        second = cli("pool", "start", home=home, real=True, **extra)  # in this process it would serve, if wrong
        assert second.returncode == 2 and "already running" in second.stderr
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(timeout=60)
    # the broker is gone: its socket file is stale; an explicit address fails at once, the default falls back
    # to a pool for this run only
    stale = cli("pool", "status", home=home, **extra)
    assert stale.returncode == 1 and "no pool is running" in stale.stderr
    wrong = cli("run", CLASSIFY, "-i", "ticket=x", "--backend", "pool", home=home, STEPBRIDGE_POOL="tcp://127.0.0.1:9",
                **extra)
    assert wrong.returncode == 2 and "no pool is running at tcp://127.0.0.1:9" in wrong.stderr
    assert "$STEPBRIDGE_POOL" in wrong.stderr
    local = cli("run", CLASSIFY, "-i", "ticket=x", "--backend", "pool", "--json", "--no-record", home=home, real=True,
                **extra)
    assert local.returncode == 0, local.stderr
