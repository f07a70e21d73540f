"""Optimizations: few-shot demos chosen by running the program (DESIGN 11), natively and resumably.

Optimizers:

* ``bootstrap`` — DSPy 3.4.1's ``BootstrapFewShot``, step for step: the teacher (the program, or
  ``teacher``) gets ``max_labeled_demos`` labeled demos per predictor (``LabeledFewShot``: one
  ``random.Random(0)`` sampling each predictor in turn); each training example in order is run through
  the teacher (without itself among the demos; rounds after the first at temperature 1.0) until
  ``max_bootstrapped_demos`` examples passed the metric (``>= metric_threshold`` when one is set); a
  passing run's predictor calls become augmented demos; the examples that were not bootstrapped, shuffled
  with ``random.Random(0)``, fill each predictor up to ``max_labeled_demos``. The same data, order and
  settings give the same demos as DSPy (``tests/evals/test_optimize.py`` runs both).
* ``labeled`` — ``LabeledFewShot(k=max_labeled_demos)``.
* ``random_search`` — ``BootstrapFewShotWithRandomSearch``'s candidates (zero-shot, labeled, bootstrap
  on the data as given, then ``num_candidates`` bootstraps on shuffled data with a random number of
  demos), each scored on the validation set; the best one wins.

An optimization is stored (:mod:`stepbridge.storage.optimizations`): status, progress, every candidate
and its score, and a checkpoint after every bootstrapped example (written in the background, the newest
folded into the next write), so ``aresume`` after a kill skips finished examples and candidates (their LM
calls are not paid again). The result is published as a new program version (source ``optimized``) whose
parent is the original, with the optimizer, its settings, the data hashes and both scores as lineage.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .adapter import RunOptions
from .datasets import Dataset, from_rows, load_dataset
from .errors import InputValidationError, StepbridgeError, StorageError, UnsupportedCapabilityError
from .evaluation import (
    Metric,
    aevaluate,
    as_score,
    check_metric,
    check_run_settings,
    resolve_metric,
    store_judge,
    stored_metric,
)
from .program import ChainOfThoughtModule, LMConfig, PredictModule, Program
from .registry import load_adapter, registered_backend
from .result import StepTrace
from .runner import Runner, _sync, load

__all__ = [
    "OPTIMIZERS",
    "OptimizationLog",
    "OptimizationResult",
    "Settings",
    "abootstrap",
    "aoptimize",
    "aresume",
    "optimize",
    "predictor_names",
    "with_demos",
]

NATIVE = ("bootstrap", "labeled", "random_search")
#: DSPy's own optimizers, run through the dspy adapter (``dspy:NAME``)
DSPY = ("dspy:BootstrapFewShot", "dspy:COPRO", "dspy:MIPROv2", "dspy:GEPA")
OPTIMIZERS = NATIVE + DSPY


class Settings(BaseModel):
    """The optimizer's settings (DSPy's names and defaults)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_bootstrapped_demos: int = Field(default=4, ge=0, le=1000)
    max_labeled_demos: int = Field(default=16, ge=0, le=1000)
    max_rounds: int = Field(default=1, ge=1, le=100)
    metric_threshold: float | None = None
    max_errors: int = Field(default=10, ge=1, le=1_000_000, description="dspy.settings.max_errors")
    num_candidates: int = Field(default=8, ge=0, le=1000, description="random_search: shuffled bootstraps")
    teacher: str | None = Field(default=None, description="a program file or stored reference; default: itself")


