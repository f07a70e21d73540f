"""Roles and data against real attackers (issue 9 item 3): a real broker process, a legitimate client
process, and a rogue peer process speaking the protocol with a raw socket. A client can never act as a
worker; no path a client sends (or a stored row holds) decides what a worker reads."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sb_pool import HERE, worker_env
from stepbridge import ProgramValidationError, RunOptions, load_program
from stepbridge.bridge.pool import PoolAdapter, query_status

RETRIEVE = textwrap.dedent("""
    stepbridge: 1
    name: lookup
    signature: "question -> passages: list[str]"
    modules:
      search: {type: retrieve, retriever: {kind: bm25, corpus: passwd}, k: 3}
    steps:
      - {call: search, with: {query: $inputs.question}, as: found}
      - {return: {passages: $found.passages}}
""")

CLIENT = textwrap.dedent("""
    import asyncio, json, sys
    from stepbridge import Runner, load_program
    from stepbridge.bridge.data import LocalFiles
    from stepbridge.bridge.pool import PoolAdapter

    async def main():
        address, path, question = sys.argv[1:4]
        keys = {"curve_secret": sys.argv[4], "curve_server": sys.argv[5]} if len(sys.argv) > 5 else {}
        prog = load_program(path)
        async with Runner(PoolAdapter(address=address, **keys)) as runner:
            result = await runner.run(prog, {"question": question})
        print(json.dumps({"outputs": result.outputs, "hash": prog.content_hash,
                          "data": LocalFiles().manifest(prog)}))

    asyncio.run(main())
