"""What a file run does to stored versions: it records its execution against the program's content
hash and publishes nothing; `run --publish` and `programs add` publish. Two unrelated files that share
a name no longer become versions of one program by being run.

What the commands did is read back from the store through the API (each console-script process costs
seconds of CPU; the read commands have tests of their own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from stepbridge.storage import Store

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STEPBRIDGE_HOME": str(home), "CI": "true"}
    return subprocess.run([sys.executable, "-m", "stepbridge.cli", *args], capture_output=True, text=True,
                          env=env, timeout=180)


def test_file_runs_record_by_hash_and_publish_only_when_asked(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = tmp_path / "first.yaml"
    first.write_text((EXAMPLES / "classify.yaml").read_text())
    second = tmp_path / "second.yaml"  # unrelated file, same program name, other content
    second.write_text((EXAMPLES / "classify.yaml").read_text().replace("Route a support ticket",
                                                                       "Route a customer ticket"))
    ran = [json.loads(cli("run", str(p), "-i", "ticket=refund me", "--json", home=home).stdout)
           for p in (first, second)]
    assert ran[0]["program_hash"] != ran[1]["program_hash"]
    db = f"sqlite:///{home / 'stepbridge.db'}"
    with Store(db) as store:
        assert store.list_programs() == [] and store.history("classify") == []  # nothing was published
        for run in ran:  # each execution is still recorded against (and rebuilt from) its content
            shown = store.get_execution(run["execution_id"])
            assert shown is not None and shown.program_hash == run["program_hash"] and shown.status == "succeeded"
            assert store.load(run["program_hash"]).content_hash == run["program_hash"]

    published = cli("run", str(first), "-i", "ticket=refund me", "--publish", home=home)
    assert published.returncode == 0 and "published classify@1" in published.stderr, published.stderr
    added = json.loads(cli("programs", "add", str(second), "--json", home=home).stdout)
    assert added["version"] == 2 and added["created"] is True
    with Store(db) as store:
        history = [(v.version, v.hash) for v in store.history("classify")]
    assert history == [(1, ran[0]["program_hash"]), (2, ran[1]["program_hash"])]
    again = cli("run", "classify@1", "-i", "ticket=refund me", "--json", home=home)
    assert json.loads(again.stdout)["program_hash"] == ran[0]["program_hash"]
