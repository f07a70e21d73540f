"""Running programs: the one place that validates inputs, checks capabilities and records runs.

:class:`Runner` is to adapters what ``httpx.AsyncClient`` is to transports: it owns one adapter
(and optionally a store) and runs many programs through it. ``stepbridge.run`` and
``stepbridge.batch`` are the sync wrappers. Every backend is recorded the same way here, so
adapters never talk to storage.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from .adapter import Adapter, RunOptions
from .errors import (
    ConfigurationError,
    RunCancelledError,
    RunTimeoutError,
    StepbridgeError,
    UnsupportedCapabilityError,
)
from .program import LMConfig, Program, lm_capabilities
from .recorder import AsyncRecorder, BatchBegun, BatchRecorder, Begun, ProgramSource, Recorder
from .registry import load_adapter
from .result import RunResult
from .validate import check_inputs

__all__ = ["BatchItem", "Runner", "batch", "check_capabilities", "check_run", "load", "run"]

ProgramLike = Program | str | Path


def check_capabilities(program: Program, adapter: str, capabilities: frozenset[str], lm: LMConfig | None = None,
                       *, where: str | None = None) -> None:
    """Raise :class:`UnsupportedCapabilityError` if ``capabilities`` lack what ``program`` (with the run's
    LM settings) needs. The one copy of the rule: the Runner applies it, and a pool worker again
    (``where`` names it), since a request frame is no proof the router checked."""
    missing = (program.required_capabilities | lm_capabilities(lm)) - capabilities
    if missing:
        cap = sorted(missing)[0]
        raise UnsupportedCapabilityError(
            f"program {program.name!r} needs capability {cap!r}, which adapter {adapter!r}"
            f"{f' on {where}' if where else ''} does not declare (it declares: {', '.join(sorted(capabilities))})",
            capability=cap, adapter=adapter)


def check_run(program: Program, inputs: Any, adapter: str, capabilities: frozenset[str],
              lm: LMConfig | None = None, *, where: str | None = None) -> dict[str, Any]:
    """Everything checked before a run, wherever it runs: the inputs against the signature, then the
    capabilities (see :func:`check_capabilities`). Returns the inputs."""
    checked = check_inputs(program, inputs)
    check_capabilities(program, adapter, capabilities, lm, where=where)
    return checked


class BatchItem:
    """One row of a batch: its inputs and either a result or a typed error (batches keep going)."""

    __slots__ = ("batch_id", "error", "index", "inputs", "result")

    def __init__(self, index: int, inputs: Any, batch_id: str | None = None):
        self.index = index
        self.inputs = inputs
        self.batch_id = batch_id  # the recorded batch this row belongs to (with a batch-recording store)
        self.result: RunResult | None = None
        self.error: StepbridgeError | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None

    def __repr__(self) -> str:
        outcome = (f"outputs={self.result.outputs!r}" if self.result is not None else
                   f"error={type(self.error).__name__}({str(self.error)!r})" if self.error is not None else "pending")
        return f"BatchItem(index={self.index}, inputs={self.inputs!r}, {outcome})"


def load(program: ProgramLike, *, store: ProgramSource | None = None) -> Program:
    """A validated program from a Program, a file path, or a stored reference (``name@alias``, hash)."""
    if isinstance(program, Program):
        return program
    from .loader import load_program

    text = str(program)
    if isinstance(program, Path) or text.endswith((".yaml", ".yml", ".json")) or "/" in text:
        return load_program(Path(text))
    if store is None:
        from .errors import StorageError

        raise StorageError(f"{text!r} is not a program file, and no store is configured to look it up")
    return store.load(text)


def check_timeout(timeout: float | None, where: str = "timeout") -> None:
    """A per-run timeout is a positive finite number of seconds (or None: no timeout). Checked where the
    runner is made: ``RunOptions`` validates it too, but the runner's default reaches runs unvalidated."""
    if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ConfigurationError(f"{where} must be a positive number of seconds, not {timeout!r}", where=where)


