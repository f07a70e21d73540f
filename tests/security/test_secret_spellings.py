"""An upstream that echoes the operator's key in another spelling (URL-encoded as a query, inside a
JSON string inside a JSON body, in an HTML error page, in a Python bytes repr) must not get it into
outputs, traces, errors, rows or logs, on native and dspy, SQLite and PostgreSQL. The key has
characters each spelling changes, and does not look like a key."""

from __future__ import annotations

import asyncio
import html
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sb_http import _Recording, _serve
from sb_security import KEY_ENV
from sqlalchemy import inspect, text
from stepbridge import Runner, StepbridgeError, load_program
from stepbridge.secrets import register_secret, scrub
from stepbridge.storage import Store

KEY = 'hun/ter2+ban"ana\\x'
SPELLINGS = {
    "url": urllib.parse.quote(KEY),  # a query parameter as most clients encode it
    "form": urllib.parse.quote_plus(KEY),
    "nested-json": json.dumps(json.dumps(KEY)[1:-1])[1:-1],
    "html": html.escape(KEY),
    "bytes-repr": repr(KEY.encode())[2:-1],
    "str-repr": repr(KEY)[1:-1],
}
MODES = ["echo-200-url", "echo-200-form", "echo-200-bytes-repr", "echo-401-html", "echo-500-nested-json",
         "echo-500-str-repr"]


class _SpellingEcho(_Recording):
    """Echo the Authorization key in the spelling the model name asks for."""

    def do_POST(self) -> None:
        entry = self._record()
        key = (entry["headers"].get("Authorization") or "").removeprefix("Bearer ")
        model = str(json.loads(entry["body"] or "{}").get("model", ""))
        mode = model.split("/")[-1]
        spelling = mode.split("-", 2)[2]
        echoed = {"url": urllib.parse.quote(key), "form": urllib.parse.quote_plus(key),
                  "nested-json": json.dumps(json.dumps({"detail": key})),
                  "html": html.escape(key), "bytes-repr": repr(key.encode()), "str-repr": repr(key)}[spelling]
        if mode.startswith("echo-401"):
            page = f"<html><body><h1>401</h1><p>bad key {echoed}</p></body></html>".encode()
            self.send_response(401)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
        elif mode.startswith("echo-500"):
            body = '{"error": {"message": "upstream said: ' + echoed.replace('"', '\\"') + '"}}'
            data = body.encode()
            self.send_response(500)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            content = f"[[ ## answer ## ]]\nsee https://x/?k={echoed}\n\n[[ ## completed ## ]]"
            self._reply(200, {"id": "x", "object": "chat.completion", "model": model,
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": content}}],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    with _serve(_SpellingEcho) as server:
        yield server


def test_every_spelling_is_scrubbed() -> None:
    register_secret(KEY, source="test")
    for name, spelled in SPELLINGS.items():
        assert spelled not in scrub(f"error: {spelled}!"), name


def leaked(blob: str) -> list[str]:
    return [name for name, spelled in SPELLINGS.items() if spelled in blob] + (["as-is"] if KEY in blob else [])


@pytest.mark.parametrize("backend", ["native", "dspy"])
@pytest.mark.parametrize("mode", MODES)
def test_an_echo_in_another_spelling_reaches_nothing(backend: str, mode: str, upstream: Any, db_url: str,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[lm.profiles.default]\nbase_url = "{upstream.url}/v1"\nmodel = "openai/echo-200-url"\n'
                      f'api_key_env = "{KEY_ENV}"\nmax_retries = 0\ntimeout = 30\n')
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("STEPBRIDGE_CONFIG", str(config))
    program = {"stepbridge": 1, "name": f"spell-{mode}", "signature": "question -> answer",
               "lm": {"model": f"openai/{mode}"},
               "modules": {"m": {"type": "predict", "signature": "question -> answer"}},
               "steps": [{"call": "m", "with": {"question": "$inputs.question"}, "as": "a"},
                         {"return": {"answer": "$a.answer"}}]}
    before = len(upstream.requests)
    outcome: list[str] = []

    async def go() -> None:
        with Store(db_url) as store:
            async with Runner(backend, store=store) as runner:
                try:
                    result = await runner.run(load_program(program), {"question": "q"})
                    outcome.append(result.model_dump_json())
                except StepbridgeError as exc:
                    outcome.extend([str(exc), repr(exc), json.dumps(exc.to_dict()), repr(exc.trace)])

    asyncio.run(go())
    assert len(upstream.requests) > before
    with Store(db_url) as store, store.engine.connect() as conn:
        rows = "\n".join(repr(list(conn.execute(text(f'SELECT * FROM "{t}"'))))
                         for t in inspect(conn).get_table_names())
    assert leaked("\n".join(outcome)) == []
    assert leaked(rows) == []
    assert leaked(caplog.text) == []
