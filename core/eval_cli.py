"""``stepbridge eval`` and ``stepbridge evals list|show|resume|compare`` (DESIGN 11).

``eval --json`` prints ``id``, ``program``, ``n``, ``score``, ``ci``, ``errors`` and the summary (stable
keys: the dump of :class:`stepbridge.evaluation.EvaluationResult`). Exit codes as everywhere: 0 ok, 1 a
failure (rows that errored, storage), 2 invalid program, data or metric.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from . import heap
from .errors import ConfigurationError, InputValidationError, ProgramValidationError, StepbridgeError
from .secrets import scrub

__all__ = ["eval_command", "evals_app", "progress_bar"]

evals_app = typer.Typer(help="Stored evaluations: list, show, resume, compare.", no_args_is_help=True)
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: STEPBRIDGE_DATABASE_URL or "
                                                           "the local SQLite file).", envvar="STEPBRIDGE_DATABASE_URL")]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
BackendOption = Annotated[str, typer.Option(help="native, dspy, pool, or package.module:factory.")]
#: bounded: SQLite refuses a LIMIT past 2**63 with a traceback, and a negative one lists everything
LimitOption = Annotated[int, typer.Option(min=1, max=1_000_000, help="At most this many.")]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(scrub(data), ensure_ascii=False, indent=2, default=str) + "\n")


def fail(exc: StepbridgeError, as_json: bool) -> typer.Exit:
    """Print a typed error; the exit code says whether the input was invalid (2) or something failed (1)."""
    invalid = isinstance(exc, ProgramValidationError | InputValidationError | ConfigurationError)
    if as_json:
        print_json({"ok": False, "error": exc.to_dict()})
    else:
        what = "invalid input" if invalid else "error"
        err.print(f"[bold red]{what}[/] ({type(exc).__name__}): {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_INVALID if invalid else EXIT_FAILED)


T = TypeVar("T")


def open_store(db: str | None) -> Any:
    from stepbridge.storage import Store

    return Store(db)


def read_store(db: str | None, as_json: bool, read: Callable[[Any], T]) -> T:
    """``read(store)`` on a store opened for it and closed after; a typed error ends the command."""
    try:
        store = open_store(db)
        try:
            return read(store)
        finally:
            store.close()
    except StepbridgeError as exc:
        raise fail(exc, as_json) from None


def progress_bar(label: str) -> Progress:
    """Rows done of total, rate, elapsed and ETA, errors so far (on stderr: stdout stays machine-readable)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[rate]}"), TextColumn("[red]{task.fields[errors]} errors"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=False)


class _Bar:
    """Feeds a progress bar from ``on_start``/``on_row`` callbacks."""

    def __init__(self, progress: Progress, label: str, as_json: bool):
        self.progress = progress
        self.label = label
        self.as_json = as_json
        self.task: Any = None
        self.errors = 0
        self.rows = 0
        self.started = 0.0

    def start(self, evaluation_id: str | None, total: int, done: int = 0) -> None:
        import time

        if evaluation_id and not self.as_json:
            err.print(f"evaluation {evaluation_id}: {total} row(s) recorded; if this stops early, "
                      f"`stepbridge evals resume {evaluation_id}` continues it", highlight=False, soft_wrap=True)
        self.started = time.monotonic()
        self.task = self.progress.add_task(self.label, total=total, completed=done, errors=0, rate="")

    def row(self, row: Any) -> None:
        import time

        self.rows += 1
        if row.error is not None:
            self.errors += 1
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self.progress.update(self.task, advance=1, errors=self.errors, rate=f"{self.rows / elapsed:.1f} rows/s")


def _print_summary(result: Any) -> None:
    s = result.summary
    score = "-" if s.score is None else f"{s.score:.4f}"
    ci = "" if s.ci_low is None else f" (95% CI {s.ci_low:.4f} .. {s.ci_high:.4f})"
    colour = "green" if not s.errors else "yellow"
    out.print(f"[bold]{escape(result.program)}[/] · {escape(result.metric)} · {escape(result.backend)}: "
              f"score [bold]{score}[/]{ci} over {s.scored} row(s); [{colour}]{s.errors} error(s)[/] of {s.n}",
              highlight=False)
    p50 = "-" if s.p50_ms is None else f"{s.p50_ms:.0f}"
    p95 = "-" if s.p95_ms is None else f"{s.p95_ms:.0f}"
    out.print(f"[dim]{s.tokens} tokens · latency p50 {p50} ms, p95 {p95} ms · evaluation {result.id}[/]",
              highlight=False)


def _report(result: Any, as_json: bool) -> typer.Exit:
    """Print an evaluation's result; exit 1 when rows errored."""
    if as_json:
        print_json(result.model_dump(mode="json"))
    else:
        _print_summary(result)
    return typer.Exit(EXIT_FAILED if result.errors else EXIT_OK)


