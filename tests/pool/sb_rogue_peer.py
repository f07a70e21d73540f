"""A hostile pool peer, run as its own process by the tests: ``python sb_rogue_peer.py ATTACK ADDRESS [ARG]``.

It speaks the real protocol with a raw DEALER socket (optionally with a CURVE key pair) and prints one
JSON object saying what it got back, so the test can assert that nothing useful came through.

Attacks:

- ``register ADDR``: announce itself as a worker (READY), then wait for work (REQUESTs).
- ``forge ADDR``: send REPLY frames for guessed request ids with plausible attempts.
- ``program ADDR HASH``: ask for a program definition by hash (PROGRAM_GET).
- ``data ADDR HASH``: ask for a data file by hash (DATA_GET).
- ``passwd ADDR``: submit a program whose corpus is ``passwd`` with ``base_dir: /etc`` (the old wire field).
- ``baddata ADDR HASH``: ship bytes that do not hash to HASH under HASH, then submit a request naming it.
- ``worker-fetch ADDR HASH``: register as a worker (it may be authorised) and ask for a program and a data
  file nobody assigned to it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from typing import Any

import msgspec
import zmq
from stepbridge.bridge import protocol as p
from stepbridge.bridge.net import CurveKeys


class Dealer(zmq.Socket[Any]):
    """Sends never block: a peer that refused our handshake just does not get the message."""

    def send_multipart(self, frames: Any, flags: int = 0, copy: bool = True, track: bool = False,
                       **kwargs: Any) -> Any:
        try:
            return super().send_multipart(frames, flags | zmq.NOBLOCK, copy=copy, track=track, **kwargs)
        except zmq.Again:
            return None


def connect(address: str) -> zmq.Socket[Any]:
    ctx = zmq.Context.instance()
    sock = Dealer(ctx, zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, f"rogue-{uuid.uuid4().hex[:8]}".encode())
    sock.setsockopt(zmq.LINGER, 0)
    secret = os.environ.get("ROGUE_CURVE_SECRET")
    if secret:
        CurveKeys.from_files(secret, os.environ["ROGUE_CURVE_SERVER"]).apply_client(sock)
    sock.connect(address)
    return sock


def collect(sock: zmq.Socket[Any], seconds: float, *, until: str | None = None) -> list[dict[str, Any]]:
    """Everything that comes back within ``seconds`` (or up to the first ``until`` command), decoded."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if not sock.poll(int(left * 1000)):
            break
        try:
            msg = p.decode(sock.recv_multipart())
        except p.ProtocolError as exc:
            got.append({"command": "garbage", "error": str(exc)})
            continue
        got.append({"command": msg.command.name, "body": msgspec.to_builtins(msg.body)})
        if msg.command.name == until:
            break
    return got


def ready(worker_id: str = "rogue") -> list[bytes]:
    return p.encode(p.Ready(worker_id=worker_id, incarnation=1, pid=os.getpid(), host="evil", capacity=100,
                            backend="native", capabilities=["retrieve", "tools", "map", "dspy_modules"]))


def main() -> None:
    attack, address = sys.argv[1], sys.argv[2]
    arg = sys.argv[3] if len(sys.argv) > 3 else ""
    sock = connect(address)
    time.sleep(0.3)  # let the connection (and a CURVE handshake) complete
    out: dict[str, Any] = {"attack": attack}
    if attack == "register":
        sock.send_multipart(ready())
        out["got"] = collect(sock, float(arg or 5.0))
    elif attack == "forge":
        forged = p.Reply(attempt=1, result=p.WireResult(outputs={"answer": "FORGED"}, backend="pool",
                                                        program_hash="0" * 64, execution_id="x"))
        for seq in range(1, 200):
            for attempt in (1, 2):
                rid = bytes(4) + seq.to_bytes(8, "big")
                sock.send_multipart(p.encode(p.Reply(attempt=attempt, result=forged.result), rid))
        out["got"] = collect(sock, 1.0)
    elif attack == "program":
        sock.send_multipart(p.encode(p.ProgramGet(program_hash=arg)))
        out["got"] = collect(sock, 2.0)
    elif attack == "data":
        sock.send_multipart(p.encode(p.DataGet(data_hash=arg)))
        out["got"] = collect(sock, 2.0)
    elif attack == "worker-fetch":
        sock.send_multipart(ready("authorised-but-curious"))
        acked = collect(sock, 2.0)
        sock.send_multipart(p.encode(p.ProgramGet(program_hash=arg)))
        sock.send_multipart(p.encode(p.DataGet(data_hash=sys.argv[4])))
        out["acked"] = acked
        out["got"] = collect(sock, 2.0)
    elif attack == "baddata":
        # ship bytes under a hash they do not have, then name that hash for the corpus
        program = {"stepbridge": 1, "name": "lookup", "signature": "question -> passages: list[str]",
                   "modules": {"search": {"type": "retrieve", "retriever": {"kind": "bm25", "corpus": "passwd"},
                                          "k": 3}},
                   "steps": [{"call": "search", "with": {"query": "$inputs.question"}, "as": "found"},
                             {"return": {"passages": "$found.passages"}}]}
        from stepbridge.validate import validate_data

        sock.send_multipart(p.encode(p.Data(data_hash=arg, content=b"root:x:0:0:forged\n")))
        body = p.Request(execution_id="bad", program_hash=validate_data(program).content_hash,
                         inputs={"question": "root"}, program=program, data={"passwd": arg}, budget=30.0)
        sock.send_multipart(p.encode(body, b"r2"))
        out["got"] = collect(sock, 30.0, until="REPLY")
    elif attack == "passwd":
        program = {"stepbridge": 1, "name": "steal", "signature": "question -> passages: list[str]",
                   "modules": {"search": {"type": "retrieve", "retriever": {"kind": "bm25", "corpus": "passwd"},
                                          "k": 50}},
                   "steps": [{"call": "search", "with": {"query": "$inputs.question"}, "as": "found"},
                             {"return": {"passages": "$found.passages"}}]}
        from stepbridge.validate import validate_data

        digest = validate_data(program).content_hash
        body = {"execution_id": "steal", "program_hash": digest, "inputs": {"question": "root bin daemon"},
                "attempt": 1, "program": program, "base_dir": "/etc", "budget": 30.0}
        frames = [p.header(), bytes([p.Command.REQUEST]), b"r1", msgspec.msgpack.encode(body)]
        sock.send_multipart(frames)
        out["got"] = collect(sock, 60.0, until="REPLY")
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    sys.stdout.flush()
    os._exit(0)  # never wait in a context teardown for a peer that refused us


if __name__ == "__main__":
    main()