def settings_from(value: Settings | dict[str, Any] | None) -> Settings:
    """:class:`Settings` from a dict, each problem an :class:`InputValidationError` naming the setting (a NaN
    threshold, a negative count) rather than a pydantic traceback."""
    if isinstance(value, Settings):
        return value
    try:
        return Settings(**(value or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "settings"
        raise InputValidationError(f"setting {name.replace('_', '-')}: {first['msg']} (got "
                                   f"{str(first.get('input'))[:40]})", field=name) from None
    except TypeError as exc:
        raise InputValidationError(f"settings: {exc}") from None


class OptimizationResult(BaseModel):
    """What ``stepbridge optimize --json`` prints."""

    id: str | None = None
    program: str = Field(description="the published result as name@version (name alone without a store)")
    hash: str
    parent: str
    optimizer: str
    settings: Settings
    score_before: float | None
    score_after: float | None
    train_hash: str
    val_hash: str | None
    candidates: int
    status: str = "completed"
    optimized: Program = Field(exclude=True)


class OptimizationLog(Protocol):
    """Where an optimization is stored (:class:`stepbridge.storage.optimizations.Optimizations`)."""

    def create(self, *, program: Program, optimizer: str, settings: Settings, metric: str, backend: str,
               lm: str | None, train: Dataset, val: Dataset | None) -> str: ...

    def checkpoint(self, optimization_id: str, checkpoint: dict[str, Any], progress: dict[str, Any]) -> None: ...

    def add_candidate(self, optimization_id: str, seq: int, label: str, modules: dict[str, Any],
                      score: float | None, details: dict[str, Any] | None) -> None: ...

    def candidates(self, optimization_id: str) -> list[dict[str, Any]]: ...

    def set_score_before(self, optimization_id: str, score: float | None) -> None: ...

    def finish(self, optimization_id: str, *, result_hash: str, score_after: float | None) -> None: ...

    def failed(self, optimization_id: str, error: dict[str, Any]) -> None: ...


class OptimizationStore(Protocol):
    """What optimizing needs of a store (:class:`stepbridge.storage.Store` is one): its optimization log and
    storing a program (a teacher, a judge) by content hash. Taken, never imported, as the Runner takes a
    Recorder."""

    @property
    def optimizations(self) -> OptimizationLog: ...

    def ensure_stored(self, program: Program) -> None: ...


@runtime_checkable
class DSPyOptimizing(Protocol):
    """What DSPy's own optimizers need of the adapter registered as ``dspy``
    (:class:`stepbridge.adapters.dspy.DSPyAdapter` is it): its LMs and compiling a program."""

    def dspy_lm(self, config: LMConfig) -> tuple[Any, str]: ...

    def dspy_optimize(self, program: Program, trainset: Sequence[dict[str, Any]], metric: Callable[..., Any], *,
                      optimizer: Any, lm: Any, input_keys: Sequence[str] | None = None) -> Program: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------------
# programs and demos
# ------------------------------------------------------------------------------------------------
def predictor_names(program: Program) -> list[str]:
    """The program's predictors (``predict`` and ``chain_of_thought`` modules) in declaration order, as
    DSPy's ``named_predictors`` lists them; anything else with an LM inside cannot be bootstrapped natively."""
    names = []
    for name, module in program.modules.items():
        if isinstance(module, PredictModule | ChainOfThoughtModule):
            names.append(name)
        elif getattr(module, "type", None) not in ("retrieve", "tool"):
            raise UnsupportedCapabilityError(
                f"module {name!r} ({module.type}) cannot be optimized natively: only predict and chain_of_thought "
                "modules carry demos here (optimize a dspy program with a DSPy optimizer instead)")
    if not names:
        raise InputValidationError(f"program {program.name!r} has no predict or chain_of_thought module to optimize")
    return names


def with_demos(program: Program, demos: dict[str, list[dict[str, Any]]]) -> Program:
    """A copy of ``program`` whose named modules have exactly these demos. DSPy's ``augmented`` marker is
    left out: the program format has no such field, and DSPy's adapters format a demo the same without it."""
    modules = dict(program.modules)
    for name, module_demos in demos.items():
        modules[name] = modules[name].model_copy(
            update={"demos": [{k: v for k, v in d.items() if k != "augmented"} for d in module_demos]})
    return program.model_copy(update={"modules": modules})


def _without(demos: list[dict[str, Any]], example: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in demos if d != example]


def _calls(trace: Sequence[StepTrace], predictors: set[str]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(module, inputs, outputs) of every predictor call, in the order they ran (DSPy's ``settings.trace``)."""
    found: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for step in trace:
        if step.kind == "call" and step.module in predictors and step.error is None and isinstance(step.outputs,
                                                                                                    dict):
            found.append((step.module, dict(step.inputs), dict(step.outputs)))
        found.extend(_calls(step.children, predictors))
    return found


def _pick_one(demos: list[dict[str, Any]]) -> dict[str, Any]:
    """Several calls of one predictor in one passing run: DSPy keeps the last or one of the others, 50/50,
    with an rng seeded by the hash of the demos (its ``Hasher``, which needs dspy's own objects): with dspy
    installed the choice is DSPy's, without it the last call is kept."""
    try:
        import dspy
        from dspy.utils.hasher import Hasher
    except ImportError:  # pragma: no cover - dspy is a test dependency
        return demos[-1]
    examples = [dspy.Example(**d) for d in demos]
    rng = random.Random(Hasher.hash(tuple(examples)))
    if rng.random() < 0.5:
        return demos[examples.index(rng.choice(examples[:-1]))]
    return demos[-1]


# ------------------------------------------------------------------------------------------------
# the optimizers
# ------------------------------------------------------------------------------------------------
class _Checkpoints:
    """A bootstrap's checkpoints, written one at a time in the background: examples go on being taken while
    one is written, and those checkpointed meanwhile are folded into the next write (each holds the whole
    state, so only the newest counts). What is stored is always the state after some example, never a mix."""

    def __init__(self, log: OptimizationLog, optimization_id: str):
        self.log = log
        self.id = optimization_id
        self.pending: tuple[dict[str, Any], dict[str, Any]] | None = None
        self.writer: asyncio.Task[None] | None = None

    def put(self, checkpoint: dict[str, Any], progress: dict[str, Any]) -> None:
        """Write ``checkpoint`` (a copy the caller no longer changes) soon; a failed earlier write raises here."""
        self.pending = (checkpoint, progress)
        if self.writer is None or self.writer.done():
            if self.writer is not None:
                self.writer.result()
            self.writer = asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        while self.pending is not None:
            checkpoint, progress = self.pending
            self.pending = None
            await asyncio.to_thread(self.log.checkpoint, self.id, checkpoint, progress)

    async def flush(self) -> None:
        """Wait for the newest checkpoint to be stored (even if the bootstrap is being cancelled)."""
        if self.writer is not None:
            await asyncio.shield(self.writer)


def _snapshot(state: dict[str, Any]) -> dict[str, Any]:
    """A bootstrap state as it is now: its lists copied (the loop appends to them while it is written)."""
    return {**state, "bootstrapped": list(state["bootstrapped"]),
            "traces": {name: list(found) for name, found in state["traces"].items()}}


class _Job:
    """One optimization's state: the runner, data, metric, log and checkpoint."""

    def __init__(self, runner: Runner, program: Program, teacher: Program, train: Dataset, val: Dataset,
                 metric: Metric, settings: Settings, concurrency: int, log: OptimizationLog | None,
                 optimization_id: str | None, on_progress: Callable[[str, int, int], Any] | None):
        self.runner = runner
        self.program = program
        self.teacher = teacher
        self.train = train
        self.val = val
        self.metric = metric
        self.settings = settings
        self.concurrency = concurrency
        self.log = log
        self.id = optimization_id
        self.on_progress = on_progress
        self.predictors = predictor_names(program)
        if predictor_names(teacher) != self.predictors:
            raise InputValidationError("the teacher must have the same predictors as the student, in the same order")

    def progress(self, stage: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, done, total)

    def checkpoints(self) -> _Checkpoints | None:
        return _Checkpoints(self.log, self.id) if self.log is not None and self.id is not None else None

    def labeled(self, rows: list[dict[str, Any]], k: int) -> dict[str, list[dict[str, Any]]]:
        """``LabeledFewShot(k).compile``: one ``Random(0)`` sampling every predictor in turn."""
        if not rows:
            return {name: [] for name in self.predictors}
        rng = random.Random(0)
        return {name: rng.sample(rows, min(k, len(rows))) for name in self.predictors}

    async def bootstrap(self, trainset: list[dict[str, Any]], max_bootstrapped: int, key: str,
                        saved: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
        """``BootstrapFewShot.compile`` on ``trainset``; checkpointed under ``key`` after every example."""
        s = self.settings
        teacher_demos = ({name: list(getattr(self.teacher.modules[name], "demos", [])) for name in self.predictors}
                         if not s.max_labeled_demos else self.labeled(trainset, s.max_labeled_demos))
        state = saved or {"next": 0, "bootstrapped": [], "traces": {n: [] for n in self.predictors}, "errors": 0,
                          "attempts": 0}
        teacher_demos = state.get("teacher_demos") or teacher_demos
        wanted = set(self.predictors)
        current = {"demos": teacher_demos}
        # the teacher with the current demos, built (hashed, planned) once and not per attempt: most examples
        # are not among the demos, so most attempts run exactly this program
        built: list[Any] = [None, None]

        def teacher_with(demos: dict[str, list[dict[str, Any]]]) -> Program:
            if built[0] is not demos:
                built[:] = [demos, with_demos(self.teacher, demos)]
            program: Program = built[1]
            return program

        async def attempt(example: dict[str, Any], round_idx: int, demos: dict[str, list[dict[str, Any]]]
                          ) -> tuple[Any, BaseException | None, dict[str, list[dict[str, Any]]]]:
            """One teacher run without ``example`` among its demos, and the metric on it."""
            reduced = {n: _without(d, example) for n, d in demos.items()}
            if all(len(reduced[n]) == len(d) for n, d in demos.items()):
                reduced = demos
            inputs = {k: example[k] for k in self.train.inputs if k in example}
            options = RunOptions(lm=LMConfig(temperature=1.0), cache=False) if round_idx > 0 else RunOptions()
            try:
                program = teacher_with(demos) if reduced is demos else with_demos(self.teacher, reduced)
                result = await self.runner.run(program, inputs, options)
                value = await self.metric(example, result.outputs)
                passed = value >= s.metric_threshold if s.metric_threshold else bool(value)
            except Exception as exc:  # the run or the metric: DSPy counts both, up to max_errors
                return None, exc, reduced
            return (result if passed else None), None, reduced

        async def rounds(example: dict[str, Any], demos: dict[str, list[dict[str, Any]]]) -> list[Any]:
            """An example's rounds until one passes or raises (after an error the demos change: the rounds
            left are made when its turn comes)."""
            outcomes = []
            for round_idx in range(s.max_rounds):
                outcomes.append(await attempt(example, round_idx, demos))
                if outcomes[-1][0] is not None or outcomes[-1][1] is not None:
                    break
            return outcomes

        # DSPy tries one example at a time; here the rounds of the next examples (as many as are likely needed,
        # at most ``concurrency``) run ahead. Their outcomes are still taken strictly in order, so the demos are
        # the same; a run made with demos that an error has since changed is made again.
        ahead: dict[int, asyncio.Task[Any]] = {}

        # Each round of runs ahead costs an LM latency. The first window is sized so that it usually suffices
        # (for the demos missing at a guessed pass rate of 2/3 per round: 1.5x them with one round); later ones
        # from the pass rate so far, which starts optimistic (two passes of two seen) so that one early failure
        # does not double the window. At most ``concurrency`` are in flight.
        first: list[float] = [1 - (1 / 3) ** s.max_rounds]

        def launch(upto: int) -> None:
            missing = max_bootstrapped - len(state["bootstrapped"])
            rate = first.pop() if first else (len(state["bootstrapped"]) + 2) / (upto + 2)
            window = min(self.concurrency, math.ceil(missing / rate))
            for j in range(upto, min(upto + max(1, window), len(trainset))):
                if j not in ahead:
                    ahead[j] = asyncio.ensure_future(rounds(trainset[j], current["demos"]))

        def drop_ahead() -> None:
            for task in ahead.values():
                task.cancel()
            ahead.clear()

        checkpoints = self.checkpoints()
        try:
            for index in range(state["next"], len(trainset)):
                if len(state["bootstrapped"]) >= max_bootstrapped:
                    break
                launch(index)
                example = trainset[index]
                outcomes = await ahead.pop(index)
                for round_idx in range(s.max_rounds):
                    state["attempts"] += 1
                    if round_idx < len(outcomes):
                        passed_run, error, reduced = outcomes[round_idx]
                    else:
                        passed_run, error, reduced = await attempt(example, round_idx, current["demos"])
                    if error is not None:
                        state["errors"] += 1
                        # DSPy restores the teacher's demos only after a run that did not raise: as it does,
                        # the example stays out of them from here on
                        current["demos"] = reduced
                        state["teacher_demos"] = reduced
                        drop_ahead()
                        if state["errors"] >= s.max_errors:
                            why = str(error) if isinstance(error, StepbridgeError) else \
                                f"{type(error).__name__}: {error}"
                            raise StepbridgeError(f"bootstrapping stopped after {state['errors']} errors "
                                                  f"(max_errors); the last: {why}") from error
                    if passed_run is not None:
                        per: dict[str, list[dict[str, Any]]] = {}
                        for name, call_inputs, call_outputs in _calls(passed_run.trace, wanted):
                            per.setdefault(name, []).append({"augmented": True, **call_inputs, **call_outputs})
                        for name, found in per.items():
                            state["traces"][name].append(_pick_one(found) if len(found) > 1 else found[0])
                        state["bootstrapped"].append(index)
                        break
                state["next"] = index + 1
                if checkpoints is not None:
                    checkpoints.put({key: _snapshot(state)}, {"stage": key, "done": index + 1, "total": len(trainset),
                                                              "bootstrapped": len(state["bootstrapped"])})
                self.progress(key, index + 1, len(trainset))
        finally:
            drop_ahead()
            if checkpoints is not None:
                await checkpoints.flush()
        # the examples not bootstrapped, shuffled, fill up to max_labeled_demos
        taken = set(state["bootstrapped"])
        validation = [x for i, x in enumerate(trainset) if i not in taken]
        random.Random(0).shuffle(validation)
        rng = random.Random(0)
        demos: dict[str, list[dict[str, Any]]] = {}
        for name in self.predictors:
            augmented = state["traces"][name][:s.max_bootstrapped_demos]
            size = max(0, min(s.max_labeled_demos - len(augmented), len(validation)))
            demos[name] = augmented + rng.sample(validation, size)
        return demos

    async def score(self, program: Program) -> float | None:
        if not self.val.rows:
            return None
        result = await aevaluate(program, self.val, self.metric, runner=self.runner, concurrency=self.concurrency)
        return result.score


async def _run(job: _Job, optimizer: str, checkpoint: dict[str, Any]) -> tuple[Program, int]:
    """Run ``optimizer`` from ``checkpoint``; the optimized program and how many candidates were tried."""
    s = job.settings
    if optimizer in DSPY:
        return await _run_dspy(job, optimizer), 1
    if optimizer == "labeled":
        demos = job.labeled(list(job.train.rows), s.max_labeled_demos)
        candidate = with_demos(job.program, demos)
        await _candidate(job, 0, "labeled", demos, None)
        return candidate, 1
    if optimizer == "bootstrap":
        demos = await job.bootstrap(list(job.train.rows), s.max_bootstrapped_demos, "bootstrap",
                                    checkpoint.get("bootstrap"))
        await _candidate(job, 0, "bootstrap", demos, None)
        return with_demos(job.program, demos), 1
    # random_search: BootstrapFewShotWithRandomSearch's seeds -3 (zero-shot), -2 (labeled), -1 (bootstrap as
    # given), then shuffled bootstraps with a random number of demos; every candidate scored on val
    done = {c["seq"]: c for c in (checkpoint.get("candidates") or [])}
    best: tuple[float, int, dict[str, list[dict[str, Any]]]] | None = None
    total = 3 + s.num_candidates
    for seq, seed in enumerate(range(-3, s.num_candidates)):
        if seq in done:
            demos, score = done[seq]["modules"], done[seq]["score"]
        else:
            if seed == -3:
                demos = {n: [] for n in job.predictors}
            elif seed == -2:
                demos = job.labeled(list(job.train.rows), s.max_labeled_demos)
            else:
                trainset = list(job.train.rows)
                size = s.max_bootstrapped_demos
                if seed >= 0:
                    random.Random(seed).shuffle(trainset)
                    size = random.Random(seed).randint(1, max(1, s.max_bootstrapped_demos))
                demos = await job.bootstrap(trainset, size, f"seed{seed}", checkpoint.get(f"seed{seed}"))
            score = await job.score(with_demos(job.program, demos))
            await _candidate(job, seq, f"seed {seed}", demos, score)
        job.progress("candidates", seq + 1, total)
        if score is not None and (best is None or score > best[0]):
            best = (score, seq, demos)
    chosen = best[2] if best is not None else {n: [] for n in job.predictors}
    return with_demos(job.program, chosen), total


def _dspy_metric(metric: Metric) -> Callable[..., Any]:
    """The metric as DSPy calls it: ``(example, prediction, trace=None, *more)`` on DSPy objects."""
    if metric.judge is not None:
        raise UnsupportedCapabilityError("a judge program cannot be the metric of a DSPy optimizer: DSPy calls "
                                         "metrics synchronously in its own threads")
    from .registry import metric as registered
    from .registry import metrics

    name, _, field = metric.spec.partition(":")
    if name not in metrics:
        raise UnsupportedCapabilityError(f"metric {metric.spec!r} is not a registered metric: DSPy optimizers take "
                                         "registered metrics (NAME[:FIELD])")
    func = registered(name, field or None)

    def call(example: Any, prediction: Any, trace: Any = None, *more: Any) -> float:
        return as_score(func(example.toDict(), dict(prediction)), metric.spec)

    return call


def _dspy_optimizer(optimizer: str, metric: Callable[..., Any], s: Settings, concurrency: int, lm: Any) -> Any:
    import dspy

    kind = optimizer.removeprefix("dspy:")
    if kind == "BootstrapFewShot":
        return dspy.BootstrapFewShot(metric=metric, metric_threshold=s.metric_threshold,
                                     max_bootstrapped_demos=s.max_bootstrapped_demos,
                                     max_labeled_demos=s.max_labeled_demos, max_rounds=s.max_rounds,
                                     max_errors=s.max_errors)
    if kind == "COPRO":
        return dspy.COPRO(metric=metric, breadth=max(2, s.num_candidates), depth=s.max_rounds,
                          track_stats=False)
    if kind == "MIPROv2":
        return dspy.MIPROv2(metric=metric, prompt_model=lm, task_model=lm,
                            max_bootstrapped_demos=s.max_bootstrapped_demos, max_labeled_demos=s.max_labeled_demos,
                            auto="light", num_threads=concurrency, max_errors=s.max_errors,
                            metric_threshold=s.metric_threshold, track_stats=False)

    def feedback(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> float:
        return metric(gold, pred, trace)

    return dspy.GEPA(metric=feedback, auto="light", reflection_lm=lm, num_threads=concurrency)


async def _run_dspy(job: _Job, optimizer: str) -> Program:
    """DSPy's own optimizer on the program as a real ``dspy.Module`` (the dspy adapter); its demos and
    instructions come back into a program. DSPy keeps no checkpoint: a resumed one starts over."""
    metric = _dspy_metric(job.metric)

    def run() -> Program:
        adapter = load_adapter("dspy")  # the registered adapter (an entry point): the core imports none
        if not isinstance(adapter, DSPyOptimizing):
            raise UnsupportedCapabilityError(f"{optimizer} needs the adapter registered as 'dspy' to run DSPy's "
                                             "optimizers (install stepbridge[dspy])", adapter="dspy")
        try:
            lm, _ = adapter.dspy_lm(job.program.lm or LMConfig())
            teleprompter = _dspy_optimizer(optimizer, metric, job.settings, job.concurrency, lm)
            return adapter.dspy_optimize(job.program, job.train.rows, metric, optimizer=teleprompter, lm=lm,
                                         input_keys=job.train.inputs)
        finally:
            adapter.close()

    try:
        optimized = await asyncio.to_thread(run)
    except StepbridgeError:
        raise
    except Exception as exc:  # DSPy's own failure: typed, with what to do
        raise StepbridgeError(f"{optimizer} failed: {type(exc).__name__}: {exc}") from exc
    demos = {n: list(getattr(optimized.modules[n], "demos", [])) for n in job.predictors}
    await _candidate(job, 0, optimizer, demos, None)
    return optimized


async def _candidate(job: _Job, seq: int, label: str, demos: dict[str, list[dict[str, Any]]],
                     score: float | None) -> None:
    if job.log is not None and job.id is not None:
        await asyncio.to_thread(job.log.add_candidate, job.id, seq, label, demos, score, None)


def _lineage(optimizer: str, settings: Settings, metric: str, train: Dataset, val: Dataset | None,
             before: float | None, after: float | None, optimization_id: str | None) -> str:
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    changed = settings.model_dump(exclude_defaults=True)
    return (f"optimized with {optimizer} {changed or '(defaults)'}, metric {metric}; train {train.hash[:12]}"
            f"{'' if val is None else ', val ' + val.hash[:12]}; score {fmt(before)} -> {fmt(after)}"
            f"{'' if optimization_id is None else '; optimization ' + optimization_id}")


async def _finish(job: _Job, optimizer: str, store: Any, val: Dataset | None, before: float | None,
                  optimized: Program, candidates: int) -> OptimizationResult:
    from .loader import load_program

    optimized = load_program(optimized.to_dict(), base_dir=job.program.base_dir)  # validated like a file
    after = await job.score(optimized)
    ref, digest = optimized.name, optimized.content_hash
    if store is not None:
        message = _lineage(optimizer, job.settings, job.metric.spec, job.train, val, before, after, job.id)
        # an optimization that changed nothing publishes the original: never as its own parent
        parent = job.program.content_hash if optimized.content_hash != job.program.content_hash else None
        version = await asyncio.to_thread(store.publish, optimized, source="optimized", message=message,
                                          parent=parent)
        ref, digest = version.ref, version.hash
    if job.log is not None and job.id is not None:
        await asyncio.to_thread(job.log.finish, job.id, result_hash=digest, score_after=after)
    return OptimizationResult(id=job.id, program=ref, hash=digest, parent=job.program.content_hash,
                              optimizer=optimizer, settings=job.settings, score_before=before, score_after=after,
                              train_hash=job.train.hash, val_hash=val.hash if val is not None else None,
                              candidates=candidates, optimized=optimized)


async def abootstrap(program: Program, train: Dataset, metric: Any, *, runner: Runner,
                     settings: Settings | dict[str, Any] | None = None, concurrency: int = 16) -> Program:
    """Only ``BootstrapFewShot.compile``: ``program`` with bootstrapped demos (nothing scored or stored)."""
    conf = settings_from(settings)
    teacher = load(conf.teacher) if conf.teacher else program
    job = _Job(runner, program, teacher, train, train, resolve_metric(metric, runner=runner), conf, concurrency,
               None, None, None)
    demos = await job.bootstrap(list(train.rows), conf.max_bootstrapped_demos, "bootstrap", None)
    return with_demos(program, demos)


def _log_for(store: Any) -> OptimizationLog | None:
    if store is None:
        return None
    log: OptimizationLog = store.optimizations
    return log


async def aoptimize(program: Program | str | Path, train: Dataset | str | Path, metric: Any, *,
                    optimizer: str = "bootstrap", val: Dataset | str | Path | None = None,
                    settings: Settings | dict[str, Any] | None = None, backend: Any = "native", store: Any = None,
                    lm: str | None = None, concurrency: int = 16, timeout: float | None = None,
                    on_start: Callable[[str | None], Any] | None = None,
                    on_progress: Callable[[str, int, int], Any] | None = None,
                    **adapter_options: Any) -> OptimizationResult:
    """Optimize ``program``'s demos on ``train`` (scored on ``val``, or on ``train`` without one) and, with a
    ``store``, publish the result as a new version with its lineage."""
    if optimizer not in OPTIMIZERS:
        raise InputValidationError(f"unknown optimizer {optimizer!r} (one of: {', '.join(OPTIMIZERS)})")
    conf = settings_from(settings)
    check_run_settings(concurrency=concurrency, timeout=timeout)
    prog = load(program, store=store)
    trainset = train if isinstance(train, Dataset) else load_dataset(train, program=prog)
    valset = val if isinstance(val, Dataset) or val is None else load_dataset(val, program=prog)
    for name, dataset in (("training", trainset), ("validation", valset)):
        if dataset is not None and not dataset.rows:  # nothing to learn from or to score on: refused, not published
            raise InputValidationError(f"{dataset.source}: the {name} data has no rows")
    teacher = load(conf.teacher, store=store) if conf.teacher else prog
    async with Runner(backend, store=store, lm=lm, timeout=timeout, **adapter_options) as recorded:
        # teacher runs and candidate scores are not recorded (the checkpoint keeps what they found);
        # the same adapter serves both
        runner = Runner(recorded.adapter, lm=lm, timeout=timeout)
        scorer = resolve_metric(metric, runner=runner)
        for dataset in (trainset, valset):
            if dataset is not None:
                await check_metric(scorer, prog, dataset)
        # what would fail once recorded is refused before: a program without predictors, a teacher unlike the
        # student, a judge (or an unregistered metric) for a DSPy optimizer
        _Job(runner, prog, teacher, trainset, valset or trainset, scorer, conf, concurrency, None, None, None)
        if optimizer in DSPY:
            _dspy_metric(scorer)
        log = _log_for(store)
        if store is not None:  # what a resume needs is kept in the store by hash, never as a path
            await asyncio.to_thread(store_judge, scorer, store)
            if conf.teacher:
                await asyncio.to_thread(store.ensure_stored, teacher)
                conf = conf.model_copy(update={"teacher": teacher.content_hash})
        oid = None
        if log is not None:
            oid = await asyncio.to_thread(log.create, program=prog, optimizer=optimizer, settings=conf,
                                          metric=scorer.spec, backend=recorded.backend, lm=lm, train=trainset,
                                          val=valset)
        if on_start is not None:
            on_start(oid)
        job = _Job(runner, prog, teacher, trainset, valset or trainset, scorer, conf, concurrency, log, oid,
                   on_progress)
        try:
            before = await job.score(prog)
            if log is not None and oid is not None:
                await asyncio.to_thread(log.set_score_before, oid, before)
            optimized, candidates = await _run(job, optimizer, {})
            return await _finish(job, optimizer, store, valset, before, optimized, candidates)
        except StepbridgeError as exc:
            if log is not None and oid is not None:
                await asyncio.to_thread(log.failed, oid, exc.to_dict())
            raise


async def aresume(store: Any, optimization_id: str, *, backend: Any = None, concurrency: int = 16,
                  on_progress: Callable[[str, int, int], Any] | None = None) -> OptimizationResult:
    """Continue a stored optimization from its checkpoint: finished examples and candidates are skipped."""
    log = store.optimizations
    row = log.get(optimization_id)
    if row.status == "completed" and row.result_hash is not None:
        raise InputValidationError(f"optimization {row.id} is already completed (result {row.result_hash[:12]})")
    prog = store.load(row.program_hash)
    conf = row.settings
    teacher = store.load(conf.teacher) if conf.teacher else prog
    trainset = from_rows(row.data["train"], inputs=row.data["inputs"], labels=row.data["labels"], source="train")
    valset = (from_rows(row.data["val"], inputs=row.data["inputs"], labels=row.data["labels"], source="val")
              if row.data.get("val") is not None else None)
    if trainset.hash != row.train_hash or (valset.hash if valset is not None else None) != row.val_hash:
        raise StorageError(f"optimization {row.id}: the stored training or validation rows do not match their "
                           "recorded content hash; the row is refused (start a new optimization)")
    adapter = backend if backend is not None else registered_backend(row.backend)
    async with Runner(adapter, store=store, lm=row.lm) as recorded:
        runner = Runner(recorded.adapter, lm=row.lm)
        scorer = stored_metric(row.metric, store, runner)
        job = _Job(runner, prog, teacher, trainset, valset or trainset, scorer, conf, concurrency, log, row.id,
                   on_progress)
        checkpoint = _checked_checkpoint(dict(row.checkpoint or {}), log.candidates(row.id), job.predictors, row.id)
        try:
            before = row.score_before
            if before is None:
                before = await job.score(prog)
                await asyncio.to_thread(log.set_score_before, row.id, before)
            optimized, candidates = await _run(job, row.optimizer, checkpoint)
            return await _finish(job, row.optimizer, store, valset, before, optimized, candidates)
        except StepbridgeError as exc:
            await asyncio.to_thread(log.failed, row.id, exc.to_dict())
            raise


class _BootstrapState(BaseModel):
    """A bootstrap checkpoint as :meth:`_Job.bootstrap` saves it."""

    model_config = ConfigDict(extra="forbid")

    next: int = Field(ge=0)
    bootstrapped: list[int]
    traces: dict[str, list[dict[str, Any]]]
    errors: int = Field(ge=0)
    attempts: int = Field(ge=0)
    teacher_demos: dict[str, list[dict[str, Any]]] | None = None


def _checked_checkpoint(checkpoint: dict[str, Any], candidates: list[dict[str, Any]], predictors: list[str],
                        optimization_id: str) -> dict[str, Any]:
    """A stored checkpoint and candidates, refused (a :class:`StorageError`) unless they have the shapes the
    optimizer wrote and name only the program's predictors: a stored row is untrusted, and a tampered one
    must not end a resume in a traceback."""
    names = set(predictors)

    def refuse(what: str) -> StorageError:
        return StorageError(f"optimization {optimization_id}: the stored {what} is malformed; the row is refused "
                            "(start a new optimization)")

    checked: dict[str, Any] = {}
    for key, saved in checkpoint.items():
        if key != "bootstrap" and not (key.startswith("seed") and key[4:].lstrip("-").isdigit()):
            raise refuse(f"checkpoint key {key[:40]!r}")
        try:
            state = _BootstrapState.model_validate(saved)
        except ValidationError:
            raise refuse(f"checkpoint {key!r}") from None
        if set(state.traces) != names or not set(state.teacher_demos or {}) <= names:
            raise refuse(f"checkpoint {key!r} (its modules are not the program's predictors)")
        taken = state.bootstrapped  # the loop appends each example's index once, in order, below next
        if any(i < 0 or i >= state.next for i in taken) or any(a >= b for a, b in itertools.pairwise(taken)):
            raise refuse(f"checkpoint {key!r} (its bootstrapped examples are not distinct indexes, in order, "
                         "below next)")
        checked[key] = state.model_dump(exclude_none=True)
    for c in candidates:
        if not set(c["modules"]) <= names:
            raise refuse(f"candidate {c['seq']} (its modules are not the program's predictors)")
    checked["candidates"] = candidates
    return checked


def optimize(program: Program | str | Path, train: Dataset | str | Path, metric: Any, **options: Any
             ) -> OptimizationResult:
    """Blocking :func:`aoptimize`."""
    return _sync(lambda: aoptimize(program, train, metric, **options))


def resume(store: Any, optimization_id: str, **options: Any) -> OptimizationResult:
    """Blocking :func:`aresume`."""
    return _sync(lambda: aresume(store, optimization_id, **options))
