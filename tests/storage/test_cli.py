"""The storage sub-commands, driven through typer's runner against real databases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sb_storage import SECRET, make_program
from stepbridge.adapter import RunOptions
from stepbridge.errors import LMError
from stepbridge.result import LMCall, RunResult, StepTrace
from stepbridge.storage import Store
from stepbridge.storage.cli import db_app, executions_app, programs_app
from typer.testing import CliRunner

runner = CliRunner()


def _file(tmp_path: Path, instructions: str | None = None) -> Path:
    path = tmp_path / f"qa{abs(hash(instructions))}.yaml"
    make_program("qa", instructions).dump(path)
    return path


def test_programs_commands(db_url: str, tmp_path: Path) -> None:
    db = ["--db", db_url]
    r = runner.invoke(programs_app, ["add", str(_file(tmp_path)), "--alias", "prod", "-m", "first", *db])
    assert r.exit_code == 0, r.output
    assert "stored qa@1" in r.output
    r = runner.invoke(programs_app, ["add", str(_file(tmp_path)), *db])
    assert r.exit_code == 0 and "already stored as qa@1" in r.output
    r = runner.invoke(programs_app, ["add", str(_file(tmp_path, "v2")), "--json", *db])
    added = json.loads(r.output)
    assert added["created"] and added["version"] == 2 and added["parent"] == make_program().content_hash

    listing = json.loads(runner.invoke(programs_app, ["list", "--json", *db]).output)
    assert [(p["name"], p["versions"], p["latest_version"]) for p in listing] == [("qa", 2, 2)]
    assert "qa" in runner.invoke(programs_app, ["list", *db]).output

    shown = json.loads(runner.invoke(programs_app, ["show", "qa@prod", "--json", *db]).output)
    assert shown["version"] == 1 and shown["aliases"] == ["prod"] and shown["program"]["name"] == "qa"
    r = runner.invoke(programs_app, ["show", "qa@2", *db])
    assert r.exit_code == 0 and "v2" in r.output

    hist = json.loads(runner.invoke(programs_app, ["history", "qa", "--json", *db]).output)
    assert [h["version"] for h in hist] == [1, 2]
    assert runner.invoke(programs_app, ["history", "nope", *db]).exit_code == 1

    r = runner.invoke(programs_app, ["alias", "qa@prod", "qa@2", *db])
    assert r.exit_code == 0 and "qa@2" in r.output
    assert runner.invoke(programs_app, ["alias", "qa", "qa@2", *db]).exit_code == 2

    out = tmp_path / "exported.json"
    assert runner.invoke(programs_app, ["export", "qa@prod", "-o", str(out), *db]).exit_code == 0
    from stepbridge import Program

    assert Program.model_validate(json.loads(out.read_text())).content_hash == make_program("qa", "v2").content_hash
    r = runner.invoke(programs_app, ["export", "qa@1", *db])
    assert r.exit_code == 0 and "name: qa" in r.output

    r = runner.invoke(programs_app, ["show", "qa@9", *db])
    assert r.exit_code == 1 and "no stored program" in r.output


def test_add_invalid_file_exits_2(db_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepbridge: 1\nname: qa\nsignature: 'q -> a'\nsteps:\n  - call: ghost\n")
    r = runner.invoke(programs_app, ["add", str(bad), "--db", db_url])
    assert r.exit_code == 2


def _record(store: Store) -> tuple[str, str]:
    program = make_program()
    ok = store.begin(program, {"question": "hello"}, RunOptions(), "native")
    trace = [StepTrace(step=0, kind="call", module="answer", module_type="predict", inputs={"question": "hello"},
                       outputs={"answer": "hi"}, duration_ms=2.0,
                       lm_calls=[LMCall(model="ref/m", messages=[{"role": "system", "content": "x" * 500},
                                                                 {"role": "user", "content": "hello"}],
                                        response="[[ ## answer ## ]]\nhi", usage={"total_tokens": 9})]),
             StepTrace(step=1, kind="return", outputs={"answer": "hi"})]
    store.succeed(ok.execution_id, RunResult(outputs={"answer": "hi"}, trace=trace, backend="native",
                                             program_hash=program.content_hash, execution_id=ok.execution_id))
    bad = store.begin(program, {"question": "x"}, RunOptions(), "native")
    store.fail(bad.execution_id, LMError(f"bad key {SECRET}", status=401))
    return ok.execution_id, bad.execution_id


def test_executions_commands(db_url: str) -> None:
    db = ["--db", db_url]
    with Store(db_url) as store:
        ok, bad = _record(store)
    listed = json.loads(runner.invoke(executions_app, ["list", "--json", *db]).output)
    assert [e["id"] for e in listed] == [bad, ok]
    assert set(listed[0]) >= {"id", "program_hash", "program_name", "backend", "status", "inputs", "outputs",
                              "error", "usage", "attempts", "created_at", "finished_at"}
    only = json.loads(runner.invoke(executions_app, ["list", "--status", "failed", "--json", *db]).output)
    assert [e["id"] for e in only] == [bad]
    assert json.loads(runner.invoke(executions_app, ["list", "--since", "1h", "--program", "qa", "--limit", "1",
                                                     "--json", *db]).output)[0]["id"] == bad
    assert runner.invoke(executions_app, ["list", "--since", "yesterday-ish", *db]).exit_code == 2
    r = runner.invoke(executions_app, ["list", *db])
    assert r.exit_code == 0 and "succeeded" in r.output and "failed" in r.output

    r = runner.invoke(executions_app, ["show", ok, *db])
    assert r.exit_code == 0, r.output
    assert "LM call 1" in r.output and "folded" in r.output and "answer" in r.output
    shown = json.loads(runner.invoke(executions_app, ["show", ok[:10], "--json", *db]).output)
    assert shown["id"] == ok and len(shown["trace"]) == 2
    assert [h["to_status"] for h in shown["status_history"]] == ["running", "succeeded"]
    r = runner.invoke(executions_app, ["show", bad, *db])
    assert r.exit_code == 0 and "LMError" in r.output and SECRET not in r.output
    assert runner.invoke(executions_app, ["show", "0" * 32, *db]).exit_code == 1


def test_db_upgrade(db_url: str) -> None:
    from stepbridge.storage.db import head_revision

    r = runner.invoke(db_app, ["upgrade", "--db", db_url])
    assert r.exit_code == 0 and head_revision() in r.output
    r = runner.invoke(db_app, ["current", "--db", db_url])
    assert r.exit_code == 0 and head_revision() in r.output


@pytest.mark.parametrize("cmd", [["list"], ["show", "x"]])
def test_bad_database_url_is_a_clean_error(cmd: list[str]) -> None:
    r = runner.invoke(programs_app, [*cmd, "--db", "mysql://nope/db"])
    assert r.exit_code == 1 and "unsupported database" in r.output
