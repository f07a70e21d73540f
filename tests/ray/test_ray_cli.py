"""``stepbridge run PROGRAM --backend ray`` in a fresh process (which starts its own local Ray instance)
gives the native outputs, and leaves no Ray process behind when it exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from conftest import skip_without_ray

skip_without_ray()

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_cli(backend: str, tmp_path: Path, **extra_env: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | extra_env
    proc = subprocess.run(
        [sys.executable, "-c", "from stepbridge.cli import main; main()", "run", str(EXAMPLES / "rag_qa.yaml"), "-i",
         "question=Where is the Eiffel Tower?", "--backend", backend, "--json", "--no-record"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)  # stdout is the JSON alone (Ray writes to stderr)
    return result


def marked(mark: str) -> list[int]:
    """Live processes whose environment carries ``mark`` (inherited: the CLI's and every process it started)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark.encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def test_cli_run_backend_ray_gives_native_outputs(tmp_path: Path) -> None:
    native = run_cli("native", tmp_path)
    mark = f"SB_TEST_MARK_{uuid.uuid4().hex}"
    ray = run_cli("ray", tmp_path, SB_TEST_RUN=mark)
    if Path("/proc/self/environ").exists():  # Linux: the Ray instance it started ended with it (no orphaned agents)
        deadline = time.monotonic() + 30  # a hang guard: Ray's processes take a moment to exit
        while marked(mark) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marked(mark) == []
    assert ray["outputs"] == native["outputs"]
    assert ray["backend"] == "ray" and native["backend"] == "native"
    steps = [[s["module"] for s in r["trace"]] for r in (ray, native)]
    assert steps[0] == steps[1]
