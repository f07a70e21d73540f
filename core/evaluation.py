"""Evaluations: a program over a dataset with a metric, concurrently, on any backend (DESIGN 11).

Rows run through the :class:`~stepbridge.runner.Runner` (so every backend, and the pool, fans them out
the same way) and each finished row is scored as it arrives. With a store, the evaluation is a stored
resource: its rows (example, prediction, score or error, execution id, latency, tokens) are written as
they finish, and the runs themselves are a recorded batch, so a killed evaluation resumes
(:func:`aresume`) without re-running a finished row: a row whose run succeeded but was not scored yet is
scored from its stored outputs, an interrupted run is taken over by its own execution id.

The summary is the mean score over the rows that were scored, with a 95% confidence interval
(Student t), errors (runs that failed, metrics that raised) counted apart, tokens, and p50/p95 latency.
Two evaluations over the same data compare as a paired difference (:func:`compare`).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, Field

from .adapter import RunOptions, new_execution_id
from .datasets import Dataset
from .errors import InputValidationError, ProgramValidationError, StepbridgeError, did_you_mean
from .program import Program
from .registry import metric as registered_metric
from .registry import metrics, registered_backend
from .runner import Runner, _sync, load

__all__ = [
    "Comparison",
    "EvaluationLog",
    "EvaluationResult",
    "Metric",
    "RowResult",
    "Summary",
    "aevaluate",
    "compare",
    "evaluate",
    "mean_ci",
    "resolve_metric",
    "store_judge",
    "summarize",
]

#: a row's score or error is written at most this many rows (or this many seconds) after it finished
FLUSH_ROWS = 64
FLUSH_SECONDS = 0.5
#: bounds of what an operator may ask for (``--concurrency``, ``--timeout``)
MAX_CONCURRENCY = 10_000
MAX_TIMEOUT = 7 * 24 * 3600.0


class RowResult(BaseModel):
    """One scored row: its position in the dataset, the example, and a score or an error."""

    position: int = Field(ge=0)
    example: dict[str, Any]
    prediction: dict[str, Any] | None = None
    score: float | None = None
    error: dict[str, Any] | None = None
    execution_id: str | None = None
    duration_ms: float | None = None
    tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.score is not None


class Summary(BaseModel):
    """Mean score with its 95% confidence interval over the scored rows; errors counted apart."""

    n: int = Field(ge=0, description="rows in the dataset")
    scored: int = Field(ge=0)
    errors: int = Field(ge=0)
    score: float | None = Field(default=None, description="mean over the scored rows")
    ci_low: float | None = None
    ci_high: float | None = None
    tokens: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None


class EvaluationResult(BaseModel):
    """What ``stepbridge eval --json`` prints (``rows`` only through the Python API and ``evals show``)."""

    id: str | None = None
    program: str
    program_hash: str
    backend: str
    metric: str
    dataset_hash: str
    status: str = "completed"
    n: int
    score: float | None
    ci: tuple[float, float] | None = None
    errors: int
    summary: Summary
    rows: list[RowResult] = Field(default_factory=list, exclude=True)


class Comparison(BaseModel):
    """B minus A on the rows both scored: the mean paired difference with its 95% interval."""

    a: str
    b: str
    paired: int
    score_a: float | None
    score_b: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    disagreements: list[dict[str, Any]]


class EvaluationLog(Protocol):
    """Where an evaluation is stored (:class:`stepbridge.storage.evaluations.Evaluations` is one)."""

    def create(self, *, program: Program, backend: str, metric: str, lm: str | None, dataset: Dataset,
               execution_ids: Sequence[str]) -> str: ...

    def set_batch(self, evaluation_id: str, batch_id: str) -> None: ...

    def record(self, evaluation_id: str, rows: Sequence[RowResult]) -> None: ...

    def finish(self, evaluation_id: str, summary: Summary) -> None: ...


class EvaluationStore(Protocol):
    """What evaluating needs of a store (:class:`stepbridge.storage.Store` is one): its evaluation log and
    storing a program (a judge) by content hash. Taken, never imported, as the Runner takes a Recorder."""

    @property
    def evaluations(self) -> EvaluationLog: ...

    def ensure_stored(self, program: Program) -> None: ...


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------
Score = Callable[[dict[str, Any], dict[str, Any]], Awaitable[float]]


class Metric:
    """A resolved metric: a registered name (``NAME[:FIELD]``), a callable, or a program that judges
    (an LM judge, run on the evaluation's own runner). ``spec`` is how it is stored and shown."""

    def __init__(self, spec: str, score: Score, judge: Program | None = None):
        self.spec = spec
        self.judge = judge
        self._score = score

    async def __call__(self, example: dict[str, Any], prediction: dict[str, Any]) -> float:
        return await self._score(example, prediction)


def as_score(value: Any, spec: str) -> float:
    """A metric's value as a float: booleans are 1 or 0, numbers must be finite."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(float(value)):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "pass", "correct"):
            return 1.0
        if text in ("false", "no", "fail", "incorrect"):
            return 0.0
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise TypeError(f"metric {spec!r} returned {type(value).__name__} {str(value)[:60]!r}, not a number or bool")


#: a metric name as registered (``NAME``) with an optional field (``:FIELD``)
_NAME = re.compile(r"^[A-Za-z_][\w.\-]*(:[A-Za-z_]\w*)?$")
JUDGE_SUFFIXES = (".yaml", ".yml", ".json")


def _is_program_file(spec: str) -> bool:
    return spec.lower().endswith(JUDGE_SUFFIXES)


def resolve_metric(spec: str | Callable[..., Any] | Program | Metric, *, runner: Runner | None = None,
                   store: Any = None) -> Metric:
    """A :class:`Metric` from a registered name (``exact_match``, ``token_f1:answer``), a program file or
    :class:`Program` (an LM judge), or a callable ``(example, prediction) -> float | bool`` (sync or async).

    Only a spec ending in ``.yaml``, ``.yml`` or ``.json`` is read as a file, and a judge file that is not
    a valid program is refused without quoting it: ``--metric /etc/shadow`` neither reads the file nor
    echoes its lines."""
    if isinstance(spec, Metric):
        return spec
    if isinstance(spec, Program):
        return _judge_metric(spec, runner)
    if isinstance(spec, str) and _is_program_file(spec):
        if not Path(spec).is_file():
            raise InputValidationError(f"--metric {spec[:200]!r}: no such judge program file (a registered metric "
                                       "is given by name: NAME[:FIELD])")
        try:
            judge = load(Path(spec))
        except ProgramValidationError as exc:
            problems = len(exc.issues) if exc.issues else 1
            raise InputValidationError(f"--metric {spec[:200]!r} is not a valid judge program ({problems} "
                                       f"problem(s)); `stepbridge validate {spec[:200]}` lists them") from None
        return _judge_metric(judge, runner)
    if isinstance(spec, str):
        if not _NAME.match(spec):
            raise InputValidationError(f"--metric {spec[:80]!r} is neither a registered metric (NAME[:FIELD]) nor a "
                                       f"judge program file ({', '.join(JUDGE_SUFFIXES)})")
        name, _, field = spec.partition(":")
        try:
            func = registered_metric(name, field or None)
        except (KeyError, TypeError) as exc:
            hint = did_you_mean(name, metrics.names()) if isinstance(exc, KeyError) else None
            raise InputValidationError(f"--metric {spec!r}: {exc.args[0] if exc.args else exc}"
                                       + (f"; did you mean {hint!r}?" if hint else "")) from None
        return _callable_metric(func, spec)
    if callable(spec):
        return _callable_metric(spec, getattr(spec, "__name__", type(spec).__name__))
    raise InputValidationError(f"a metric is a registered name, a judge program or a callable, not "
                               f"{type(spec).__name__}")


def check_run_settings(*, concurrency: int, timeout: float | None) -> None:
    """Numbers an operator passes (``--concurrency``, ``--timeout``) are in range and finite: a negative or
    NaN timeout was accepted and meant no timeout at all."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InputValidationError(f"concurrency must be a whole number from 1 to {MAX_CONCURRENCY}, got "
                                   f"{concurrency!r}", field="concurrency")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT):
        raise InputValidationError(f"timeout must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}, got "
                                   f"{timeout!r}", field="timeout")


