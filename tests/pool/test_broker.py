"""The standalone broker: several client processes, `pool status --json`, parent death."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sb_pool import REPO, worker_env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


CLIENT = textwrap.dedent("""
    import asyncio, json, sys
    from stepbridge import Runner, load_program
    from stepbridge.bridge.pool import PoolAdapter

    async def main():
        prog = load_program(sys.argv[2])
        async with Runner(PoolAdapter(address=sys.argv[1])) as runner:
            results = await asyncio.gather(*(runner.run(prog, {"ticket": f"{sys.argv[3]} {i}"}) for i in range(25)))
        print(json.dumps([r.outputs for r in results]))

    asyncio.run(main())
""")


def test_broker_serves_several_clients_and_reports_status(tmp_path: Path) -> None:
    env = worker_env()
    broker = subprocess.Popen([sys.executable, "-m", "stepbridge.bridge.cli", "start", "--workers", "2",
                               "--capacity", "8", "--heartbeat", "0.25"], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert broker.stdout is not None
        line = broker.stdout.readline()
        assert "listening on" in line, line
        address = line.rsplit(" ", 1)[-1].strip()
        assert address.startswith("ipc://")
        sock_dir = Path(address[len("ipc://"):]).parent
        assert (sock_dir.stat().st_mode & 0o777) == 0o700

        clients = [subprocess.Popen([sys.executable, "-c", CLIENT, address, str(REPO / "examples/classify.yaml"),
                                     f"client{i}"], stdout=subprocess.PIPE, env=env, text=True) for i in range(3)]
        outputs = [json.loads(c.communicate(timeout=120)[0]) for c in clients]
        assert all(c.returncode == 0 for c in clients)
        assert [len(o) for o in outputs] == [25, 25, 25]
        assert all(set(row) == {"team", "urgent"} for o in outputs for row in o)

        status = subprocess.run([sys.executable, "-m", "stepbridge.bridge.cli", "status", "--address", address,
                                 "--json"], capture_output=True, text=True, env=env, timeout=60)
        assert status.returncode == 0, status.stderr
        info = json.loads(status.stdout)
        assert len(info["workers"]) == 2
        assert sum(w["done"] for w in info["workers"]) == 75
        assert info["stats"]["succeeded"] == 75
        assert {"host", "pid", "backend", "capacity", "in_flight", "done", "failed", "last_heartbeat_s"} <= \
            set(info["workers"][0])
        human = subprocess.run([sys.executable, "-m", "stepbridge.bridge.cli", "status", "--address", address],
                               capture_output=True, text=True, env=env, timeout=60)
        assert human.returncode == 0 and "native" in human.stdout

        # local workers exit when their parent (the broker) dies, even by SIGKILL
        pids = [w["pid"] for w in info["workers"]]
        broker.send_signal(signal.SIGKILL)
        broker.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in pids)
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait()


def test_broker_sigterm_drains_and_exits_cleanly() -> None:
    broker = subprocess.Popen([sys.executable, "-m", "stepbridge.bridge.cli", "start", "--workers", "1"],
                              stdout=subprocess.PIPE, env=worker_env(), text=True)
    assert broker.stdout is not None
    assert "listening on" in broker.stdout.readline()
    broker.send_signal(signal.SIGTERM)
    assert broker.wait(timeout=60) == 0


def test_keys_command_writes_a_key_pair(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "stepbridge.bridge.cli", "keys", "--dir", str(tmp_path),
                          "--name", "w1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "w1.key").exists()
    assert (tmp_path / "w1.key_secret").stat().st_mode & 0o077 == 0
