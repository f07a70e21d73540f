"""The batched recording path: groups of starts and ends applied together keep every guarantee."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import uuid
from typing import Any

import pytest
from sb_storage import SECRET, make_program
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from stepbridge import LMError, Program, StepTrace
from stepbridge.adapter import RunOptions
from stepbridge.errors import StorageError, register_secret
from stepbridge.result import LMCall, RunResult, Usage
from stepbridge.storage import Store
from stepbridge.storage.executions import executions, history_t, steps_t
from stepbridge.storage.recording import BatchFailed, BeginOp, clean, clean_json


def _result(program: Program, eid: str, answer: str = "42") -> RunResult:
    trace = [
        StepTrace(step=0, kind="call", module="answer", module_type="predict", inputs={"question": "q"},
                  outputs={"answer": answer}, duration_ms=1.5,
                  lm_calls=[LMCall(model="m", messages=[{"role": "user", "content": "q"}], response=answer)]),
        StepTrace(step=1, kind="return", outputs={"answer": answer}),
    ]
    return RunResult(outputs={"answer": answer}, trace=trace, usage=Usage(total_tokens=3, lm_calls=1),
                     backend="native", program_hash=program.content_hash, execution_id=eid, duration_ms=2.0)


def _apply(store: Store, ops: list[Any]) -> list[tuple[bool, Any]]:
    """Apply ``ops`` as one group in one transaction, exactly as the group commit does."""
    return store.executions._group.apply(ops)


def test_the_optimistic_pass_writes_nothing_when_a_batch_fails(store: Store, program: Program) -> None:
    store.publish(program)
    good = _begin(store, program)
    bad = _begin(store, make_program("never_published", "nobody stored me"))
    with pytest.raises(BatchFailed):
        store.tx.write(lambda conn: store.executions._recording.apply(conn, [good, bad], isolate=None), "test group")
    assert store.get_execution(good.execution_id) is None  # rolled back with the whole transaction
    out = _apply(store, [good, bad])
    assert out[0][0] is True and out[1][0] is False
    assert store.get_execution(good.execution_id) is not None


def _begin(store: Store, program: Program, key: str | None = None, eid: str | None = None) -> BeginOp:
    opts = RunOptions(idempotency_key=key, **({"execution_id": eid} if eid else {}))
    return store.executions._begin_op(program, {"question": "q"}, opts, "native")


def _count(store: Store, table: Any, **where: Any) -> int:
    with store.engine.connect() as conn:
        q = select(func.count()).select_from(table)
        for col, value in where.items():
            q = q.where(table.c[col] == value)
        return int(conn.execute(q).scalar() or 0)


def test_mixed_group_with_conflicts(store: Store, program: Program) -> None:
    store.publish(program)
    done = store.begin(program, {"question": "q"}, RunOptions(idempotency_key="done"), "native")
    store.succeed(done.execution_id, _result(program, done.execution_id, "old"))
    running = store.begin(program, {"question": "q"}, RunOptions(), "native")

    fresh = [_begin(store, program) for _ in range(5)]
    again_done = _begin(store, program, key="done")  # conflicts with a finished execution
    again_running = _begin(store, program, eid=running.execution_id)  # conflicts with a running one
    finish_running = store.executions._success_op(running.execution_id, _result(program, running.execution_id))
    finish_unknown = store.executions._success_op("no-such-execution", _result(program, "no-such-execution"))
    ops: list[Any] = [*fresh[:2], again_done, finish_running, *fresh[2:], again_running, finish_unknown]
    out = _apply(store, ops)

    assert all(ok for ok, _ in out), out
    for op, (_, begun) in zip(ops, out, strict=True):
        if op in fresh:
            assert begun.execution_id == op.execution_id and begun.attempt == 1 and not begun.in_progress
    begun_done = out[2][1]
    assert begun_done.execution_id == done.execution_id and begun_done.existing is not None
    assert begun_done.existing.outputs == {"answer": "old"}
    assert out[3][1] is True and out[-1][1] is False
    # the re-begin was applied before the finish (starts first): it saw the row running
    assert out[-2][1].execution_id == running.execution_id and out[-2][1].in_progress
    for op in fresh:
        assert store.get_execution(op.execution_id).status == "running"  # type: ignore[union-attr]
        assert [h.to_status for h in store.status_history(op.execution_id)] == ["running"]
    assert store.get_execution(running.execution_id).status == "succeeded"  # type: ignore[union-attr]
    assert len(store.execution_steps(running.execution_id)) == 2
    assert _count(store, executions, id="no-such-execution") == 0


def test_duplicate_finishes_in_one_group_are_compare_and_set(store: Store, program: Program) -> None:
    b = store.begin(program, {"question": "q"}, RunOptions(), "native")
    first = store.executions._success_op(b.execution_id, _result(program, b.execution_id, "first"))
    second = store.executions._failure_op(b.execution_id, LMError("late"), False)
    third = store.executions._success_op(b.execution_id, _result(program, b.execution_id, "third"))
    out = _apply(store, [first, second, third])
    assert [value for _, value in out] == [True, False, False]
    ex = store.get_execution(b.execution_id)
    assert ex is not None and ex.status == "succeeded" and ex.outputs == {"answer": "first"} and ex.error is None
    assert [(h.from_status, h.to_status) for h in store.status_history(b.execution_id)] == [
        (None, "running"), ("running", "succeeded")]
    assert _count(store, steps_t, execution_id=b.execution_id) == 2  # append-only: written once


def test_idempotent_re_begin_inside_one_group(store: Store, program: Program) -> None:
    store.publish(program)
    a, b, c = (_begin(store, program, key="same") for _ in range(3))
    same_id = _begin(store, program, eid=a.execution_id)
    out = _apply(store, [a, b, same_id, c])
    assert all(ok for ok, _ in out)
    begun = [value for _, value in out]
    assert {x.execution_id for x in begun} == {a.execution_id}
    assert not begun[0].in_progress and all(x.in_progress for x in begun[1:])
    assert _count(store, executions, idempotency_key="same") == 1
    assert len(store.status_history(a.execution_id)) == 1


def test_a_failing_write_does_not_undo_its_neighbours(store: Store, program: Program) -> None:
    store.publish(program)
    unpublished = make_program("never_published", "nobody stored me")
    running = store.begin(program, {"question": "q"}, RunOptions(), "native")
    good = [_begin(store, program) for _ in range(3)]
    bad = _begin(store, unpublished)  # violates the program foreign key: the batched INSERT fails

    def broken(conn: Connection) -> None:
        raise StorageError("this callback always fails")

    finish = store.executions._success_op(running.execution_id, _result(program, running.execution_id))
    out = _apply(store, [good[0], bad, broken, good[1], finish, good[2]])
    assert out[1][0] is False and isinstance(out[1][1], StorageError)
    assert out[2][0] is False and "always fails" in str(out[2][1])
    for i in (0, 3, 5):
        assert out[i][0] is True and out[i][1].attempt == 1
    assert out[4] == (True, True)
    for op in good:
        assert store.get_execution(op.execution_id) is not None
    assert store.get_execution(bad.execution_id) is None
    assert store.get_execution(running.execution_id).status == "succeeded"  # type: ignore[union-attr]


def test_a_failing_finish_falls_back_alone(store: Store, program: Program) -> None:
    a = store.begin(program, {"question": "q"}, RunOptions(), "native")
    b = store.begin(program, {"question": "q"}, RunOptions(), "native")
    ok = store.executions._success_op(a.execution_id, _result(program, a.execution_id))
    bad = store.executions._success_op(b.execution_id, _result(program, b.execution_id))
    bad.steps[0]["b_kind"] = None  # NOT NULL: the batched step insert fails, then this one alone
    out = _apply(store, [ok, bad])
    assert out[0] == (True, True)
    assert out[1][0] is False and isinstance(out[1][1], StorageError)
    assert store.get_execution(a.execution_id).status == "succeeded"  # type: ignore[union-attr]
    assert store.get_execution(b.execution_id).status == "running"  # type: ignore[union-attr]
    assert _count(store, steps_t, execution_id=b.execution_id) == 0


def test_many_tasks_and_threads_record_exactly_once(store: Store, program: Program) -> None:
    store.publish(program)
    tasks_per_loop, loops, sync_threads, sync_runs = 60, 3, 3, 10

    async def one(i: int, key: str | None) -> tuple[str, bool]:
        inputs = {"question": key or f"q{i}"}  # a shared key always comes with the same inputs
        begun = await store.abegin(program, inputs, RunOptions(idempotency_key=key), "native")
        if begun.in_progress or begun.existing is not None:
            return begun.execution_id, False
        if i % 5 == 0:
            done = await store.afail(begun.execution_id, LMError(f"failed {i}"))
        else:
            done = await store.asucceed(begun.execution_id, _result(program, begun.execution_id, str(i)))
        twice = await store.asucceed(begun.execution_id, _result(program, begun.execution_id, "again"))
        assert twice is False
        return begun.execution_id, done

    async def loop_body(n: int) -> list[tuple[str, bool]]:
        # every loop also races on two shared idempotency keys
        return await asyncio.gather(*(one(i, f"shared-{i % 2}" if i < 4 else None) for i in range(tasks_per_loop)))

    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def async_thread(n: int) -> None:
        try:
            got = asyncio.run(loop_body(n))
            with lock:
                results.extend(got)
        except BaseException as exc:
            errors.append(exc)

    def sync_thread() -> None:
        try:
            for i in range(sync_runs):
                b = store.begin(program, {"question": f"s{i}"}, RunOptions(), "native")
                assert store.succeed(b.execution_id, _result(program, b.execution_id))
                assert not store.fail(b.execution_id, LMError("late"))
                with lock:
                    results.append((b.execution_id, True))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=async_thread, args=(n,)) for n in range(loops)]
    threads += [threading.Thread(target=sync_thread) for _ in range(sync_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    finished = {eid for eid, done in results if done}
    # two shared keys: one execution each; every other run is its own
    expected = loops * (tasks_per_loop - 4) + 2 + sync_threads * sync_runs
    assert len(finished) == expected
    assert store.count_executions() == expected
    assert store.count_executions("running") == 0
    with store.engine.connect() as conn:
        per_execution = conn.execute(
            select(history_t.c.execution_id, func.count()).group_by(history_t.c.execution_id)
        ).all()
        assert {n for _, n in per_execution} == {2}  # running, then exactly one terminal state
        steps = conn.execute(select(func.count()).select_from(steps_t)).scalar()
    assert steps == 2 * (expected - loops * (tasks_per_loop // 5 - 1) - 1)  # failures record no steps


# -- cleaning -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    f"my key is {SECRET}",
    f"Authorization: Bearer {SECRET[3:]}",
    f"BEARER {SECRET[3:]}",
    f"api_key={SECRET[3:]}",
    f"API-KEY: {SECRET[3:]}",
    f"https://user:{SECRET[3:]}@example.com",
    f"ApI_\u212aey={SECRET[3:]}",  # KELVIN SIGN folds onto k for the case-insensitive pattern
])
def test_clean_json_scrubs_like_clean(text: str) -> None:
    value = {"a": [text, {"nested": text}], text: 1}
    cleaned, encoded = clean_json(value)
    assert cleaned == clean(value)
    assert json.loads(encoded) == clean(value)
    assert SECRET[3:] not in encoded and "REDACTED" in encoded


def test_clean_json_fast_path_keeps_plain_values() -> None:
    value = {"ticket": "my invoice is wrong — ça ne marche pas", "n": [1, 2.5, True, None]}
    cleaned, encoded = clean_json(value)
    assert cleaned is value and json.loads(encoded) == value


def test_clean_json_handles_what_json_cannot() -> None:
    value = {"nan": math.nan, "inf": [math.inf], "nul": "a\x00b", "obj": uuid.UUID(int=1), "lone": "\ud800"}
    cleaned, encoded = clean_json(value)
    assert cleaned == clean(value)
    assert json.loads(encoded) == cleaned
    assert cleaned["nul"] == "a\ufffdb" and cleaned["nan"] == "nan"
    encoded.encode("utf-8")  # storable


def test_clean_json_registered_secret_with_escapes() -> None:
    secret = 'quo"te\\back-' + uuid.uuid4().hex
    register_secret(secret)
    _, encoded = clean_json({"x": f"value {secret} here"})
    assert secret not in json.loads(encoded)["x"] and "REDACTED" in encoded


def test_secret_in_trace_never_reaches_step_rows(store: Store, program: Program) -> None:
    b = store.begin(program, {"question": "q"}, RunOptions(), "native")
    result = _result(program, b.execution_id)
    result.trace[0].lm_calls[0].messages.append({"role": "system", "content": f"use {SECRET}"})
    result.trace[1].error = {"message": f"bearer {SECRET}"}
    assert store.succeed(b.execution_id, result)
    with store.engine.connect() as conn:
        blob = repr(conn.exec_driver_sql("SELECT * FROM execution_steps").all())
    assert SECRET not in blob and "REDACTED" in blob