async def check_metric(metric: Metric, program: Program, dataset: Dataset) -> None:
    """Refuse, before anything runs, a registered metric that cannot find its fields: ``exact_match:answr``
    (or plain ``exact_match`` on a program without an ``answer`` output) would fail every row alone. The
    metric is tried once on an example holding every field of the dataset and a prediction holding every
    output of the program (as empty text); only a missing field (``KeyError``) is refused: other errors
    may be this placeholder's, and are left to the rows."""
    if metric.judge is not None or not _NAME.match(metric.spec) or not dataset.rows:
        return
    example: dict[str, Any] = {}
    for row in dataset.rows:
        for key, value in row.items():
            example.setdefault(key, value)
    prediction = dict.fromkeys(program.signature.outputs, "")
    try:
        await metric(example, prediction)
    except KeyError as exc:
        raise InputValidationError(f"--metric {metric.spec!r} cannot score {program.name} on {dataset.source}: "
                                   f"{exc.args[0] if exc.args else exc}") from None
    except Exception:  # a placeholder prediction may fail a metric in other ways: the rows will tell
        return


_JUDGE = re.compile(r"^judge:[0-9a-f]{64}$")


def stored_metric(spec: str, store: Any, runner: Runner) -> Metric:
    """The metric a stored evaluation or optimization names. A stored row is untrusted: its metric is only
    a registered name (``NAME[:FIELD]``) or ``judge:HASH``, a judge program loaded from the store by content
    hash (and validated); never a path."""
    if _JUDGE.match(spec):
        return _judge_metric(store.load(spec.removeprefix("judge:")), runner)
    if not _NAME.match(spec):
        raise InputValidationError(f"the stored metric {spec[:80]!r} is neither a registered name nor judge:HASH")
    return resolve_metric(spec, runner=runner)


