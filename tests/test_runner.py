"""stepbridge.runner: the checks before every run (one copy, shared with pool workers), recording
through the Recorder protocols, and the Runner's own edge cases."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import stepbridge as sb
from stepbridge.adapter import RunOptions
from stepbridge.errors import (
    ConfigurationError,
    InputValidationError,
    StepbridgeError,
    StorageError,
    UnsupportedCapabilityError,
)
from stepbridge.program import LMConfig
from stepbridge.recorder import AsyncRecorder, Begun, ProgramSource, Recorder
from stepbridge.result import RunResult
from stepbridge.runner import Runner, check_capabilities, check_run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def RETRIEVAL(corpus: str) -> dict[str, Any]:
    return {"stepbridge": 1, "name": "r", "signature": "question -> passages: list[str]",
            "modules": {"s": {"type": "retrieve", "retriever": {"kind": "bm25", "corpus": corpus}}},
            "steps": [{"call": "s", "with": {"query": "$inputs.question"}, "as": "f"},
                      {"return": {"passages": "$f.passages"}}]}
ECHO = {"stepbridge": 1, "name": "echo", "signature": "question -> answer",
        "modules": {"a": {"type": "predict", "signature": "question -> answer"}},
        "steps": [{"call": "a", "with": {"question": "$inputs.question"}, "as": "r"},
                  {"return": {"answer": "$r.answer"}}]}


# -- the checks ----------------------------------------------------------------------------------
def test_inputs_are_checked_before_capabilities_and_the_first_missing_one_is_named() -> None:
    program = sb.load_program(EXAMPLES / "rag_qa.yaml")
    with pytest.raises(InputValidationError):  # bad inputs win over a missing capability
        check_run(program, {"nope": 1}, "tiny", frozenset())
    with pytest.raises(UnsupportedCapabilityError) as info:
        check_run(program, {"question": "q"}, "tiny", frozenset({"async"}), where="worker w1")
    assert info.value.capability == sorted(program.required_capabilities)[0]
    assert "worker w1" in info.value.message and "'tiny'" in info.value.message


def test_the_runs_lm_settings_need_capabilities_too() -> None:
    program = sb.load_program(ECHO)
    check_capabilities(program, "x", frozenset())  # a predict module needs nothing
    with pytest.raises(UnsupportedCapabilityError) as info:
        check_capabilities(program, "x", frozenset(), LMConfig(adapter="xml"))
    assert info.value.capability == "xml_adapter"
    with pytest.raises(UnsupportedCapabilityError, match="ensembles"):
        check_capabilities(program, "x", frozenset({"xml_adapter"}), LMConfig(n=3))


# -- RunOptions' fast paths name every field ----------------------------------------------------------
def test_plain_options_equal_validated_ones_and_name_every_field() -> None:
    plain = RunOptions.plain("e1", timeout=2.5, attempt=3)
    assert plain == RunOptions(execution_id="e1", timeout=2.5, attempt=3)
    assert set(plain.__dict__) == set(RunOptions.model_fields)  # a new field must be added to plain()


@pytest.mark.parametrize("fields", [
    {}, {"lm": {"model": "m/x"}}, {"idempotency_key": "k"}, {"cache": False}, {"metadata": {"a": 1}},
])
def test_extras_are_the_non_default_options_besides_id_attempt_and_timeout(fields: dict[str, Any]) -> None:
    options = RunOptions(execution_id="e", attempt=2, timeout=1.0, **fields)
    extras = options.extras()
    assert extras == options.model_dump(mode="json", exclude={"execution_id", "attempt", "timeout"},
                                        exclude_defaults=True)
    assert RunOptions.model_validate({**extras, "execution_id": "e", "attempt": 2, "timeout": 1.0}) == options


def test_every_option_is_covered_by_extras() -> None:
    # extras() short-cuts on the defaults of the fields it names: a field it does not name must not be lost
    covered = {"execution_id", "attempt", "timeout", "lm", "idempotency_key", "cache", "metadata"}
    assert set(RunOptions.model_fields) == covered


# -- recorders -------------------------------------------------------------------------------------
class SyncRecorder:
    """A recorder with only the sync methods: the Runner must work with it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def begin(self, program: sb.Program, inputs: dict[str, Any], options: RunOptions, backend: str) -> Begun:
        self.events.append("begin")
        return Begun(execution_id=options.execution_id)

    def succeed(self, execution_id: str, result: RunResult) -> object:
        self.events.append("succeed")
        return True

    def fail(self, execution_id: str, error: StepbridgeError, *, cancelled: bool = False) -> object:
        self.events.append("cancel" if cancelled else "fail")
        return True


class BothRecorder(SyncRecorder):
    """Async variants too: the Runner prefers them."""

    async def abegin(self, program: sb.Program, inputs: dict[str, Any], options: RunOptions, backend: str) -> Begun:
        self.events.append("abegin")
        return Begun(execution_id=options.execution_id)

    async def asucceed(self, execution_id: str, result: RunResult) -> object:
        self.events.append("asucceed")
        return True

    async def afail(self, execution_id: str, error: StepbridgeError, *, cancelled: bool = False) -> object:
        self.events.append("afail")
        return True


