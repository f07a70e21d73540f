"""The ray adapter end to end on a real local Ray: real actor processes, typed errors, deadlines, cancel,
saturation, retries by the side-effect rule, programs from a store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import skip_without_ray

skip_without_ray()

import sb_pool as h  # noqa: E402
import sb_ray  # noqa: E402, F401  (registers the tools on this side too)
from stepbridge import (  # noqa: E402
    InputValidationError,
    LMConfig,
    PoolSaturatedError,
    Runner,
    RunOptions,
    RunTimeoutError,
    StepError,
    WorkerLostError,
    load_program,
)
from stepbridge.bridge.ray import RayAdapter  # noqa: E402
from stepbridge.errors import LMError  # noqa: E402
from stepbridge.validate import validate_data  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RAISE = validate_data({
    "stepbridge": 1, "name": "raiser", "signature": "kind, message -> result",
    "modules": {"boom": {"type": "tool", "tool": "conformance_raise"}},
    "steps": [{"call": "boom", "with": {"kind": "$inputs.kind", "message": "$inputs.message"}, "as": "r"},
              {"return": {"result": "$r.result"}}]})


async def wait_for(cond: Callable[[], Awaitable[bool]], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``cond`` until true; the timeout only bounds a hang, it is not a performance threshold."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def in_flight(adapter: RayAdapter) -> int:
    return sum(a["in_flight"] for a in await adapter.describe_actors())


def test_outputs_equal_native_data_by_content_and_errors_keep_type(ray_kwargs: dict[str, Any]) -> None:
    classify = load_program(EXAMPLES / "classify.yaml")
    rag = load_program(EXAMPLES / "rag_qa.yaml")  # its corpus travels by content (object store)
    rows = [{"ticket": "I was charged twice, please refund me"}, {"ticket": "The app crashes when I log in"}]

    async def go() -> None:
        async with Runner("native") as native:
            want = [await native.run(classify, r) for r in rows]
            want.append(await native.run(rag, {"question": "Where is the Eiffel Tower?"}))
        adapter = RayAdapter(**ray_kwargs)
        async with Runner(adapter) as runner:
            got = [await runner.run(classify, r) for r in rows]
            got.append(await runner.run(rag, {"question": "Where is the Eiffel Tower?"}))
            for g, w in zip(got, want, strict=True):
                assert g.outputs == w.outputs
                assert g.step_sequence() == w.step_sequence()
                assert [c.messages for s in g.trace for c in s.lm_calls] == \
                       [c.messages for s in w.trace for c in s.lm_calls]
                assert g.backend == "ray" and g.worker and g.worker.startswith("ray-")
            many = await asyncio.gather(*(runner.run(classify, {"ticket": f"ticket {i}"}) for i in range(40)))
            assert len({r.execution_id for r in many}) == 40
            assert len({r.worker for r in many}) == 2  # both actors served
            assert {"out_of_process", "retrieve", "tools", "cancel"} <= adapter.capabilities

            # typed errors keep their type and details across Ray, with the partial trace
            with pytest.raises(StepError) as info:
                await runner.run(RAISE, {"kind": "PoolSaturatedError", "message": "from the tool"})
            assert info.value.trace and info.value.trace[0].module == "boom"
            assert info.value.remote_traceback
            # an LM override travels with the run (an unknown profile: the actor's LM client refuses it)
            with pytest.raises(StepError) as info:
                await runner.run(classify, rows[0], RunOptions(lm=LMConfig(profile="no-such-profile")))
            assert isinstance(info.value.cause, LMError)
            with pytest.raises(InputValidationError):  # bypass the core: the actor checks too
                await adapter.run(classify, {"nope": 1}, RunOptions())

    asyncio.run(go())


def test_deadline_cancel_saturation(ray_kwargs: dict[str, Any]) -> None:
    nap = validate_data(h.tool_program("sbtest_nap", "nap"))

    async def go() -> None:
        adapter = RayAdapter(**{**ray_kwargs, "actors": 1, "concurrency": 2, "queue_size": 1,
                                "saturation_wait": 0.2})
        async with Runner(adapter) as runner:
            # the deadline: the caller's timeout, not the budget the actor was given
            began = time.monotonic()
            with pytest.raises(RunTimeoutError) as timed_out:
                await runner.run(nap, {"seconds": 30}, timeout=0.5)
            assert timed_out.value.timeout == 0.5 and time.monotonic() - began < 25

            # cancelling the caller reaches the actor (ray.cancel): its run stops, the next one is served
            task = asyncio.ensure_future(runner.run(nap, {"seconds": 30}))

            async def started() -> bool:
                return await in_flight(adapter) == 1

            async def stopped() -> bool:
                return await in_flight(adapter) == 0

            await wait_for(started, what="run started on the actor")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_for(stopped, what="the actor's run cancelled")
            assert (await runner.run(nap, {"seconds": 0.01})).outputs == {"slept": 0.01}

            # bounded: 2 running + 1 admitted waiting; the 4th waits 0.2 s for room, then PoolSaturatedError
            results = await asyncio.gather(*(runner.run(nap, {"seconds": 2}) for _ in range(4)),
                                           return_exceptions=True)
            saturated = [r for r in results if isinstance(r, PoolSaturatedError)]
            ok = [r for r in results if not isinstance(r, BaseException)]
            assert len(saturated) == 1 and len(ok) == 3, results
            assert adapter.stats["saturated"] == 1
            assert (await runner.run(nap, {"seconds": 0.01})).outputs == {"slept": 0.01}

    asyncio.run(go())


def test_dead_actor_retries_idempotent_runs_never_side_effects(ray_kwargs: dict[str, Any]) -> None:
    nap = validate_data(h.tool_program("sbtest_nap", "nap"))
    charge = validate_data(h.tool_program("sbtest_charge", "charge"))

    async def busy_pid(adapter: RayAdapter) -> int:
        for _ in range(600):
            busy = [a["pid"] for a in await adapter.describe_actors() if a["in_flight"]]
            if busy:
                return busy[0]
            await asyncio.sleep(0.05)
        raise AssertionError("no actor started the run")

    async def go() -> None:
        adapter = RayAdapter(**ray_kwargs)
        async with Runner(adapter) as runner:
            # an idempotent run: its actor is SIGKILLed mid-run, it is run again on the other one
            task = asyncio.ensure_future(runner.run(nap, {"seconds": 3}))
            os.kill(await busy_pid(adapter), signal.SIGKILL)
            result = await task
            assert result.outputs == {"slept": 3} and result.attempts == 2
            assert adapter.stats["lost"] == 1 and adapter.stats["retried"] == 1

            # a tool with side effects: never run twice, the caller gets WorkerLostError
            task = asyncio.ensure_future(runner.run(charge, {"seconds": 5}))
            os.kill(await busy_pid(adapter), signal.SIGKILL)
            with pytest.raises(WorkerLostError) as info:
                await task
            assert info.value.attempts == 1 and "side effects" in str(info.value)

            # Ray restarts the dead actors (new processes) and they serve again
            async def both_back() -> bool:
                with contextlib.suppress(Exception):
                    return len({a["pid"] for a in await adapter.describe_actors(timeout=2)}) == 2
                return False

            await wait_for(both_back, what="the actors restarted")
            # ... and the adapter's own probe has seen them back (until then it sends runs to the healthy one
            # only, and the lost reference would never be asked for)
            async def both_healthy() -> bool:
                return all(a["healthy"] for a in adapter.status()["actors"])

            await wait_for(both_healthy, what="the adapter saw the restarted actors")
            many = await asyncio.gather(*(runner.run(nap, {"seconds": 0.01}) for _ in range(20)))
            assert all(r.outputs == {"slept": 0.01} for r in many)

            # an idle actor restarted behind the adapter's back (no run failed, so nothing told it) has lost the
            # program's object reference it was given: it says so, gets it again, and the runs still succeed
            victim = (await adapter.describe_actors())[0]["pid"]
            os.kill(victim, signal.SIGKILL)

            async def replaced() -> bool:
                with contextlib.suppress(Exception):
                    pids = {a["pid"] for a in await adapter.describe_actors(timeout=2)}
                    return len(pids) == 2 and victim not in pids
                return False

            await wait_for(replaced, what="the idle actor restarted")
            many = await asyncio.gather(*(runner.run(nap, {"seconds": 0.01}) for _ in range(20)))
            assert all(r.outputs == {"slept": 0.01} for r in many)
            assert adapter.stats["resent"] >= 1

    asyncio.run(go())


def test_programs_rehydrate_from_the_store_by_hash_and_alias(tmp_path: Path, ray_kwargs: dict[str, Any]) -> None:
    from stepbridge.storage import Store

    url = f"sqlite:///{tmp_path / 'ray.db'}"
    classify = load_program(EXAMPLES / "classify.yaml")
    with contextlib.closing(Store(url)) as store:
        version = store.publish(classify, message="ray test")
        store.set_alias(classify.name, "prod", version.hash)

    async def go() -> None:
        adapter = RayAdapter(**{**ray_kwargs, "store_url": url})
        with contextlib.closing(Store(url)) as store:
            async with Runner(adapter, store=store) as runner:
                infos = await adapter.describe_actors()
                assert all(version.hash in i["warmed"] for i in infos)  # built from the store at start
                result = await runner.run(f"{classify.name}@prod", {"ticket": "refund me"})
                assert result.program_hash == version.hash and result.backend == "ray"
                # found in the actors' cache (warmed from the store): never fetched from the object store
                infos = await adapter.describe_actors()
                assert sum(i["sources"]["router"] for i in infos) == 0

    asyncio.run(go())


def test_actors_refuse_garbage_and_content_that_does_not_match_its_hash(ray_kwargs: dict[str, Any]) -> None:
    """What reaches an actor is decoded by the pool protocol and checked against its hash: garbage frames,
    a definition of another program under this hash, or a DATA message where a PROGRAM belongs are each
    a typed error, and the actor keeps serving."""
    import ray
    from stepbridge.bridge import protocol as p
    from stepbridge.bridge.ray_host import program_key

    nap = validate_data(h.tool_program("sbtest_nap", "nap"))
    other = validate_data(h.tool_program("sbtest_charge", "other"))

    def request(program_hash: str) -> list[bytes]:
        return p.encode(p.Request(execution_id="x", program_hash=program_hash, inputs={"seconds": 0.01}), b"rid-1")

    async def ask(actor: Any, frames: list[Any], refs: dict[str, Any]) -> p.Reply:
        reply = p.decode(await actor.run.remote(frames, refs)).body
        assert isinstance(reply, p.Reply)
        return reply

    async def go() -> None:
        adapter = RayAdapter(**{**ray_kwargs, "actors": 1})
        async with Runner(adapter) as runner:
            await adapter.start()
            actor = adapter._actors[0].handle
            for frames in ([b"garbage"], [b"SBRG\x09", b"\x02", b"", b""], [b"x" * 10] * 4):
                reply = await ask(actor, frames, {})
                assert reply.error is not None and reply.error["type"] == "ProtocolError"
            # the hash of one program, the definition of another
            forged = ray.put(p.encode(p.ProgramDef(program_hash=nap.content_hash, program=other.to_dict())))
            reply = await ask(actor, request(nap.content_hash), {program_key(nap.content_hash): forged})
            assert reply.error is not None and reply.error["type"] == "ProgramValidationError"
            assert "does not match its hash" in reply.error["message"]
            # a DATA message where the definition belongs
            wrong = ray.put(p.encode(p.Data(data_hash=nap.content_hash, content=b"{}")))
            reply = await ask(actor, request(other.content_hash), {program_key(other.content_hash): wrong})
            assert reply.error is not None and reply.error["type"] == "StorageError"
            # and it still serves the real thing
            assert (await runner.run(nap, {"seconds": 0.01})).outputs == {"slept": 0.01}

    asyncio.run(go())