def store_judge(metric: Metric, store: Any) -> None:
    """A judge metric is kept in the store by content hash (not published as a version of its name), so a
    resume needs no file."""
    if metric.judge is not None and store is not None:
        store.ensure_stored(metric.judge)


def _callable_metric(func: Callable[..., Any], spec: str) -> Metric:
    is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "func", None))

    async def score(example: dict[str, Any], prediction: dict[str, Any]) -> float:
        value = func(example, prediction)
        if is_async or inspect.isawaitable(value):
            value = await value
        return as_score(value, spec)

    return Metric(spec, score)


def _judge_metric(judge: Program, runner: Runner | None) -> Metric:
    """The judge's inputs are filled by name from the prediction, then the example; ``gold_X`` is the
    example's ``X`` (so ``question, answer, gold_answer -> correct: bool`` judges an answer against the
    label). Its first output is the score."""
    spec = f"judge:{judge.content_hash}"
    names = list(judge.signature.inputs)
    output = next(iter(judge.signature.outputs), None)
    if output is None:
        raise InputValidationError(f"judge program {judge.name!r} has no output to use as the score")

    async def score(example: dict[str, Any], prediction: dict[str, Any]) -> float:
        if runner is None:
            raise StepbridgeError("a judge metric needs the evaluation's runner")
        inputs: dict[str, Any] = {}
        for name in names:
            if name in prediction:
                inputs[name] = prediction[name]
            elif name in example:
                inputs[name] = example[name]
            elif name.startswith("gold_") and name[5:] in example:
                inputs[name] = example[name[5:]]
        result = await runner.run(judge, inputs)
        return as_score(result.outputs.get(output), spec)

    return Metric(spec, score, judge)


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
# two-sided 95% Student t critical values for 1..30 degrees of freedom (then the normal 1.96)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def mean_ci(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """Mean and its 95% confidence interval (Student t; a single value has a zero-width interval)."""
    if not values:
        return None, None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    df = len(values) - 1
    t = _T95[df - 1] if df <= len(_T95) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(rows: Sequence[RowResult], n: int) -> Summary:
    scores = [r.score for r in rows if r.error is None and r.score is not None]
    mean, low, high = mean_ci(scores)
    latencies = sorted(r.duration_ms for r in rows if r.duration_ms is not None)
    return Summary(n=n, scored=len(scores), errors=sum(1 for r in rows if r.error is not None), score=mean,
                   ci_low=low, ci_high=high, tokens=sum(r.tokens or 0 for r in rows),
                   p50_ms=_percentile(latencies, 50), p95_ms=_percentile(latencies, 95))


