"""Recording runs: lifecycle, compare-and-set, idempotency keys, typed errors, no secrets in rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sb_storage import SECRET, make_program
from sqlalchemy import select
from stepbridge import LMError, Program, StepError, StepTrace
from stepbridge.adapter import RunOptions
from stepbridge.result import LMCall, RunResult, Usage
from stepbridge.storage import Store
from stepbridge.storage.executions import executions, history_t, steps_t


def _result(program: Program, eid: str, answer: str = "42") -> RunResult:
    trace = [
        StepTrace(step=0, kind="call", module="answer", module_type="predict", inputs={"question": "q"},
                  outputs={"answer": answer}, duration_ms=3.5,
                  lm_calls=[LMCall(model="m", messages=[{"role": "user", "content": "q"}], response=answer,
                                   usage={"total_tokens": 7})]),
        StepTrace(step=1, kind="return", outputs={"answer": answer}),
    ]
    return RunResult(outputs={"answer": answer}, trace=trace, usage=Usage(total_tokens=7, lm_calls=1),
                     backend="native", program_hash=program.content_hash, execution_id=eid, duration_ms=12.0,
                     worker="w-1")


def test_lifecycle(store: Store, program: Program) -> None:
    b = store.begin(program, {"question": "q"}, RunOptions(), "native")
    assert b.attempt == 1 and b.existing is None and not b.in_progress
    running = store.get_execution(b.execution_id)
    assert running is not None and running.status == "running" and running.program_name == "qa"
    assert running.environment and running.environment["stepbridge"]
    assert store.succeed(b.execution_id, _result(program, b.execution_id))
    done = store.get_execution(b.execution_id)
    assert done is not None and done.status == "succeeded" and done.outputs == {"answer": "42"}
    assert done.usage and done.usage["total_tokens"] == 7 and done.duration_ms == 12.0 and done.worker == "w-1"
    assert done.finished_at is not None and done.finished_at >= done.created_at
    steps = store.execution_steps(b.execution_id)
    assert [(s.step, s.kind, s.module) for s in steps] == [(0, "call", "answer"), (1, "return", None)]
    assert steps[0].lm_calls[0].response == "42"
    assert [(c.from_status, c.to_status) for c in store.status_history(b.execution_id)] == [
        (None, "running"), ("running", "succeeded")]
    # The program's content was stored on first run (not published as a version), so the execution can be
    # rehydrated by its hash.
    assert store.load(done.program_hash).content_hash == program.content_hash
    assert store.history("qa") == [] and store.list_programs() == []
    result = store.get_result(b.execution_id)
    assert result is not None and result.outputs == {"answer": "42"} and len(result.trace) == 2


def test_second_succeed_does_not_overwrite(store: Store, program: Program) -> None:
    b = store.begin(program, {"question": "q"}, RunOptions(), "native")
    assert store.succeed(b.execution_id, _result(program, b.execution_id, "first"))
    assert not store.succeed(b.execution_id, _result(program, b.execution_id, "second"))
    assert not store.fail(b.execution_id, LMError("late failure"))
    e = store.get_execution(b.execution_id)
    assert e is not None and e.status == "succeeded" and e.outputs == {"answer": "first"} and e.error is None
    with store.engine.connect() as conn:
        n_steps = conn.execute(select(steps_t).where(steps_t.c.execution_id == b.execution_id)).all()
        n_hist = conn.execute(select(history_t).where(history_t.c.execution_id == b.execution_id)).all()
    assert len(n_steps) == 2 and len(n_hist) == 2


def test_unknown_execution_cannot_finish(store: Store, program: Program) -> None:
    assert not store.succeed("nope", _result(program, "nope"))
    assert store.get_execution("nope") is None


def test_fail_keeps_the_typed_error_and_partial_trace(store: Store, program: Program) -> None:
    b = store.begin(program, {"question": "q"}, RunOptions(), "native")
    cause = LMError("upstream 503", status=503, retriable=True)
    err = StepError("step 0 failed", step=0, module="answer", cause=cause,
                    trace=[StepTrace(step=0, kind="call", module="answer", error=cause.to_dict())])
    assert store.fail(b.execution_id, err)
    e = store.get_execution(b.execution_id)
    assert e is not None and e.status == "failed"
    rebuilt = e.typed_error()
    assert isinstance(rebuilt, StepError) and isinstance(rebuilt.cause, LMError)
    assert rebuilt.cause.status == 503 and rebuilt.retriable
    assert store.execution_steps(b.execution_id)[0].error == cause.to_dict()


def test_cancel(store: Store, program: Program) -> None:
    from stepbridge.errors import RunCancelledError

    b = store.begin(program, {"question": "q"}, RunOptions(), "native")
    assert store.fail(b.execution_id, RunCancelledError("stop"), cancelled=True)
    e = store.get_execution(b.execution_id)
    assert e is not None and e.status == "cancelled"


def test_idempotency_key_returns_the_existing_execution(store: Store, program: Program) -> None:
    first = store.begin(program, {"question": "q"}, RunOptions(idempotency_key="order-1"), "native")
    again = store.begin(program, {"question": "q"}, RunOptions(idempotency_key="order-1"), "native")
    assert again.execution_id == first.execution_id and again.in_progress
    store.succeed(first.execution_id, _result(program, first.execution_id))
    done = store.begin(program, {"question": "q"}, RunOptions(idempotency_key="order-1"), "dspy")
    assert done.execution_id == first.execution_id
    assert done.existing is not None and done.existing.outputs == {"answer": "42"}
    assert store.count_executions() == 1
    failed = store.begin(program, {"question": "q"}, RunOptions(idempotency_key="order-2"), "native")
    store.fail(failed.execution_id, LMError("boom", status=500))
    back = store.begin(program, {"question": "q"}, RunOptions(idempotency_key="order-2"), "native")
    assert isinstance(back.existing_error, LMError) and back.existing_error.status == 500


def test_idempotency_key_is_bound_to_its_program(store: Store, program: Program) -> None:
    import pytest
    from stepbridge import StorageError

    store.begin(program, {"question": "q"}, RunOptions(idempotency_key="k"), "native")
    with pytest.raises(StorageError, match="belongs to program"):
        store.begin(make_program("other"), {"question": "q"}, RunOptions(idempotency_key="k"), "native")


def test_idempotency_key_is_bound_to_its_inputs(store: Store, program: Program) -> None:
    import asyncio

    import pytest
    from stepbridge import StorageError

    first = store.begin(program, {"question": "q", "n": [1, {"a": 1, "b": True}]},
                        RunOptions(idempotency_key="order-9"), "native")
    store.succeed(first.execution_id, _result(program, first.execution_id))
    # The same inputs (key order does not matter) return the first run.
    again = store.begin(program, {"n": [1, {"b": True, "a": 1}], "question": "q"},
                        RunOptions(idempotency_key="order-9"), "native")
    assert again.execution_id == first.execution_id and again.existing is not None
    for other in ({"question": "q2", "n": [1, {"a": 1, "b": True}]},  # another value
                  {"question": "q", "n": [1, {"a": 1, "b": 1}]},  # true is not 1
                  {"question": "q", "n": [1, {"a": 1.5, "b": True}]},
                  {"question": "q"}):  # a missing field
        with pytest.raises(StorageError, match="already used for different inputs"):
            store.begin(program, other, RunOptions(idempotency_key="order-9"), "native")
        with pytest.raises(StorageError, match="already used for different inputs"):
            asyncio.run(store.abegin(program, other, RunOptions(idempotency_key="order-9"), "native"))
    # Still running: a different submission with other inputs is refused too, not told to wait.
    running = store.begin(program, {"question": "r"}, RunOptions(idempotency_key="order-10"), "native")
    with pytest.raises(StorageError, match="already used for different inputs"):
        store.begin(program, {"question": "r2"}, RunOptions(idempotency_key="order-10"), "native")
    assert store.begin(program, {"question": "r"}, RunOptions(idempotency_key="order-10"), "native").in_progress
    assert store.count_executions() == 2
    e = store.get_execution(running.execution_id)
    assert e is not None and e.inputs == {"question": "r"} and e.status == "running"


def test_idempotency_inputs_are_compared_after_scrubbing(store: Store, program: Program) -> None:
    # What is compared is what is stored: the secret-free inputs. Resume re-submits those.
    first = store.begin(program, {"question": f"key {SECRET}"}, RunOptions(idempotency_key="s"), "native")
    stored = store.get_execution(first.execution_id)
    assert stored is not None and SECRET not in str(stored.inputs)
    assert store.begin(program, stored.inputs, RunOptions(idempotency_key="s"), "native").in_progress


def test_secrets_never_reach_rows(store: Store, program: Program) -> None:
    b = store.begin(program, {"question": f"my key is {SECRET}", SECRET: "as a key"},
                    RunOptions(metadata={"note": f"Authorization: Bearer {SECRET}"}), "native")
    result = _result(program, b.execution_id, answer=f"echo {SECRET}")
    result.trace[0].lm_calls[0].messages.append({"role": "system", "content": f"api_key={SECRET}"})
    store.succeed(b.execution_id, result)
    b2 = store.begin(program, {"question": "q"}, RunOptions(), "native")
    store.fail(b2.execution_id, LMError(f"401 for key {SECRET} at https://user:{SECRET}@api.example.com",
                                        trace=[StepTrace(step=0, kind="call", error={"message": SECRET})]))
    store.publish(make_program("qa", f"instructions mentioning {SECRET}"), message=f"pasted {SECRET}")
    dumped = []
    with store.engine.connect() as conn:
        for table in ("programs", "program_versions", "aliases", "executions", "execution_steps",
                      "execution_status_history"):
            dumped += [repr(tuple(r)) for r in conn.exec_driver_sql(f"SELECT * FROM {table}")]
    blob = "\n".join(dumped)
    assert "REDACTED" in blob
    assert SECRET not in blob and "AbCdEf0123456789" not in blob


def test_list_executions_filters(store: Store, program: Program) -> None:
    other = make_program("other")
    store.publish(program)  # qa@1 (runs alone do not publish)
    ids = []
    for i in range(5):
        b = store.begin(program if i % 2 == 0 else other, {"question": str(i)}, RunOptions(), "native")
        ids.append(b.execution_id)
        if i < 3:
            store.succeed(b.execution_id, _result(program, b.execution_id))
    assert [e.id for e in store.list_executions()] == ids[::-1]
    assert {e.id for e in store.list_executions(program="qa")} == {ids[0], ids[2], ids[4]}
    assert {e.id for e in store.list_executions(program="qa@1")} == {ids[0], ids[2], ids[4]}
    assert {e.id for e in store.list_executions(program=other.content_hash[:12])} == {ids[1], ids[3]}
    assert {e.id for e in store.list_executions(status="running")} == {ids[3], ids[4]}
    assert len(store.list_executions(status=["running", "succeeded"], limit=2)) == 2
    assert store.list_executions(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert len(store.list_executions(since=datetime.now(UTC) - timedelta(minutes=1))) == 5
    assert store.get_execution(ids[0][:10]) is not None  # unique id prefix


def test_transition_is_compare_and_set(store: Store, program: Program) -> None:
    b = store.begin(program, {"question": "q"}, RunOptions(), "native")
    assert not store.transition(b.execution_id, "pending", "cancelled")
    assert store.transition(b.execution_id, ["pending", "running"], "cancelled", note="user")
    assert not store.transition(b.execution_id, "running", "succeeded")
    with store.engine.connect() as conn:
        status = conn.execute(select(executions.c.status).where(executions.c.id == b.execution_id)).scalar()
    assert status == "cancelled"