class Runner:
    """Runs programs on one adapter, checking inputs and capabilities and recording to ``store``."""

    def __init__(
        self,
        backend: str | Adapter | Callable[..., Adapter] = "native",
        *,
        store: Recorder | None = None,
        lm: str | LMConfig | None = None,
        timeout: float | None = None,
        **adapter_options: Any,
    ):
        check_timeout(timeout)
        self.adapter: Adapter = load_adapter(backend, **adapter_options)
        self.store = store
        self._async_store = store if isinstance(store, AsyncRecorder) else None  # checked once, not per run
        self._source = store if isinstance(store, ProgramSource) else None
        self.lm = LMConfig(model=lm) if isinstance(lm, str) and "/" in lm else (
            LMConfig(profile=lm) if isinstance(lm, str) else lm)
        self.timeout = timeout
        self._prepared: set[tuple[str, Path | None]] = set()

    @property
    def backend(self) -> str:
        return self.adapter.name

    def check(self, program: Program, lm: LMConfig | None = None) -> None:
        """Raise :class:`UnsupportedCapabilityError` if the adapter lacks what the program (with the run's
        LM settings, which may ask for the XML adapter or several completions) needs."""
        check_capabilities(program, self.adapter.name, self.adapter.capabilities, lm)

    async def prepare(self, program: Program, lm: LMConfig | None = None) -> None:
        """Check capabilities and prepare the adapter for ``program`` (once per plan). :meth:`run` does
        this itself; calling it first separates "this runner cannot run it" from the run's outcome.
        ``lm``: the run's LM settings (the XML adapter or several completions need capabilities too)."""
        self.check(program, lm if lm is not None else self.lm)
        key = program.plan_key  # the same content beside other corpora is another plan
        if key not in self._prepared:
            await self.adapter.prepare(program)
            self._prepared.add(key)

    def _options(self, options: RunOptions | None, fields: dict[str, Any] | None = None) -> RunOptions:
        """The run's options with the runner's defaults (LM, timeout) filled in."""
        options = options or (RunOptions(**fields) if fields else RunOptions.default())
        if options.lm is None and self.lm is not None:
            options = options.model_copy(update={"lm": self.lm})
        if options.timeout is None and self.timeout is not None:
            options = options.model_copy(update={"timeout": self.timeout})
        return options

    async def run(
        self, program: ProgramLike, inputs: dict[str, Any] | None = None, options: RunOptions | None = None,
        **option_fields: Any,
    ) -> RunResult:
        """Run once. Raises a typed :class:`StepbridgeError` (with the partial trace) on failure."""
        prog = load(program, store=self._source)
        result, execution_id = await self._execute(prog, inputs, self._options(options, option_fields))
        if execution_id is not None:
            # shielded: a caller cancelling now must not leave an ended run "running" (a recorder may wait
            # before it writes; the bundled store has queued the write already)
            await asyncio.shield(self._succeed(execution_id, result))
        return result

    async def _execute(self, prog: Program, inputs: Any, options: RunOptions) -> tuple[RunResult, str | None]:
        """:meth:`run` up to its success: the result and the execution whose success is still to be
        recorded (None if not recorded, or already recorded earlier under the same idempotency key).
        Failures are recorded here, before they are raised."""
        inputs = dict(inputs) if isinstance(inputs, dict) else (inputs if inputs is not None else {})
        begun = None
        if self.store is not None:
            # Recorded before any check: a run refused for bad inputs still ends in one recorded state.
            recorded_inputs = _recorded(inputs)
            begin = asyncio.ensure_future(self._begin(prog, recorded_inputs, options))
            try:
                begun = await asyncio.shield(begin)
            except asyncio.CancelledError:
                # The start is being written regardless: let it land, then record the cancellation.
                started = await begin
                if started.existing is None and started.existing_error is None and not started.in_progress:
                    await self._fail(started.execution_id, RunCancelledError("run cancelled by its caller"),
                                     cancelled=True)
                raise
            waited = 0.0
            while begun.in_progress:  # same idempotency key, still running elsewhere: wait for its result
                if waited >= (options.timeout or 600.0):
                    raise RunTimeoutError(f"execution {begun.execution_id} with idempotency key "
                                          f"{options.idempotency_key!r} is still running", timeout=options.timeout)
                await asyncio.sleep(0.2)
                waited += 0.2
                begun = await self._begin(prog, recorded_inputs, options)
            if begun.existing is not None:
                return begun.existing, None
            if begun.existing_error is not None:
                raise begun.existing_error
            options = options.model_copy(update={"execution_id": begun.execution_id, "attempt": begun.attempt})
        try:
            check_inputs(prog, inputs)
            if options.lm is not None or prog.plan_key not in self._prepared:
                # (a prepared plan with no LM settings needs no second look: its check cannot change)
                await self.prepare(prog, options.lm)
            result = await self.adapter.run(prog, inputs, options)
        except asyncio.CancelledError:
            if begun is not None:
                # shielded: the cancelled state must still be recorded
                await asyncio.shield(self._fail(begun.execution_id, RunCancelledError("run cancelled by its caller"),
                                                cancelled=True))
            raise
        except StepbridgeError as exc:
            if begun is not None:
                await self._fail(begun.execution_id, exc)
            raise
        except Exception as exc:  # an adapter bug must still end in one recorded, typed state
            error = StepbridgeError(f"adapter {self.adapter.name!r} failed: {type(exc).__name__}: {exc}")
            if begun is not None:
                await self._fail(begun.execution_id, error)
            raise error from exc
        return result, None if begun is None else begun.execution_id

    # An AsyncRecorder's writes are awaited: the store's group commit lets concurrent runs share
    # transactions. Plain sync recorders work too.
    async def _begin(self, prog: Program, inputs: dict[str, Any], options: RunOptions) -> Begun:
        if self._async_store is not None:
            return await self._async_store.abegin(prog, inputs, options, self.adapter.name)
        assert self.store is not None
        return self.store.begin(prog, inputs, options, self.adapter.name)

    async def _succeed(self, execution_id: str, result: RunResult) -> None:
        if self._async_store is not None:
            await self._async_store.asucceed(execution_id, result)
        elif self.store is not None:
            self.store.succeed(execution_id, result)

    async def _fail(self, execution_id: str, error: StepbridgeError, *, cancelled: bool = False) -> None:
        if self._async_store is not None:
            await self._async_store.afail(execution_id, error, cancelled=cancelled)
        elif self.store is not None:
            self.store.fail(execution_id, error, cancelled=cancelled)

    async def stream(
        self, program: ProgramLike, rows: Iterable[Any], *, concurrency: int = 8,
        options: Callable[[int, dict[str, Any]], RunOptions] | None = None,
        on_batch: Callable[[str], Any] | None = None,
    ) -> AsyncIterator[BatchItem]:
        """Run every row, ``concurrency`` at a time, yielding items as they finish. Failures do not stop it.
        To stop reading early, close the stream (``contextlib.aclosing``) so its cleanup runs at once.

        With a :class:`~stepbridge.recorder.BatchRecorder` store the batch is recorded first, every row
        ``pending`` in input order (``on_batch`` then gets its id), so a killed batch can be continued
        (``stepbridge executions resume``); rows left unstarted when the stream is stopped are recorded
        ``cancelled``.
        """
        prog = load(program, store=self._source)
        done: asyncio.Queue[BatchItem] = asyncio.Queue()
        items = [BatchItem(i, dict(r) if isinstance(r, dict) else r) for i, r in enumerate(rows)]
        row_options: list[RunOptions | None] = []
        for item in items:
            try:
                row_options.append(self._options(options(item.index, item.inputs) if options else None))
            except StepbridgeError as exc:
                item.error = exc
                row_options.append(None)
        batch = await self._begin_batch(prog, items, row_options)
        if batch is not None and on_batch is not None:
            on_batch(batch.batch_id)

        todo = iter(zip(items, row_options, strict=True))
        # A row's slot is free once its run is done; the success is recorded beside the next row's run
        # (the group commit's wait was a tenth of each slot's time at 50 ms LM latency). An item is
        # still yielded only once recorded, and at most ``concurrency`` successes wait to be.
        recording = asyncio.Semaphore(max(1, concurrency))
        recordings: set[asyncio.Task[None]] = set()
        # A task cancelled before its first step runs none of its code: when a reader fails without closing
        # the stream, asyncio.run cancels every task left, and such a success would stay unwritten (running)
        unstarted: dict[str, RunResult] = {}

        def recorded(task: asyncio.Task[None], execution_id: str) -> None:
            recordings.discard(task)
            result = unstarted.pop(execution_id, None)
            if result is not None and self.store is not None:  # never started: written here, blocking
                self.store.succeed(execution_id, result)

        def failed_outside(item: BatchItem, exc: Exception) -> StepbridgeError:  # a recorder's own failure
            error = StepbridgeError(f"row {item.index} failed outside its run (recording?): "
                                    f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return error

        async def record(item: BatchItem, execution_id: str, result: RunResult, slot: bool) -> None:
            unstarted.pop(execution_id, None)
            try:
                await self._succeed(execution_id, result)
                item.result = result
            except Exception as exc:
                item.error = failed_outside(item, exc)
            finally:
                if slot:
                    recording.release()
                done.put_nowait(item)

        async def worker() -> None:
            # ``concurrency`` workers take the next row in turn: a few hundred tasks alive, not one per row
            # (thousands of parked tasks were a large share of a batch's garbage-collection work)
            for item, opts in todo:
                if opts is not None:
                    try:
                        result, execution_id = await self._execute(prog, item.inputs, opts)
                        if execution_id is not None:
                            slot = not recording.locked()
                            if slot:
                                await recording.acquire()  # free: returns without suspending (no cancellation)
                            unstarted[execution_id] = result
                            task = asyncio.ensure_future(record(item, execution_id, result, slot))
                            recordings.add(task)
                            task.add_done_callback(functools.partial(recorded, execution_id=execution_id))
                            if not slot:  # enough successes waiting: this worker waits for its own (a closed
                                await asyncio.shield(task)  # stream still awaits it with the others)
                            continue
                        item.result = result
                    except StepbridgeError as exc:
                        item.error = exc
                    except Exception as exc:
                        item.error = failed_outside(item, exc)
                done.put_nowait(item)  # always: the stream waits for one item per row

        tasks = [asyncio.ensure_future(worker()) for _ in range(min(max(1, concurrency), len(items)))]
        finished = False
        try:
            for _ in items:
                yield await done.get()
            finished = True
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if recordings:  # successes being recorded are not cancelled: they land, then the stream ends
                await asyncio.shield(asyncio.gather(*recordings, return_exceptions=True))
            if batch is not None and not finished:
                await asyncio.shield(self._end_batch(batch.batch_id))

    async def _begin_batch(self, prog: Program, items: list[BatchItem], row_options: list[RunOptions | None]
                           ) -> BatchBegun | None:
        """Record the batch (a batch-recording store only) and give each row its pending execution's id."""
        store = self.store
        if not isinstance(store, BatchRecorder):
            return None
        todo = [i for i, opts in enumerate(row_options) if opts is not None]
        recording = asyncio.ensure_future(asyncio.to_thread(
            store.begin_batch, prog, [_recorded(items[i].inputs) for i in todo],
            [row_options[i] for i in todo], self.adapter.name))
        try:
            batch = await asyncio.shield(recording)
        except asyncio.CancelledError:  # it is being written regardless: let it land, then cancel its rows
            await self._end_batch((await recording).batch_id)
            raise
        for i, eid in zip(todo, batch.execution_ids, strict=True):
            items[i].batch_id = batch.batch_id
            opts = row_options[i]
            if eid is not None and opts is not None:
                row_options[i] = opts.model_copy(update={"execution_id": eid})
        return batch

    async def _end_batch(self, batch_id: str) -> None:
        if isinstance(self.store, BatchRecorder):
            await asyncio.to_thread(self.store.end_batch, batch_id)

    async def batch(self, program: ProgramLike, rows: Iterable[dict[str, Any]], *, concurrency: int = 8
                    ) -> list[BatchItem]:
        """All rows, in input order."""
        items = [item async for item in self.stream(program, rows, concurrency=concurrency)]
        return sorted(items, key=lambda i: i.index)

    async def aclose(self) -> None:
        """Close the adapter (its connections and processes)."""
        await self.adapter.aclose()

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _recorded(inputs: Any) -> dict[str, Any]:
    """The inputs as recorded: a row that is not an object is kept as its repr (and fails validation)."""
    return inputs if isinstance(inputs, dict) else {"_invalid": repr(inputs)}


def _sync(coro_factory: Callable[[], Any]) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    raise RuntimeError("stepbridge.run/batch are blocking; inside an event loop use `async with Runner()`")


def run(program: ProgramLike, inputs: dict[str, Any] | None = None, *, backend: Any = "native",
        store: Recorder | None = None, lm: str | LMConfig | None = None, timeout: float | None = None,
        **adapter_options: Any) -> RunResult:
    """Run a program once and return its :class:`RunResult` (blocking)."""
    async def go() -> RunResult:
        async with Runner(backend, store=store, lm=lm, timeout=timeout, **adapter_options) as runner:
            return await runner.run(program, inputs)

    return _sync(go)


def batch(program: ProgramLike, rows: Iterable[dict[str, Any]], *, backend: Any = "native",
          store: Recorder | None = None, lm: str | LMConfig | None = None, concurrency: int = 8,
          timeout: float | None = None, **adapter_options: Any) -> list[BatchItem]:
    """Run a program over many input rows (blocking); failed rows carry their typed error."""
    async def go() -> list[BatchItem]:
        async with Runner(backend, store=store, lm=lm, timeout=timeout, **adapter_options) as runner:
            return await runner.batch(program, rows, concurrency=concurrency)

    return _sync(go)
