"""``stepbridge optimize`` and ``stepbridge optimizations list|show|resume`` (DESIGN 11).

``optimize --json`` prints ``id``, ``program`` (name@version of the published result), ``hash``,
``score_before`` and ``score_after`` (the dump of :class:`stepbridge.optimization.OptimizationResult`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from . import heap
from .errors import StepbridgeError
from .eval_cli import (
    BackendOption,
    DbOption,
    JsonOption,
    LimitOption,
    err,
    fail,
    open_store,
    out,
    print_json,
    progress_bar,
    read_store,
    refused_cells,
    warn_refused,
)

__all__ = ["optimizations_app", "optimize_command"]

optimizations_app = typer.Typer(help="Stored optimizations: list, show, resume.", no_args_is_help=True)


class _Bar:
    """One progress task per stage (training examples, then candidates)."""

    def __init__(self, as_json: bool):
        self.progress = progress_bar("optimize")
        self.as_json = as_json
        self.tasks: dict[str, Any] = {}

    def start(self, optimization_id: str | None) -> None:
        if optimization_id and not self.as_json:
            err.print(f"optimization {optimization_id}: recorded; if this stops early, "
                      f"`stepbridge optimizations resume {optimization_id}` continues it", highlight=False,
                      soft_wrap=True)

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, errors=0, rate="")
        self.progress.update(self.tasks[stage], completed=done, total=total)


def _report(result: Any, as_json: bool) -> None:
    if as_json:
        print_json(result.model_dump(mode="json"))
        return

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    out.print(f"published [bold]{escape(result.program)}[/] {result.hash[:12]} (parent {result.parent[:12]}) · "
              f"{result.optimizer} · score {fmt(result.score_before)} -> [bold]{fmt(result.score_after)}[/] · "
              f"{result.candidates} candidate(s) · optimization {result.id}", highlight=False)


def optimize_command(
    program: Annotated[str, typer.Argument(help="Program file, or a stored NAME[@VERSION|@ALIAS] or hash.")],
    optimizer: Annotated[str, typer.Option("--optimizer", help="bootstrap, labeled, random_search, or DSPy's own: "
                                                               "dspy:BootstrapFewShot, dspy:COPRO, dspy:MIPROv2, "
                                                               "dspy:GEPA.")],
    train: Annotated[Path, typer.Option("--train", help="Training data: a JSONL or CSV file.")],
    metric: Annotated[str, typer.Option("--metric", help="A registered metric NAME[:FIELD] or a judge program.")],
    val: Annotated[Path | None, typer.Option("--val", help="Validation data (default: the training data).")] = None,
    max_bootstrapped_demos: Annotated[int, typer.Option(min=0, max=1000)] = 4,
    max_labeled_demos: Annotated[int, typer.Option(min=0, max=1000)] = 16,
    max_rounds: Annotated[int, typer.Option(min=1, max=100)] = 1,
    metric_threshold: Annotated[float | None, typer.Option()] = None,
    max_errors: Annotated[int, typer.Option(min=1, max=1_000_000)] = 10,
    num_candidates: Annotated[int, typer.Option(min=0, max=1000, help="random_search: shuffled bootstraps.")] = 8,
    teacher: Annotated[str | None, typer.Option(help="Teacher program (default: the program itself).")] = None,
    backend: BackendOption = "native",
    lm: Annotated[str | None, typer.Option(help="An LM profile name or a model (provider/model).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=10_000, help="Rows scored at once.")] = 16,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Optimize a program's demos on training data; publish the result as a new version with its lineage."""
    from .cli import check_configuration, check_program_profiles
    from .datasets import load_dataset
    from .optimization import aoptimize, settings_from
    from .runner import load

    try:
        check_configuration(lm)  # a typo in the operator's settings stops here, before any row runs
        store = open_store(db)
    except StepbridgeError as exc:
        raise fail(exc, as_json) from None
    try:
        store.mark_interrupted()
        prog = load(program, store=store)
        check_program_profiles(prog)
        trainset = load_dataset(train, program=prog)
        valset = load_dataset(val, program=prog) if val is not None else None
        settings = settings_from(dict(max_bootstrapped_demos=max_bootstrapped_demos,
                                      max_labeled_demos=max_labeled_demos, max_rounds=max_rounds,
                                      metric_threshold=metric_threshold, max_errors=max_errors,
                                      num_candidates=num_candidates, teacher=teacher))
        bar = _Bar(as_json)
        with bar.progress:
            heap.settle()  # a long run keeps its rows: keep full collections off the start-up heap
            result = asyncio.run(aoptimize(prog, trainset, metric, optimizer=optimizer, val=valset, settings=settings,
                                           backend=backend, store=store, lm=lm, concurrency=concurrency,
                                           on_start=bar.start, on_progress=bar.update))
    except StepbridgeError as exc:
        raise fail(exc, as_json) from None
    finally:
        store.close()
    _report(result, as_json)


