"""Issue 9 item 4: secrets never leave on any path — storage rows (SQLite and PostgreSQL), traces and
outputs, error text, CLI output (text and --json), logs and pool replies.

A real loopback upstream (sb_http.EchoLM) echoes the key it was sent back in a 200 answer, a 401 and
a 500 body. The keys never look like keys. Every backend is covered: native, dspy, and the pool
hosting each, where the recording process never learns the workers' key (only the workers have it).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sb_http import echo_lm
from sb_security import KEY, KEY_ENV, worker_env
from sqlalchemy import inspect, text
from stepbridge import Runner, StepbridgeError, load_program
from stepbridge.secrets import scrub
from stepbridge.storage import Store

PROGRAM = {
    "stepbridge": 1, "name": "leak", "signature": "question -> answer",
    "modules": {"first": {"type": "predict", "signature": "question -> answer"},
                "second": {"type": "predict", "signature": "question -> answer"}},
    # the second step's prompt carries the first step's answer: an echo must not travel on
    "steps": [{"call": "first", "with": {"question": "$inputs.question"}, "as": "a"},
              {"call": "second", "with": {"question": "$a.answer"}, "as": "b"},
              {"return": {"answer": "$b.answer"}}],
}
MODES = ["echo-200", "echo-401", "echo-500"]


def program(mode: str) -> dict[str, Any]:
    """PROGRAM asking the upstream for ``mode`` (the model name picks the echo)."""
    return {**PROGRAM, "name": f"leak-{mode}", "lm": {"model": f"openai/{mode}"}}
CLI = [sys.executable, "-c", "from stepbridge.cli import main; main()"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    with echo_lm() as server:
        yield server


def config(tmp_path: Path, base_url: str, *, key_env: str = KEY_ENV) -> Path:
    """The operator's config file: one profile at the echoing upstream, no retries (fast 500s)."""
    path = tmp_path / "config.toml"
    path.write_text(f'[lm.profiles.default]\nbase_url = "{base_url}"\nmodel = "openai/echo-200"\n'
                    f'api_key_env = "{key_env}"\nmax_retries = 0\ntimeout = 30\n')
    return path


def rows_text(url: str) -> str:
    """Every row of every table of the store, as text."""
    with Store(url) as store, store.engine.connect() as conn:
        tables = inspect(conn).get_table_names()
        return "\n".join(repr(list(conn.execute(text(f'SELECT * FROM "{t}"')))) for t in tables)


def outcome_text(result: Any, error: BaseException | None) -> str:
    if error is None:
        return result.model_dump_json()
    assert isinstance(error, StepbridgeError)
    trace = [t.model_dump(mode="json") if hasattr(t, "model_dump") else t for t in error.trace]
    return "\n".join([str(error), repr(error), json.dumps(error.to_dict()), json.dumps(trace)])


