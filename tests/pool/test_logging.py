"""Broker logging under a flood (issue 9 item 7): rate-limited, and never blocking the I/O loop, even when
stderr is a full pipe that nobody reads."""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import textwrap
import threading

import zmq
from sb_pool import worker_env
from stepbridge.bridge import protocol as p
from stepbridge.bridge.logs import Throttle
from stepbridge.bridge.pool import query_status

CLIENT = textwrap.dedent("""
    import asyncio, json, sys
    from stepbridge import Runner
    from stepbridge.bridge.pool import PoolAdapter
    from stepbridge.validate import validate_data

    ECHO = {"stepbridge": 1, "name": "echo", "signature": "question -> answer",
            "steps": [{"return": {"answer": "$inputs.question"}}]}

    async def main():
        prog = validate_data(ECHO)
        async with Runner(PoolAdapter(address=sys.argv[1])) as runner:
            results = await asyncio.gather(*(runner.run(prog, {"question": f"q{i}"}) for i in range(300)),
                                           return_exceptions=True)
        print(json.dumps([r.outputs["answer"] if not isinstance(r, BaseException) else repr(r) for r in results]))

    asyncio.run(main())
""")


def test_throttle_logs_a_burst_then_summarises() -> None:
    now = [0.0]
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("sbtest.throttle")
    logger.propagate = False
    logger.addHandler(Collect())
    throttle = Throttle(logger, burst=3, window=10.0, clock=lambda: now[0])
    for i in range(1000):
        throttle.warning("bad-frame", "refused frame %d", i)
        throttle.warning("bad-key", "refused key %d", i)
    assert records == ["refused frame 0", "refused key 0", "refused frame 1", "refused key 1", "refused frame 2",
                       "refused key 2"]
    now[0] = 10.5
    throttle.flush()
    assert sorted(records[6:]) == ["997 more bad-frame message(s) suppressed in the last 10s",
                                   "997 more bad-key message(s) suppressed in the last 10s"]
    throttle.warning("bad-frame", "refused frame %d", 1000)
    assert records[-1] == "refused frame 1000" and throttle.suppressed_total == 2 * 997


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full: any blocking write to it blocks until someone reads."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    for chunk in (65536, 4096, 256, 1):
        try:
            while True:
                os.write(w, b"x" * chunk)
        except BlockingIOError:
            pass
    os.set_blocking(w, True)
    return r, w


def _readline(stream: object, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "the broker did not announce itself (blocked on logging?)"
    return stream.readline()  # type: ignore[attr-defined, no-any-return]


def test_broker_with_an_unread_full_stderr_keeps_serving_through_a_flood_of_bad_frames() -> None:
    r, w = _full_pipe()
    broker = subprocess.Popen([sys.executable, "-m", "stepbridge.bridge.cli", "start", "--workers", "1"],
                              stdout=subprocess.PIPE, stderr=w, env=worker_env(), text=True)
    os.close(w)
    try:
        assert broker.stdout is not None
        line = _readline(broker.stdout, 120)
        assert "listening on" in line, line
        address = line.rsplit(" ", 1)[-1].strip()
        assert "workers connect to" in broker.stdout.readline()  # (written with the first line)

        stop = threading.Event()
        sent = [0]

        def flood() -> None:
            ctx = zmq.Context()
            socks = [ctx.socket(zmq.DEALER) for _ in range(4)]
            bad = [[b"garbage"], [p.MAGIC + b"\x00", b"\x01", b"", b""],
                   p.encode(p.Ready(worker_id="x", incarnation=1, pid=1, host="h", capacity=1, backend="b",
                                    capabilities=[])),
                   [p.header(), bytes([p.Command.REQUEST]), b"", b"\xc1"]]
            for sock in socks:
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(address)
            while not stop.is_set() and sent[0] < 200_000:
                for sock in socks:
                    for frames in bad:
                        sock.send_multipart(frames)
                        sent[0] += 1
            for sock in socks:
                sock.close()
            ctx.term()

        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            client = subprocess.run([sys.executable, "-c", CLIENT, address], capture_output=True, text=True,
                                    timeout=300, env=worker_env())
        finally:
            stop.set()
            flooder.join()
        assert client.returncode == 0, client.stderr
        answers = json.loads(client.stdout)
        assert answers == [f"q{i}" for i in range(300)]  # every good request served, none stalled
        status = query_status(address, timeout=60)
        assert status["stats"]["rejected_frames"] >= 1000 and sent[0] >= 1000
        assert status["stats"]["succeeded"] == 300
        broker.terminate()
        assert broker.wait(timeout=60) == 0  # and it still drains and exits with a writer stuck on stderr
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait()
        os.close(r)


def test_process_logging_scrubs_what_it_writes() -> None:
    script = textwrap.dedent("""
        import logging, time
        from stepbridge.bridge.logs import configure_process_logging
        from stepbridge.errors import register_secret
        register_secret("hunter2-not-a-key-shape")
        configure_process_logging("INFO", "%(levelname)s %(message)s")
        logging.getLogger("x").warning("upstream said %s and https://u:pw123456@h/ and sk-%s",
                                       "hunter2-not-a-key-shape", "a" * 20)
        time.sleep(0.5)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env=worker_env())
    assert out.returncode == 0 and "upstream said" in out.stderr
    assert "hunter2" not in out.stderr and "pw123456" not in out.stderr and "sk-aaaa" not in out.stderr