def test_sync_and_async_recorders() -> None:
    program = sb.load_program(ECHO)  # no LM profile: the in-process reference LM answers
    plain, both = SyncRecorder(), BothRecorder()
    assert isinstance(plain, Recorder) and not isinstance(plain, AsyncRecorder)
    assert isinstance(both, AsyncRecorder) and not isinstance(both, ProgramSource)
    for recorder in (plain, both):
        sb.run(program, {"question": "q"}, store=recorder)
        with pytest.raises(InputValidationError):
            sb.run(program, {"nope": "q"}, store=recorder)
    assert plain.events == ["begin", "succeed", "begin", "fail"]
    assert both.events == ["abegin", "asucceed", "abegin", "afail"]


def test_a_reference_needs_a_program_source() -> None:
    with pytest.raises(StorageError, match="no store is configured"):
        sb.run("echo@prod", {"question": "q"}, store=SyncRecorder())


def test_cancelling_while_the_start_is_recorded_still_ends_in_one_state(tmp_path: Path) -> None:
    from stepbridge.storage import Store

    store = Store(f"sqlite:///{tmp_path}/x.db")
    program = sb.load_program(EXAMPLES / "classify.yaml")

    async def go() -> None:
        async with sb.Runner("native", store=store) as runner:
            tasks = [asyncio.ensure_future(runner.run(program, {"ticket": f"t{i}"})) for i in range(60)]
            await asyncio.sleep(0.002)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(go())
    statuses = Counter(e.status for e in store.list_executions(limit=1000))
    store.close()
    assert "running" not in statuses and sum(statuses.values()) >= 1
    assert set(statuses) <= {"cancelled", "succeeded"}


class GatedRecorder(BothRecorder):
    """An async recorder that waits (a gate) before it writes a success, as a remote recorder may."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def asucceed(self, execution_id: str, result: RunResult) -> object:
        self.entered.set()
        await self.gate.wait()
        self.events.append("asucceed")
        return True


def test_a_run_cancelled_while_its_success_is_recorded_still_records_it() -> None:
    program = sb.load_program(ECHO)
    recorder = GatedRecorder()

    async def go() -> None:
        async with sb.Runner("native", store=recorder) as runner:
            task = asyncio.ensure_future(runner.run(program, {"question": "q"}))
            await asyncio.wait_for(recorder.entered.wait(), 60)  # a hang guard, not a timing check
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            recorder.gate.set()
            for _ in range(100):  # the shielded write finishes on its own
                if "asucceed" in recorder.events:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(go())
    assert recorder.events == ["abegin", "asucceed"]  # one recorded end, the success: never left running


def test_same_content_beside_different_corpora_runs_on_its_own_corpus(tmp_path: Path) -> None:
    outputs = []
    async def go() -> None:
        async with sb.Runner("native") as runner:
            for word in ("alpha", "beta"):
                folder = tmp_path / word
                folder.mkdir()
                (folder / "c.txt").write_text(f"{word} corpus line\n")
                program = sb.load_program(RETRIEVAL("c.txt"), base_dir=folder)
                outputs.append((await runner.run(program, {"question": "corpus"})).outputs["passages"])

    asyncio.run(go())
    assert outputs == [["alpha corpus line"], ["beta corpus line"]]


def test_execution_ids_are_distinct_uuid4_hex_also_in_a_forked_child() -> None:
    import os
    import uuid

    from stepbridge.adapter import new_execution_id

    ids = [new_execution_id() for _ in range(600)]  # across batches
    assert len(set(ids)) == len(ids)
    for eid in ids:
        parsed = uuid.UUID(hex=eid)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == eid
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must not hand out the parent's remaining ids
        os.write(write, new_execution_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child not in ids and child != new_execution_id()


@pytest.mark.parametrize("timeout", [-1.0, 0, float("nan"), float("inf"), "5"])
def test_a_runner_refuses_a_timeout_that_is_not_a_positive_number(timeout: Any) -> None:
    with pytest.raises(ConfigurationError, match="positive number of seconds"):
        Runner("native", timeout=timeout)


class FailingRecorder(SyncRecorder):
    """A recorder whose success write breaks with a non-stepbridge exception (a driver error, a full disk)."""

    def succeed(self, execution_id: str, result: RunResult) -> object:
        raise RuntimeError("disk full")


def test_a_recorder_failing_mid_batch_gives_every_row_an_answer_instead_of_hanging_the_stream() -> None:
    program = sb.load_program(ECHO)

    async def go() -> list[sb.BatchItem]:
        async with sb.Runner("native", store=FailingRecorder()) as runner:
            # wait_for only turns a hang (the bug: a dead worker, a stream waiting for ever) into a failure
            return await asyncio.wait_for(_collect(runner.stream(program, [{"question": f"q{i}"} for i in range(5)],
                                                                 concurrency=2)), 120)

    items = asyncio.run(go())
    assert sorted(i.index for i in items) == [0, 1, 2, 3, 4]
    for item in items:
        assert isinstance(item.error, StepbridgeError) and "RuntimeError: disk full" in str(item.error)
        assert isinstance(item.error.__cause__, RuntimeError)


async def _collect(stream: Any) -> list[Any]:
    return [item async for item in stream]