def compare(a_id: str, a_rows: Sequence[RowResult], b_id: str, b_rows: Sequence[RowResult]) -> Comparison:
    """Paired comparison of two evaluations of the same rows: the mean of (B - A) over rows both scored,
    its 95% interval, and the rows whose scores differ (or where only one side errored)."""
    a_by = {r.position: r for r in a_rows}
    b_by = {r.position: r for r in b_rows}
    diffs: list[float] = []
    a_scores: list[float] = []
    b_scores: list[float] = []
    disagree: list[dict[str, Any]] = []
    for pos in sorted(set(a_by) & set(b_by)):
        ra, rb = a_by[pos], b_by[pos]
        if ra.ok and rb.ok:
            assert ra.score is not None and rb.score is not None
            diffs.append(rb.score - ra.score)
            a_scores.append(ra.score)
            b_scores.append(rb.score)
            if ra.score == rb.score:
                continue
        elif ra.ok == rb.ok:
            continue  # both errored
        disagree.append({"position": pos, "example": ra.example,
                         "a": {"score": ra.score, "prediction": ra.prediction, "error": ra.error},
                         "b": {"score": rb.score, "prediction": rb.prediction, "error": rb.error}})
    mean, low, high = mean_ci(diffs)
    return Comparison(a=a_id, b=b_id, paired=len(diffs), score_a=statistics.fmean(a_scores) if a_scores else None,
                      score_b=statistics.fmean(b_scores) if b_scores else None, difference=mean, ci_low=low,
                      ci_high=high, disagreements=disagree)


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------
def _error_dict(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, StepbridgeError):
        return exc.to_dict()
    return {"type": "MetricError", "message": f"{type(exc).__name__}: {exc}"}


class _Rows:
    """Collects scored rows, writes them to the log in groups, reports progress."""

    def __init__(self, log: EvaluationLog | None, evaluation_id: str | None,
                 on_row: Callable[[RowResult], Any] | None):
        self.log = log
        self.evaluation_id = evaluation_id
        self.on_row = on_row
        self.rows: list[RowResult] = []
        self._pending: list[RowResult] = []
        self._flushed = time.monotonic()

    async def add(self, row: RowResult) -> None:
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(row)
        if self.log is None:
            return
        self._pending.append(row)
        if len(self._pending) >= FLUSH_ROWS or time.monotonic() - self._flushed >= FLUSH_SECONDS:
            await self.flush()

    async def flush(self) -> None:
        if self.log is None or not self._pending:
            return
        pending, self._pending = self._pending, []
        assert self.evaluation_id is not None
        arecord = getattr(self.log, "arecord", None)  # a store's: written in its group commit
        write = arecord(self.evaluation_id, pending) if arecord is not None else asyncio.to_thread(
            self.log.record, self.evaluation_id, pending)
        await asyncio.shield(write)
        self._flushed = time.monotonic()


async def _scored(metric: Metric, position: int, example: dict[str, Any], outputs: dict[str, Any],
                  execution_id: str | None, duration_ms: float | None, tokens: int | None) -> RowResult:
    row = RowResult(position=position, example=example, prediction=outputs, execution_id=execution_id,
                    duration_ms=duration_ms, tokens=tokens)
    try:
        row.score = await metric(example, outputs)
    except Exception as exc:  # a metric that raises is this row's error, not the evaluation's end
        row.error = _error_dict(exc)
    return row


async def _run_rows(runner: Runner, program: Program, metric: Metric, dataset_rows: Sequence[dict[str, Any]],
                    inputs: Sequence[str], ids: Sequence[str], concurrency: int, sink: _Rows,
                    on_batch: Callable[[str], Any] | None) -> None:
    """Every row through ``runner.stream`` (a recorded batch with a batch-recording store) under the
    execution id chosen for it up front, scored as it finishes; judges run concurrently with the rest."""
    input_rows = [{k: row[k] for k in inputs if k in row} for row in dataset_rows]
    scoring: set[asyncio.Task[None]] = set()
    limit = asyncio.Semaphore(max(1, concurrency))

    async def score(item: Any) -> None:
        async with limit:
            example = dataset_rows[item.index]
            if item.result is None:
                exc = item.error
                await sink.add(RowResult(position=item.index, example=example,
                                         error=exc.to_dict() if exc is not None else {"type": "StepbridgeError"},
                                         execution_id=ids[item.index]))
                return
            r = item.result
            await sink.add(await _scored(metric, item.index, example, r.outputs, r.execution_id, r.duration_ms,
                                         r.usage.total_tokens))

    async for item in runner.stream(program, input_rows, concurrency=concurrency, on_batch=on_batch,
                                    options=lambda i, _row: RunOptions(execution_id=ids[i])):
        if metric.judge is None:
            await score(item)  # a plain metric is instant: no task per row
        else:
            task = asyncio.ensure_future(score(item))
            scoring.add(task)
            task.add_done_callback(scoring.discard)
    if scoring:
        await asyncio.gather(*scoring)


