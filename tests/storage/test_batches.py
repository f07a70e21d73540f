"""Batches as recorded units, and taking over rows (compare-and-set), in-process on SQLite and PostgreSQL.

The kill-and-resume tests through the real CLI are in ``test_batch_resume.py``.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from contextlib import aclosing
from typing import Any

import pytest
from sb_storage import EchoAdapter, make_program
from sqlalchemy import text
from stepbridge import Runner, StorageError
from stepbridge.adapter import RunOptions
from stepbridge.recorder import BatchRecorder
from stepbridge.storage import Store
from stepbridge.storage.resume import resume


def rows(n: int) -> list[dict[str, Any]]:
    return [{"question": f"q{i}"} for i in range(n)]


def stream(store: Store, adapter: Any, inputs: list[Any], *, stop_after: int | None = None,
           concurrency: int = 2) -> tuple[list[Any], list[str]]:
    """Run a batch through the core Runner; optionally stop reading after ``stop_after`` items."""
    batches: list[str] = []

    async def go() -> list[Any]:
        got = []
        runner = Runner(adapter, store=store)
        # aclosing: a stream left early is cleaned up now, not whenever the generator is collected
        async with runner, aclosing(runner.stream(make_program(), inputs, concurrency=concurrency,
                                                  on_batch=batches.append)) as items:
            async for item in items:
                got.append(item)
                if stop_after is not None and len(got) >= stop_after:
                    break
        return got

    return asyncio.run(go()), batches


def test_store_is_a_batch_recorder(store: Store) -> None:
    assert isinstance(store, BatchRecorder)


def test_a_batch_is_recorded_pending_in_order_before_it_runs(store: Store) -> None:
    program = make_program()
    begun = store.begin_batch(program, rows(5), [RunOptions() for _ in range(5)], "echo")
    assert len(begun.execution_ids) == 5 and all(begun.execution_ids)
    results = store.batch_results(begun.batch_id)
    assert [(r.index, r.status, r.inputs, r.execution_id) for r in results] == [
        (i, "pending", {"question": f"q{i}"}, begun.execution_ids[i]) for i in range(5)]
    batch = store.get_batch(begun.batch_id[:8])
    assert batch is not None and batch.size == 5 and batch.counts == {"pending": 5} and not batch.done
    assert [h.to_status for h in store.status_history(begun.execution_ids[0])] == ["pending"]


def test_runner_stream_records_the_batch_and_runs_each_row_once(store: Store) -> None:
    adapter = EchoAdapter()
    items, batches = stream(store, adapter, [*rows(6), "not an object"])
    assert len(batches) == 1 and {i.batch_id for i in items} == {batches[0]}
    results = store.batch_results(batches[0])
    assert [r.index for r in results] == list(range(7))
    assert [r.status for r in results] == ["succeeded"] * 6 + ["failed"]
    assert [r.outputs for r in results[:6]] == [{"answer": f"q{i}"} for i in range(6)]
    assert results[6].error is not None and results[6].error["type"] == "InputValidationError"
    assert sorted(eid for eid, _ in adapter.runs) == sorted(r.execution_id for r in results[:6])
    assert all(attempt == 1 for _, attempt in adapter.runs)
    assert [h.to_status for h in store.status_history(results[0].execution_id)] == [
        "pending", "running", "succeeded"]
    assert store.count_executions() == 7
    batch = store.get_batch(batches[0])
    assert batch is not None and batch.done and batch.counts == {"succeeded": 6, "failed": 1}
    assert [b.id for b in store.list_batches()] == batches


def test_rows_never_started_are_cancelled_when_the_batch_is_stopped(store: Store) -> None:
    items, batches = stream(store, EchoAdapter(), rows(40), stop_after=2, concurrency=1)
    assert len(items) == 2
    results = store.batch_results(batches[0])
    statuses = [r.status for r in results]
    assert len(results) == 40 and "pending" not in statuses and "running" not in statuses
    assert statuses.count("succeeded") >= 2 and statuses.count("cancelled") >= 30
    cancelled = next(r for r in results if r.status == "cancelled")
    assert cancelled.error is not None and cancelled.error["type"] == "RunCancelledError"
    # every submitted row ends in exactly one terminal state
    batch = store.get_batch(batches[0])
    assert batch is not None and batch.done


def test_a_slot_is_free_while_its_success_is_recorded_and_items_come_once_recorded(store: Store) -> None:
    """One slot: row 1's success cannot be recorded until row 2 has run (it would hang if the slot were held
    until the commit); still, every item is yielded only once its success is stored."""
    adapter = EchoAdapter()
    original = store.asucceed
    held = []

    async def gated(execution_id: str, result: Any) -> bool:
        if not held:
            held.append(execution_id)
            async def second_row_ran() -> None:
                while len(adapter.runs) < 2:
                    await asyncio.sleep(0.005)
            await asyncio.wait_for(second_row_ran(), 60)  # a hang guard, not a timing check
        return await original(execution_id, result)

    store.asucceed = gated  # type: ignore[method-assign]
    seen: list[tuple[int, str | None]] = []

    async def go() -> None:
        async with Runner(adapter, store=store) as runner:
            async for item in runner.stream(make_program(), rows(3), concurrency=1):
                execution = store.get_execution(item.result.execution_id)
                seen.append((item.index, execution.status if execution else None))

    asyncio.run(go())
    assert sorted(seen) == [(0, "succeeded"), (1, "succeeded"), (2, "succeeded")]
    assert len(adapter.runs) == 3


def test_a_stream_closed_while_successes_are_recorded_still_records_them(store: Store) -> None:
    original = store.asucceed

    async def slow(execution_id: str, result: Any) -> bool:
        await asyncio.sleep(0.05)
        return await original(execution_id, result)

    store.asucceed = slow  # type: ignore[method-assign]
    adapter = EchoAdapter()
    items, batches = stream(store, adapter, rows(12), stop_after=1, concurrency=4)
    results = store.batch_results(batches[0])
    ran = {eid for eid, _ in adapter.runs}
    assert len(items) == 1 and len(ran) >= 2  # others had run and were being recorded when the reader left
    assert all(r.status == "succeeded" for r in results if r.execution_id in ran)
    assert all(r.status == "cancelled" for r in results if r.execution_id not in ran)


def test_a_success_waiting_in_line_lands_when_the_stream_is_closed(store: Store) -> None:
    """One slot: row 1's success waits in line (row 0's is still being recorded) in a recorder that awaits
    before it writes; the reader closes the stream meanwhile. The wait was cancelled with its worker, so
    row 1 stayed running although it had run (the cause of this file's flaky closed-stream test)."""
    adapter = EchoAdapter()
    original = store.asucceed
    calls: list[str] = []
    gate: list[asyncio.Event] = []

    async def gated(execution_id: str, result: Any) -> bool:
        calls.append(execution_id)
        if len(calls) == 1:  # row 0: until row 1 has run (and waits in line)
            async def second_row_ran() -> None:
                while len(adapter.runs) < 2:
                    await asyncio.sleep(0.005)
            await asyncio.wait_for(second_row_ran(), 60)  # a hang guard, not a timing check
        else:  # row 1: until the reader has left
            await gate[0].wait()
        return await original(execution_id, result)

    store.asucceed = gated  # type: ignore[method-assign]
    batches: list[str] = []

    async def go() -> None:
        gate.append(asyncio.Event())
        async with Runner(adapter, store=store) as runner, aclosing(
                runner.stream(make_program(), rows(3), concurrency=1, on_batch=batches.append)) as items:
            async for _ in items:
                gate[0].set()
                break

    asyncio.run(go())
    statuses = [r.status for r in store.batch_results(batches[0])]
    assert len(adapter.runs) == 2 and statuses == ["succeeded", "succeeded", "cancelled"]


class GatedAdapter(EchoAdapter):
    """Row q1's run ends only when the reader lets it."""

    def __init__(self) -> None:
        super().__init__()
        self.release: asyncio.Event | None = None

    async def run(self, program: Any, inputs: dict[str, Any], options: RunOptions) -> Any:
        if inputs["question"] == "q1":
            assert self.release is not None
            await self.release.wait()
        return await super().run(program, inputs, options)


def test_a_reader_failing_without_closing_the_stream_loses_no_success(store: Store) -> None:
    """The reader fails (the CLI's output file, say) without closing the stream, in the loop turn before q1's
    run ends: asyncio.run cancels every task left, and a success whose recording task had not started yet
    was never written (q1 stayed running although it had run to the end)."""
    adapter = GatedAdapter()
    batches: list[str] = []

    async def go() -> None:
        adapter.release = asyncio.Event()
        runner = Runner(adapter, store=store)
        async for _ in runner.stream(make_program(), rows(2), concurrency=2, on_batch=batches.append):
            adapter.release.set()
            raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space"):
        asyncio.run(go())
    results = store.batch_results(batches[0])
    assert [(r.index, r.status) for r in results] == [(0, "succeeded"), (1, "succeeded")]


def test_rows_with_a_known_idempotency_key_are_the_existing_execution(store: Store) -> None:
    program = make_program()
    adapter = EchoAdapter()
    first = asyncio.run(Runner(adapter, store=store).run(program, {"question": "q1"},
                                                         RunOptions(idempotency_key="k1")))
    opts = [RunOptions(), RunOptions(idempotency_key="k1"), RunOptions(idempotency_key="k1-other")]
    begun = store.begin_batch(program, [{"question": "q0"}, {"question": "q1"}, {"question": "q2"}], opts, "echo")
    assert begun.execution_ids[0] and begun.execution_ids[1] is None and begun.execution_ids[2]
    assert [r.execution_id for r in store.batch_results(begun.batch_id)][1] == first.execution_id
    # the same key with other inputs is not that execution: the row stays out of the batch's records
    clash = store.begin_batch(program, [{"question": "other"}], [RunOptions(idempotency_key="k1")], "echo")
    assert clash.execution_ids == [None] and store.batch_results(clash.batch_id) == []


def test_two_takers_of_one_interrupted_row_one_wins(db_url: str) -> None:
    program = make_program()
    with Store(db_url) as store:
        begun = store.begin(program, {"question": "q"}, RunOptions(), "echo")
        assert store.transition(begun.execution_id, "running", "interrupted")
    stores = [Store(db_url) for _ in range(4)]
    outcomes: list[Any] = []
    gate = threading.Barrier(len(stores))

    def take(s: Store) -> None:
        gate.wait()
        outcomes.append(s.begin(program, {"question": "q"}, RunOptions(execution_id=begun.execution_id), "echo"))

    threads = [threading.Thread(target=take, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert len(outcomes) == 4
    winners = [o for o in outcomes if not o.in_progress]
    assert len(winners) == 1 and winners[0].attempt == 2
    with Store(db_url) as store:
        e = store.get_execution(begun.execution_id)
        assert e is not None and e.status == "running" and e.attempts == 2
        assert [h.to_status for h in store.status_history(begun.execution_id)] == [
            "running", "interrupted", "running"]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_running_row_of_a_dead_owner_is_taken_over(store: Store) -> None:
    program = make_program()
    begun = store.begin(program, {"question": "q"}, RunOptions(idempotency_key="dead-owner"), "echo")
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE executions SET owner_pid = :pid, owner_marker = NULL WHERE id = :id"),
                     {"pid": _dead_pid(), "id": begun.execution_id})
    again = store.begin(program, {"question": "q"}, RunOptions(idempotency_key="dead-owner"), "echo")
    assert again.execution_id == begun.execution_id and not again.in_progress and again.attempt == 2
    assert [h.to_status for h in store.status_history(begun.execution_id)] == [
        "running", "interrupted", "running"]
    # a live owner's row is waited for, not taken
    third = store.begin(program, {"question": "q"}, RunOptions(idempotency_key="dead-owner"), "echo")
    assert third.in_progress


def test_mark_interrupted_takes_pending_rows_of_dead_batches(store: Store) -> None:
    program = make_program()
    begun = store.begin_batch(program, rows(3), [RunOptions() for _ in range(3)], "echo")
    assert store.mark_interrupted() == []  # this process is alive
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE executions SET owner_pid = :pid"), {"pid": _dead_pid()})
    assert sorted(store.mark_interrupted()) == sorted(begun.execution_ids)  # type: ignore[type-var]
    assert [e.id for e in store.resumable()] == begun.execution_ids  # input order
    adapter = EchoAdapter()
    outcomes = resume(store, lambda name: adapter, mark=False)
    assert [(o.execution_id, o.ok, o.status, o.index) for o in outcomes] == [
        (eid, True, "succeeded", i) for i, eid in enumerate(begun.execution_ids)]
    assert sorted(adapter.runs) == sorted((eid, 1) for eid in begun.execution_ids)  # never started: attempt 1


def test_resume_records_nothing_when_the_stored_program_cannot_be_loaded(store: Store) -> None:
    program = make_program()
    begun = store.begin(program, {"question": "q"}, RunOptions(), "echo")
    assert store.transition(begun.execution_id, "running", "interrupted")
    with store.engine.begin() as conn:  # changed outside stepbridge: no longer matches its hash
        row = conn.execute(text("SELECT program FROM program_versions")).scalar_one()
        data = row if isinstance(row, dict) else __import__("json").loads(row)
        data["description"] = "tampered"
        conn.execute(text("UPDATE program_versions SET program = :p"), {"p": __import__("json").dumps(data)})
    adapter = EchoAdapter()
    [outcome] = resume(store, lambda name: adapter, mark=False)
    assert not outcome.ok and outcome.status == "interrupted"
    assert outcome.error is not None and "not resumable" in outcome.error and "identity" in outcome.error
    assert adapter.runs == []
    assert [h.to_status for h in store.status_history(begun.execution_id)] == ["running", "interrupted"]


def test_begin_batch_needs_one_options_per_row(store: Store) -> None:
    with pytest.raises(ValueError):
        store.begin_batch(make_program(), rows(2), [RunOptions()], "echo")


def test_unknown_batch(store: Store) -> None:
    assert store.get_batch("0" * 32) is None
    with pytest.raises(StorageError, match="no batch"):
        store.batch_results("0" * 32)