def eval_command(
    program: Annotated[str, typer.Argument(help="Program file, or a stored NAME[@VERSION|@ALIAS] or hash.")],
    data: Annotated[Path, typer.Option("--data", help="Dataset: a JSONL or CSV file.")],
    metric: Annotated[str, typer.Option("--metric", help="A registered metric NAME[:FIELD] (exact_match, "
                                                         "token_f1, contains, ...) or a judge program file.")],
    backend: BackendOption = "native",
    lm: Annotated[str | None, typer.Option(help="An LM profile name or a model (provider/model).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=10_000, help="Rows run at once.")] = 16,
    timeout: Annotated[float | None, typer.Option(help="Seconds per run.")] = None,
    inputs: Annotated[str | None, typer.Option("--inputs", help="Input fields, comma-separated (default: the "
                                                                "program's signature).")] = None,
    labels: Annotated[str | None, typer.Option("--labels", help="Label fields, comma-separated (default: every "
                                                                "other field).")] = None,
    pool: Annotated[str | None, typer.Option(help="Broker address for --backend pool.")] = None,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Evaluate a program on a dataset with a metric: every row recorded, mean score with a 95% CI."""
    from .cli import check_configuration, check_program_profiles
    from .datasets import load_dataset
    from .evaluation import aevaluate
    from .runner import load

    try:
        check_configuration(lm)  # a typo in the operator's settings stops here, not as one error row per row
        store = open_store(db)
    except StepbridgeError as exc:
        raise fail(exc, as_json) from None
    try:
        store.mark_interrupted()
        prog = load(program, store=store)
        check_program_profiles(prog)
        dataset = load_dataset(data, program=prog, inputs=_names(inputs), labels=_names(labels))
        options: dict[str, Any] = {"address": pool} if pool else {}
        bar = _Bar(progress_bar(prog.name), prog.name, as_json)
        with bar.progress:
            heap.settle()  # a long run keeps its rows: keep full collections off the start-up heap
            result = asyncio.run(aevaluate(prog, dataset, metric, backend=backend, store=store, lm=lm,
                                           concurrency=concurrency, timeout=timeout, on_start=bar.start,
                                           on_row=bar.row, **options))
    except StepbridgeError as exc:
        raise fail(exc, as_json) from None
    finally:
        store.close()
    raise _report(result, as_json)


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text is not None else None


@evals_app.command("list")
def evals_list(db: DbOption = None, limit: LimitOption = 50,
               as_json: JsonOption = False) -> None:
    """Stored evaluations, newest first."""
    from stepbridge.storage.evaluations import Evaluations, Refused

    found = read_store(db, as_json, lambda store: Evaluations(store).recent(limit))
    if as_json:
        print_json([e.model_dump(mode="json") for e in found])
        return
    table = Table("id", "program", "metric", "backend", "rows", "score", "errors", "status", "created")
    for e in found:
        if isinstance(e, Refused):
            table.add_row(escape(e.id[:12]), *refused_cells(7))
            continue
        s = e.summary
        table.add_row(e.id[:12], escape(e.program_name), escape(e.metric), escape(e.backend), f"{e.done}/{e.size}",
                      "-" if s is None or s.score is None else f"{s.score:.4f}", "-" if s is None else str(s.errors),
                      e.status, e.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"))
    out.print(table)
    warn_refused(found, "evals")


def refused_cells(width: int) -> list[str]:
    """A listed row that could not be read: marked in the table, its reason said once below it."""
    return ["[red]malformed[/]", *["-"] * (width - 2), "[red]refused[/]"]


def warn_refused(found: list[Any], what: str) -> None:
    bad = [e for e in found if getattr(e, "malformed", False) is True]
    for e in bad:
        err.print(f"[red]refused[/] {escape(e.id[:64])}: {escape(str(e.error.get('message', ''))[:300])}",
                  highlight=False, soft_wrap=True)
    if bad:
        err.print(f"{len(bad)} stored row(s) could not be read (marked malformed); `stepbridge {what} show ID` "
                  "names the problem", highlight=False)


@evals_app.command("show")
def evals_show(evaluation_id: Annotated[str, typer.Argument(help="Evaluation id (or a unique prefix).")],
               db: DbOption = None, as_json: JsonOption = False,
               rows: Annotated[int, typer.Option(min=0, help="Rows to list (errors and misses first).")] = 20) -> None:
    """One evaluation: its summary and its rows (prediction, score or error, execution id)."""
    from stepbridge.storage.evaluations import Evaluations

    def read(store: Any) -> tuple[Any, list[Any]]:
        log = Evaluations(store)
        ev = log.get(evaluation_id)
        return ev, log.rows(ev.id)

    ev, stored = read_store(db, as_json, read)
    if as_json:
        print_json({**ev.model_dump(mode="json"), "rows": [r.model_dump(mode="json") for r in stored]})
        return
    s = ev.summary
    out.print(f"[bold]evaluation {escape(ev.id)}[/] · {escape(ev.program_name)} "
              f"[dim]{escape(ev.program_hash[:12])}[/] · "
              f"{escape(ev.metric)} · {escape(ev.backend)} · {ev.status} · {ev.done}/{ev.size} rows scored",
              highlight=False)
    out.print(f"[dim]dataset {escape(ev.dataset_source or '-')} {escape(ev.dataset_hash[:12])} · inputs "
              f"{escape(', '.join(ev.fields.get('inputs', [])))} · labels "
              f"{escape(', '.join(ev.fields.get('labels', [])))}[/]", highlight=False)
    if s is not None and s.score is not None:
        out.print(f"score [bold]{s.score:.4f}[/] (95% CI {s.ci_low:.4f} .. {s.ci_high:.4f}) · {s.errors} error(s) · "
                  f"{s.tokens} tokens · p50 {s.p50_ms or 0:.0f} ms · p95 {s.p95_ms or 0:.0f} ms", highlight=False)
    shown: list[Any] = sorted(stored, key=lambda r: (r.error is None, -1 if r.score is None else r.score,
                                                    r.position))
    table = Table("#", "score", "prediction / error", "execution")
    for r in shown[:rows]:
        text = json.dumps(scrub(r.error if r.error is not None else r.prediction), ensure_ascii=False)
        table.add_row(str(r.position), "error" if r.error else ("-" if r.score is None else f"{r.score:.3g}"),
                      escape(text[:100]), (r.execution_id or "-")[:12])
    out.print(table)


@evals_app.command("resume")
def evals_resume(
    evaluation_id: Annotated[str, typer.Argument(help="Evaluation id (or a unique prefix).")],
    backend: Annotated[str | None, typer.Option(help="Adapter to use (default: the recorded backend's registered "
                                                     "name).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=10_000, help="Rows run at once.")] = 16,
    db: DbOption = None, as_json: JsonOption = False,
) -> None:
    """Continue a killed evaluation: finished rows are kept, finished runs are scored from storage, the rest
    run now (interrupted runs taken over by their execution id)."""
    from .evaluation import aresume

    try:
        store = open_store(db)
    except StepbridgeError as exc:
        raise fail(exc, as_json) from None
    try:
        bar = _Bar(progress_bar("resume"), "resume", as_json)
        with bar.progress:
            heap.settle()  # a long run keeps its rows: keep full collections off the start-up heap
            result = asyncio.run(aresume(store, evaluation_id, backend=backend, concurrency=concurrency,
                                         on_row=bar.row, on_start=bar.start))
    except StepbridgeError as exc:
        raise fail(exc, as_json) from None
    finally:
        store.close()
    raise _report(result, as_json)


@evals_app.command("compare")
def evals_compare(a: Annotated[str, typer.Argument(help="Evaluation A (the baseline).")],
                  b: Annotated[str, typer.Argument(help="Evaluation B.")],
                  db: DbOption = None, as_json: JsonOption = False,
                  rows: Annotated[int, typer.Option(min=0, help="Disagreeing rows to list.")] = 20) -> None:
    """B - A on the same rows: mean paired difference with its 95% CI, and the rows that disagree."""
    from stepbridge.storage.evaluations import Evaluations

    from .evaluation import compare

    try:
        store = open_store(db)
        try:
            log = Evaluations(store)
            ea, eb = log.get(a), log.get(b)
            if ea.dataset_hash != eb.dataset_hash:
                raise InputValidationError(f"evaluations {ea.id[:12]} and {eb.id[:12]} are on different data "
                                           f"({ea.dataset_hash[:12]} vs {eb.dataset_hash[:12]}): a paired "
                                           "comparison needs the same rows")
            result = compare(ea.id, [r.result() for r in log.rows(ea.id) if r.done],
                             eb.id, [r.result() for r in log.rows(eb.id) if r.done])
        finally:
            store.close()
    except StepbridgeError as exc:
        raise fail(exc, as_json) from None
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    if result.difference is None:
        out.print("no row was scored by both evaluations")
        return
    out.print(f"A {ea.id[:12]} ({escape(ea.program_name)}, {escape(ea.backend)}): {result.score_a:.4f}   "
              f"B {eb.id[:12]} ({escape(eb.program_name)}, {escape(eb.backend)}): {result.score_b:.4f}",
              highlight=False)
    out.print(f"B - A = [bold]{result.difference:+.4f}[/] (95% CI {result.ci_low:+.4f} .. {result.ci_high:+.4f}) "
              f"over {result.paired} paired row(s); {len(result.disagreements)} row(s) disagree", highlight=False)
    table = Table("#", "A", "B", "A prediction", "B prediction")
    for d in result.disagreements[:rows]:
        def cell(side: dict[str, Any]) -> str:
            return "error" if side["error"] else ("-" if side["score"] is None else f"{side['score']:.3g}")

        table.add_row(str(d["position"]), cell(d["a"]), cell(d["b"]),
                      escape(json.dumps(scrub(d["a"]["prediction"]), ensure_ascii=False)[:60]),
                      escape(json.dumps(scrub(d["b"]["prediction"]), ensure_ascii=False)[:60]))
    out.print(table)