async def aevaluate(program: Program | str | Path, data: Dataset | str | Path, metric: Any, *,
                    backend: Any = "native", store: Any = None, lm: str | None = None, concurrency: int = 16,
                    timeout: float | None = None, inputs: Sequence[str] | None = None,
                    labels: Sequence[str] | None = None, on_row: Callable[[RowResult], Any] | None = None,
                    on_start: Callable[[str | None, int], Any] | None = None, runner: Runner | None = None,
                    **adapter_options: Any) -> EvaluationResult:
    """Evaluate ``program`` on ``data`` (a :class:`Dataset` or a JSONL/CSV path) with ``metric``.

    With a ``store`` (an :class:`EvaluationStore`, e.g. :class:`stepbridge.storage.Store`) the evaluation and
    each of its rows are recorded; ``on_start(evaluation_id, n)`` is called once they are.
    ``on_row`` sees every scored row.
    """
    from .datasets import load_dataset

    prog = load(program, store=store)
    dataset = data if isinstance(data, Dataset) else load_dataset(data, program=prog, inputs=inputs,
                                                                   labels=labels)
    if not dataset.rows:
        raise InputValidationError(f"{dataset.source}: the dataset has no rows to evaluate")
    check_run_settings(concurrency=concurrency, timeout=timeout)
    own = runner is None
    runner = runner or Runner(backend, store=store, lm=lm, timeout=timeout, **adapter_options)
    try:
        scorer = resolve_metric(metric, runner=runner)
        await check_metric(scorer, prog, dataset)
        await asyncio.to_thread(store_judge, scorer, store)
        await runner.prepare(prog)
        if scorer.judge is not None:
            await runner.prepare(scorer.judge)
        log = _log_for(store)
        evaluation_id = None
        # Each row's execution id is chosen (and stored with the row) before anything runs: a resumer
        # finds the row's run by it, whether the kill came before, during or after the batch was recorded.
        ids = [new_execution_id() for _ in dataset.rows]
        if log is not None:
            evaluation_id = await asyncio.to_thread(log.create, program=prog, backend=runner.backend,
                                                    metric=scorer.spec, lm=lm, dataset=dataset, execution_ids=ids)
        if on_start is not None:
            on_start(evaluation_id, len(dataset))
        sink = _Rows(log, evaluation_id, on_row)

        def batch_recorded(batch_id: str) -> None:
            if log is not None and evaluation_id is not None:
                log.set_batch(evaluation_id, batch_id)

        try:
            await _run_rows(runner, prog, scorer, dataset.rows, dataset.inputs, ids, concurrency, sink,
                            batch_recorded)
        finally:
            await sink.flush()
        summary = summarize(sink.rows, len(dataset))
        if log is not None and evaluation_id is not None:
            await asyncio.to_thread(log.finish, evaluation_id, summary)
        return _result(evaluation_id, prog, runner.backend, scorer.spec, dataset.hash, summary, sink.rows)
    finally:
        if own:
            await runner.aclose()


def _log_for(store: Any) -> EvaluationLog | None:
    if store is None:
        return None
    if hasattr(store, "create") and hasattr(store, "record"):
        return store  # already an evaluation log
    log: EvaluationLog = store.evaluations
    return log


def _result(evaluation_id: str | None, prog: Program, backend: str, metric: str, dataset_hash: str,
            summary: Summary, rows: list[RowResult]) -> EvaluationResult:
    ci = (summary.ci_low, summary.ci_high) if summary.ci_low is not None and summary.ci_high is not None else None
    return EvaluationResult(id=evaluation_id, program=prog.name, program_hash=prog.content_hash, backend=backend,
                            metric=metric, dataset_hash=dataset_hash, n=summary.n, score=summary.score, ci=ci,
                            errors=summary.errors, summary=summary, rows=sorted(rows, key=lambda r: r.position))