def test_the_upstream_really_echoes_the_key(upstream: Any) -> None:
    """Control: without scrubbing, each mode puts the key in the body the client receives."""
    import httpx

    for mode in MODES:
        prompt = [{"role": "user", "content": "[[ ## answer ## ]]\n{answer}"}]
        reply = httpx.post(f"{upstream.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                           json={"model": mode, "messages": prompt})
        assert KEY in reply.text, (mode, reply.text)


@pytest.mark.parametrize("backend", ["native", "dspy"])
@pytest.mark.parametrize("mode", MODES)
def test_in_process_outputs_traces_errors_and_rows_are_clean(backend: str, mode: str, upstream: Any, db_url: str,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("STEPBRIDGE_CONFIG", str(config(tmp_path, f"{upstream.url}/v1")))
    before = len(upstream.requests)
    result = error = None

    async def go() -> None:
        nonlocal result, error
        with Store(db_url) as store:
            async with Runner(backend, store=store) as runner:
                try:
                    result = await runner.run(load_program(program(mode)), {"question": "what is my key?"})
                except StepbridgeError as exc:
                    error = exc

    asyncio.run(go())
    assert len(upstream.requests) > before  # the key went upstream, and came back
    assert (error is None) == (mode == "echo-200")
    if result is not None:
        assert "[REDACTED]" in result.outputs["answer"]
    assert KEY not in outcome_text(result, error)
    assert KEY not in rows_text(db_url)
    assert KEY not in caplog.text


def test_cli_text_and_json_output_and_executions_show_are_clean(upstream: Any, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'cli.db'}"  # rows on PostgreSQL: the in-process and pool tests
    env = worker_env({KEY_ENV: KEY, "STEPBRIDGE_CONFIG": str(config(tmp_path, f"{upstream.url}/v1")),
                      "STEPBRIDGE_DATABASE_URL": db_url})
    for backend, mode, extra in [("native", "echo-200", []), ("native", "echo-401", ["--json"]),
                                 ("dspy", "echo-500", []), ("dspy", "echo-401", ["--json"]),
                                 ("dspy", "echo-200", ["--json"]), ("dspy", "echo-401", [])]:
        path = tmp_path / f"{mode}.json"
        path.write_text(json.dumps(program(mode)))
        done = subprocess.run([*CLI, "run", str(path), "--backend", backend, "-i", "question=key?", *extra],
                              capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == (0 if mode == "echo-200" else 1), done.stderr
        assert KEY not in done.stdout + done.stderr, (backend, mode, extra)
        assert "[REDACTED]" in done.stdout + done.stderr
    listed = subprocess.run([*CLI, "executions", "list", "--json"], capture_output=True, text=True, timeout=120,
                            env=env)
    executions = json.loads(listed.stdout)
    assert len(executions) == 6
    for execution in executions[:2]:  # one failed, one succeeded (newest first)
        shown = subprocess.run([*CLI, "executions", "show", execution["id"], "--full"], capture_output=True,
                               text=True, timeout=120, env=env)
        assert shown.returncode == 0 and KEY not in shown.stdout + shown.stderr
    assert KEY not in rows_text(db_url)


def test_a_key_inside_the_profile_url_is_scrubbed_as_dspy_prints_it(tmp_path: Path, db_url: str) -> None:
    """DSPy's engine prints ``user:KEY@host:port`` (no scheme) when it cannot connect."""
    url_key = "zz9plural"  # short-ish, not key-shaped
    path = tmp_path / "leak.json"
    path.write_text(json.dumps(PROGRAM))
    cfg = tmp_path / "url.toml"
    cfg.write_text(f'[lm.profiles.default]\nbase_url = "http://alice:{url_key}@127.0.0.1:9/v1"\n'
                   'model = "openai/x"\nmax_retries = 0\ntimeout = 5\n')
    env = worker_env({"STEPBRIDGE_CONFIG": str(cfg), "STEPBRIDGE_DATABASE_URL": db_url})
    for backend in ("dspy", "native"):
        for extra in ([], ["--json"]):
            done = subprocess.run([*CLI, "run", str(path), "--backend", backend, "-i", "question=q", *extra],
                                  capture_output=True, text=True, timeout=300, env=env)
            assert done.returncode == 1, done.stdout + done.stderr
            assert url_key not in done.stdout + done.stderr, done.stdout + done.stderr
    assert url_key not in rows_text(db_url)


@pytest.mark.parametrize("hosted", ["native", "dspy"])
def test_pool_replies_are_scrubbed_by_the_workers(hosted: str, upstream: Any, db_url: str, tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    """Only the workers know their key (another one, never registered in this test process): what the
    recording process stores, returns and logs must still be clean."""
    from stepbridge.bridge.pool import PoolAdapter

    worker_key = f"lantern{hosted}zebra"  # unknown here: this process never loads it
    assert scrub(worker_key) == worker_key
    env = worker_env({"SB_WORKER_ONLY_KEY": worker_key,
                      "STEPBRIDGE_CONFIG": str(config(tmp_path, f"{upstream.url}/v1", key_env="SB_WORKER_ONLY_KEY"))})
    outcomes: dict[str, tuple[Any, BaseException | None]] = {}

    async def go() -> None:
        pool = PoolAdapter(workers=1, capacity=4, backend=hosted, worker_env=env, heartbeat=1.0,
                           start_timeout=120)
        with Store(db_url) as store:
            async with Runner(pool, store=store) as runner:
                for mode in MODES:
                    try:
                        outcomes[mode] = (await runner.run(load_program(program(mode)), {"question": "key?"}), None)
                    except StepbridgeError as exc:
                        outcomes[mode] = (None, exc)

    asyncio.run(go())
    assert any(worker_key in json.dumps(r["headers"]) for r in upstream.requests)
    assert scrub(worker_key) == worker_key  # still unknown to the recording process
    for mode, (result, error) in outcomes.items():
        assert (error is None) == (mode == "echo-200"), (mode, error)
        assert worker_key not in outcome_text(result, error), mode
    assert "[REDACTED]" in outcomes["echo-200"][0].outputs["answer"]
    assert worker_key not in rows_text(db_url)
    captured = capfd.readouterr()
    assert worker_key not in captured.out + captured.err