""")


def folder(tmp_path: Path, name: str, lines: list[str]) -> Path:
    """A program folder whose corpus is a file called ``passwd`` (harmless lines of our own)."""
    d = tmp_path / name
    d.mkdir()
    (d / "lookup.yaml").write_text(RETRIEVE)
    (d / "passwd").write_text("\n".join(lines) + "\n")
    return d


class Broker:
    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "stepbridge.bridge.cli", "start", "--workers", "1",
                                      *args], stdout=subprocess.PIPE, env=worker_env(), text=True)
        assert self.proc.stdout is not None
        first, second = self.proc.stdout.readline(), self.proc.stdout.readline()
        assert "listening on" in first and "workers connect to" in second, (first, second)
        self.address = first.rsplit(" ", 1)[-1].strip()
        self.worker_address = second.rsplit(" ", 1)[-1].strip()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def rogue(attack: str, address: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(HERE / "sb_rogue_peer.py"), attack, address, *args], capture_output=True,
                         text=True, timeout=120, env={**worker_env(), **(env or {})})
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def client(address: str, program: Path, question: str, *keys: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CLIENT, address, str(program), question, *keys], capture_output=True,
                         text=True, timeout=120, env=worker_env())
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_a_client_cannot_act_as_a_worker_or_choose_what_a_worker_reads(tmp_path: Path) -> None:
    alice = folder(tmp_path, "alice", ["alpha apples", "alpha avocados", "beta bananas"])
    bob = folder(tmp_path, "bob", ["alpha artichokes", "gamma grapes", "delta dates"])
    broker = Broker()
    try:
        assert broker.address != broker.worker_address
        for address in (broker.address, broker.worker_address):
            assert (Path(address[len("ipc://"):]).stat().st_mode & 0o777) == 0o600
        # two clients, the same program (same hash), each with its own corpus: each gets its own passages,
        # shipped by content (the first one seen no longer serves everybody)
        a = client(broker.address, alice / "lookup.yaml", "alpha")
        b = client(broker.address, bob / "lookup.yaml", "alpha")
        assert a["hash"] == b["hash"] and a["data"] != b["data"]
        assert a["outputs"]["passages"][:2] == ["alpha apples", "alpha avocados"]
        assert b["outputs"]["passages"][0] == "alpha artichokes"
        assert not set(a["outputs"]["passages"]) & set(b["outputs"]["passages"])

        # a peer on the client socket: no READY acknowledged, no work, no program, no data, no forged reply
        registered = rogue("register", broker.address, "3")
        assert registered["got"] == []
        assert rogue("forge", broker.address)["got"] == []
        assert rogue("program", broker.address, a["hash"])["got"] == []
        assert rogue("data", broker.address, a["data"]["passwd"])["got"] == []
        # base_dir on the wire is ignored; the corpus was not shipped and the workers have no data root
        stolen = rogue("passwd", broker.address)
        (reply,) = stolen["got"]
        error = reply["body"]["error"]
        assert error["type"] == "ProgramValidationError"
        assert [i["pointer"] for i in error["details"]["issues"]] == ["/modules/search/retriever/corpus"]
        assert "root:" not in json.dumps(stolen)

        # bytes shipped under a hash they do not have are refused; the request naming it gets "missing"
        fake = "ab" * 32
        (reply,) = rogue("baddata", broker.address, fake)["got"]
        assert reply["body"]["missing"] == [fake] and reply["body"]["error"]["type"] == "StorageError"

        status = query_status(broker.address)
        assert [w["id"] for w in status["workers"]] != [] and all(w["local"] for w in status["workers"])
        assert not any("rogue" in w["id"] for w in status["workers"])
        assert status["stats"]["rejected_frames"] >= 1 + 2 * 199 + 2
        assert status["stats"]["stale_replies"] == 0  # the forged replies never reached the scheduler
        # and the legitimate clients are still served
        assert client(broker.address, alice / "lookup.yaml", "beta")["outputs"]["passages"][0] == "beta bananas"
    finally:
        broker.close()


def test_curve_worker_socket_admits_only_authorised_worker_keys(tmp_path: Path) -> None:
    from stepbridge.bridge.net import generate_keypair

    keys = tmp_path / "keys"
    generate_keypair(keys, "broker")
    client_public, client_secret = generate_keypair(keys, "client")
    worker_public, worker_secret = generate_keypair(keys, "worker")
    (tmp_path / "clients").mkdir()
    (tmp_path / "workers").mkdir()
    (tmp_path / "clients" / "client.key").write_bytes(client_public.read_bytes())
    (tmp_path / "workers" / "worker.key").write_bytes(worker_public.read_bytes())
    alice = folder(tmp_path, "alice", ["alpha apples", "beta bananas"])
    broker = Broker("--bind", "tcp://127.0.0.1:*", "--worker-bind", "tcp://127.0.0.1:*",
                    "--curve-secret", str(keys / "broker.key_secret"), "--curve-clients", str(tmp_path / "clients"),
                    "--curve-workers", str(tmp_path / "workers"))
    server = str(keys / "broker.key")
    as_client = {"ROGUE_CURVE_SECRET": str(client_secret), "ROGUE_CURVE_SERVER": server}
    as_worker = {"ROGUE_CURVE_SECRET": str(worker_secret), "ROGUE_CURVE_SERVER": server}
    try:
        a = client(broker.address, alice / "lookup.yaml", "alpha", str(client_secret), server)
        assert a["outputs"]["passages"][0] == "alpha apples"
        # a client key on the worker socket: the CURVE handshake is refused, nothing comes back
        assert rogue("register", broker.worker_address, "3", env=as_client)["got"] == []
        # a client key on the client socket: READY is not a client command
        assert rogue("register", broker.address, "2", env=as_client)["got"] == []
        # an authorised worker still gets only what is assigned to it
        fetched = rogue("worker-fetch", broker.worker_address, a["hash"], a["data"]["passwd"], env=as_worker)
        assert fetched["acked"] and {m["command"] for m in fetched["acked"]} == {"HEARTBEAT"}  # READY acknowledged
        answers = {m["command"]: m["body"] for m in fetched["got"] if m["command"] in ("PROGRAM", "DATA")}
        assert answers["PROGRAM"].get("program") is None and answers["PROGRAM"]["error"]["type"] == "StorageError"
        assert answers["DATA"].get("content") is None and answers["DATA"]["error"]["type"] == "StorageError"
        status = query_status(broker.address, curve=_keys(client_secret, server))
        assert status["stats"]["programs_sent"] <= 1
    finally:
        broker.close()


def _keys(secret: Path, server: str) -> Any:
    from stepbridge.bridge.net import CurveKeys

    return CurveKeys.from_files(secret, server)


def test_local_pool_serves_each_folder_its_own_corpus_and_ignores_a_stored_folder(
        tmp_path: Path, pool_kwargs: dict[str, Any]) -> None:
    from stepbridge.storage import Store
    from stepbridge.storage.programs import versions

    alice = folder(tmp_path, "alice", ["alpha apples", "beta bananas"])
    bob = folder(tmp_path, "bob", ["alpha artichokes", "gamma grapes"])
    a, b = load_program(alice / "lookup.yaml"), load_program(bob / "lookup.yaml")
    assert a.content_hash == b.content_hash
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store(url) as store:
        store.publish(a)
        store.set_alias("lookup", "prod", a.content_hash)
        with store.engine.begin() as conn:  # a stored folder is outside the content hash: point it at /etc
            conn.execute(versions.update().where(versions.c.hash == a.content_hash).values(base_dir="/etc"))

    async def go() -> None:
        pool = PoolAdapter(workers=1, store_url=url, **pool_kwargs)
        await pool.start()
        try:
            got_a = await pool.run(a, {"question": "alpha"}, RunOptions())
            got_b = await pool.run(b, {"question": "alpha"}, RunOptions())
            assert got_a.outputs["passages"][0] == "alpha apples"
            assert got_b.outputs["passages"][0] == "alpha artichokes"
            assert pool.router is not None and pool.router.stats["programs_sent"] == 0  # from the store
            (alice / "passwd").unlink()  # nothing to ship now, and the worker has no data root
            with pytest.raises(ProgramValidationError) as info:
                await pool.run(a, {"question": "root"}, RunOptions())
            assert [i.pointer for i in info.value.issues] == ["/modules/search/retriever/corpus"]
            assert "root:" not in str(info.value)
        finally:
            await pool.aclose()

    asyncio.run(go())
