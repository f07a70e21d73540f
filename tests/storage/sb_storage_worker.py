"""Subprocess body for the crash and concurrency tests (run as a script, not collected by pytest).

``hang URL N PREFIX``: begin N executions (idempotency keys ``PREFIX-i``), print their ids, then sleep until killed.
``record URL WORKER N``: begin+succeed N executions with idempotency keys ``WORKER-i``.
"""

from __future__ import annotations

import sys
import time

from sb_storage import make_program
from stepbridge.adapter import RunOptions
from stepbridge.result import RunResult, StepTrace
from stepbridge.storage import Store


def hang(url: str, n: int, prefix: str) -> None:
    store = Store(url)
    program = make_program()
    for i in range(n):
        b = store.begin(program, {"question": f"q{i}"}, RunOptions(idempotency_key=f"{prefix}-{i}"), "native")
        print(b.execution_id, flush=True)
    print("ready", flush=True)
    time.sleep(3600)


def record(url: str, worker: str, n: int) -> None:
    store = Store(url)
    program = make_program()
    for i in range(n):
        b = store.begin(program, {"question": f"{worker}-{i}"}, RunOptions(idempotency_key=f"{worker}-{i}"),
                        "fake")
        result = RunResult(outputs={"answer": str(i)}, trace=[StepTrace(step=0, kind="return")], backend="fake",
                           program_hash=program.content_hash, execution_id=b.execution_id)
        if not store.succeed(b.execution_id, result):
            raise SystemExit(f"succeed returned False for {b.execution_id}")
    store.close()
    print("done", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "hang":
        hang(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        record(sys.argv[2], sys.argv[3], int(sys.argv[4]))