def evaluate(program: Program | str | Path, data: Dataset | str | Path, metric: Any, **options: Any
             ) -> EvaluationResult:
    """Blocking :func:`aevaluate`."""
    return _sync(lambda: aevaluate(program, data, metric, **options))


# ------------------------------------------------------------------------------------------------
# resuming
# ------------------------------------------------------------------------------------------------
async def aresume(store: Any, evaluation_id: str, *, backend: Any = None, concurrency: int = 16,
                  on_row: Callable[[RowResult], Any] | None = None,
                  on_start: Callable[[str, int, int], Any] | None = None) -> EvaluationResult:
    """Continue a stored evaluation: rows already scored are kept; a row whose run finished is scored from
    its stored outputs (no LM call); an interrupted run is taken over by its execution id (the store's
    compare-and-set: a run still going elsewhere is waited for, never run twice); the rest run now.

    ``backend``: operator input (anything :class:`Runner` accepts); by default the stored backend name,
    looked up only as a registered adapter name."""
    log = store.evaluations
    ev = log.get(evaluation_id)
    store.mark_interrupted()
    prog = store.load(ev.program_hash)
    adapter = backend if backend is not None else registered_backend(ev.backend)
    rows = log.rows(ev.id)
    done = [r for r in rows if r.done]
    todo = [r for r in rows if not r.done]
    if on_start is not None:
        on_start(ev.id, ev.size, len(done))
    inputs = ev.fields.get("inputs", [])
    async with Runner(adapter, store=store, lm=ev.lm) as runner:
        scorer = stored_metric(ev.metric, store, runner)
        await runner.prepare(prog)
        if scorer.judge is not None:
            await runner.prepare(scorer.judge)
        sink = _Rows(log, ev.id, on_row)
        sink.rows.extend(r.result() for r in done)
        limit = asyncio.Semaphore(max(1, concurrency))

        async def one(row: Any) -> None:
            async with limit:
                example = row.example
                run = await asyncio.to_thread(store.get_execution, row.execution_id) if row.execution_id else None
                if run is not None and (run.id != row.execution_id or run.program_hash != prog.content_hash):
                    # a stored row is untrusted: its execution id may name another program's run (or be a prefix)
                    await sink.add(RowResult(position=row.position, example=example, execution_id=row.execution_id,
                                             error={"type": "StorageError", "message": f"row {row.position}: its "
                                                    f"execution {row.execution_id} is not a run of this program"}))
                    return
                if run is not None and run.status == "succeeded":
                    usage = run.usage or {}
                    await sink.add(await _scored(scorer, row.position, example, run.outputs or {}, run.id,
                                                 run.duration_ms, int(usage.get("total_tokens") or 0)))
                    return
                if run is not None and run.status == "failed":
                    await sink.add(RowResult(position=row.position, example=example, error=run.error,
                                             execution_id=run.id))
                    return
                # Interrupted or pending: taken over by its id (compare-and-set; a run still going in a live
                # process is waited for). Never recorded: started under its id now. Cancelled: a new run.
                eid = row.execution_id if run is None or run.status != "cancelled" else None
                opts = RunOptions(execution_id=eid) if eid else RunOptions()
                row_inputs = {k: example[k] for k in inputs if k in example}
                try:
                    result = await runner.run(prog, row_inputs, opts)
                except StepbridgeError as exc:
                    await sink.add(RowResult(position=row.position, example=example, error=exc.to_dict(),
                                             execution_id=opts.execution_id))
                    return
                await sink.add(await _scored(scorer, row.position, example, result.outputs, result.execution_id,
                                             result.duration_ms, result.usage.total_tokens))

        try:
            await asyncio.gather(*(one(r) for r in todo))
        finally:
            await sink.flush()
        summary = summarize(sink.rows, ev.size)
        await asyncio.to_thread(log.finish, ev.id, summary)
        return _result(ev.id, prog, runner.backend, ev.metric, ev.dataset_hash, summary, sink.rows)


def resume(store: Any, evaluation_id: str, **options: Any) -> EvaluationResult:
    """Blocking :func:`aresume`."""
    return _sync(lambda: aresume(store, evaluation_id, **options))