@optimizations_app.command("list")
def optimizations_list(db: DbOption = None, limit: LimitOption = 50,
                       as_json: JsonOption = False) -> None:
    """Stored optimizations, newest first."""
    from stepbridge.storage.evaluations import Refused
    from stepbridge.storage.optimizations import Optimizations

    found = read_store(db, as_json, lambda store: Optimizations(store).recent(limit))
    if as_json:
        print_json([o.model_dump(mode="json", exclude=set() if isinstance(o, Refused) else {"data", "checkpoint"})
                    for o in found])
        return
    table = Table("id", "program", "optimizer", "status", "progress", "before", "after", "result")
    for o in found:
        if isinstance(o, Refused):
            table.add_row(escape(o.id[:12]), *refused_cells(7))
            continue
        p = o.progress
        table.add_row(o.id[:12], escape(o.program_name), escape(o.optimizer), o.status,
                      escape(f"{p.get('stage', '-')} {p.get('done', 0)}/{p.get('total', 0)}"[:60]) if p else "-",
                      "-" if o.score_before is None else f"{o.score_before:.4f}",
                      "-" if o.score_after is None else f"{o.score_after:.4f}", escape((o.result_hash or "-")[:12]))
    out.print(table)
    warn_refused(found, "optimizations")


@optimizations_app.command("show")
def optimizations_show(optimization_id: Annotated[str, typer.Argument(help="Optimization id (or a unique prefix).")],
                       db: DbOption = None, as_json: JsonOption = False) -> None:
    """One optimization: settings, progress, every candidate and its score, the result."""
    from stepbridge.storage.optimizations import Optimizations

    def read(store: Any) -> tuple[Any, Any]:
        log = Optimizations(store)
        o = log.get(optimization_id)
        return o, log.candidates(o.id)

    o, candidates = read_store(db, as_json, read)
    if as_json:
        print_json({**o.model_dump(mode="json", exclude={"data"}), "candidates": candidates})
        return
    out.print(f"[bold]optimization {escape(o.id)}[/] · {escape(o.program_name)} "
              f"[dim]{escape(o.program_hash[:12])}[/] · {escape(o.optimizer)} · {o.status} · metric "
              f"{escape(o.metric)} · {escape(o.backend)}", highlight=False)
    val = "" if o.val_hash is None else " · val " + o.val_hash[:12]
    out.print(f"settings {escape(str(o.settings.model_dump(exclude_defaults=True) or '(defaults)'))} · train "
              f"{escape(o.train_hash[:12] + val)} · progress {escape(str(o.progress)[:300])}", highlight=False)
    table = Table("#", "candidate", "score", "demos per module")
    for c in candidates:
        table.add_row(str(c["seq"]), escape(c["label"]), "-" if c["score"] is None else f"{c['score']:.4f}",
                      ", ".join(f"{escape(k)}: {len(v)}" for k, v in (c["modules"] or {}).items()))
    out.print(table)
    if o.result_hash:
        out.print(f"result {escape(o.result_hash[:12])} · score {o.score_before} -> {o.score_after}", highlight=False)
    if o.error:
        err.print(f"[red]failed[/]: {escape(str(o.error.get('message')))}", highlight=False)


@optimizations_app.command("resume")
def optimizations_resume(
    optimization_id: Annotated[str, typer.Argument(help="Optimization id (or a unique prefix).")],
    backend: Annotated[str | None, typer.Option(help="Adapter to use (default: the recorded backend's registered "
                                                     "name).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=10_000)] = 16,
    db: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Continue a killed optimization from its checkpoint (finished examples and candidates are skipped)."""
    from .optimization import aresume

    try:
        store = open_store(db)
    except StepbridgeError as exc:
        raise fail(exc, as_json) from None
    try:
        store.mark_interrupted()
        bar = _Bar(as_json)
        with bar.progress:
            heap.settle()  # a long run keeps its rows: keep full collections off the start-up heap
            result = asyncio.run(aresume(store, optimization_id, backend=backend, concurrency=concurrency,
                                         on_progress=bar.update))
    except StepbridgeError as exc:
        raise fail(exc, as_json) from None
    finally:
        store.close()
    _report(result, as_json)
