"""``stepbridge programs|executions|db``: typer sub-apps mounted by the main CLI.

``--json`` output is the pydantic dump of the same models the Python API returns (stable keys).
Exit codes follow the main CLI: 0 ok, 1 failure (not found, storage error), 2 invalid program.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree
from stepbridge.errors import (
    ConfigurationError,
    ExecutionNotFound,
    InputValidationError,
    ProgramNotFound,
    ProgramValidationError,
    StepbridgeError,
    StorageError,
    did_you_mean,
)

if TYPE_CHECKING:  # the database stack loads when a command opens the store, not when the CLI starts
    from .models import Batch, Execution
    from .store import Store

__all__ = ["batches_app", "db_app", "executions_app", "programs_app", "render_execution"]

programs_app = typer.Typer(help="Stored programs: versions, aliases, history.", no_args_is_help=True)
executions_app = typer.Typer(help="Recorded executions and their traces.", no_args_is_help=True)
batches_app = typer.Typer(help="Recorded batches (run --inputs): progress and results in input order.",
                          no_args_is_help=True)
db_app = typer.Typer(help="The stepbridge database.", no_args_is_help=True)

out = Console(emoji=False)
err = Console(stderr=True, emoji=False)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: STEPBRIDGE_DATABASE_URL or the local SQLite file).",
                 envvar="STEPBRIDGE_DATABASE_URL"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


@contextmanager
def _store(db: str | None, as_json: bool = False) -> Iterator[Store]:
    """Open the store; turn stepbridge errors (raised while it is open, too) into a message and an exit code:
    2 for invalid input, 1 otherwise."""
    from .store import Store

    try:
        store = Store(db)
    except StepbridgeError as exc:
        _fail(exc, 1, as_json)
    try:
        yield store
    except StepbridgeError as exc:
        invalid = isinstance(exc, ProgramValidationError | InputValidationError | ConfigurationError)
        _fail(exc, 2 if invalid else 1, as_json)
    finally:
        store.close()


def _fail(exc: StepbridgeError, code: int = 2, as_json: bool = False) -> NoReturn:
    """Say what went wrong (``{"ok": false, "error": ...}`` under ``--json``, as every command does) and exit."""
    if as_json:
        _print_json({"ok": False, "error": exc.to_dict()})
    elif isinstance(exc, ProgramValidationError):
        err.print(f"[bold red]invalid program[/]: {escape(str(exc))}", highlight=False)
    else:
        err.print(f"[bold red]error[/] ({type(exc).__name__}): {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


MIN_PREFIX = 6  # the store matches id prefixes of at least this many characters


def _check_prefix(given: str, what: str) -> None:
    """A shorter prefix than the store matches is "too short", not "no such id"."""
    if len(given) < MIN_PREFIX:
        raise ConfigurationError(f"{what} id prefix {given!r} is too short: give at least {MIN_PREFIX} characters "
                                 f"(`stepbridge {what}s list` shows ids)", where="ID")


def _when(dt: datetime | None, *, short: bool = False) -> str:
    if dt is None:
        return "-"
    local = dt.astimezone()
    if short:  # a table column: the time today, the date otherwise
        return local.strftime("%H:%M:%S" if local.date() == datetime.now().date() else "%Y-%m-%d")
    return local.strftime("%Y-%m-%d %H:%M:%S")


# ------------------------------------------------------------------------------------------------
# programs
# ------------------------------------------------------------------------------------------------
def _load_file(path: Path) -> Any:
    from stepbridge.loader import load_program

    return load_program(path)


@programs_app.command("add")
def programs_add(
    file: Annotated[Path, typer.Argument(help="Program file (YAML or JSON).")],
    alias: Annotated[list[str] | None, typer.Option("--alias", "-a", help="Also point NAME@ALIAS here.")] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="What changed.")] = None,
    source: Annotated[str, typer.Option(help="authored | imported | optimized")] = "authored",
    parent: Annotated[str | None, typer.Option(help="Version this derives from (default: latest).")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Validate a program file and store it as the next version of its name (same content: no-op)."""
    with _store(db, as_json) as store:
        program = _load_file(file)
        before = {v.hash for v in store.history(program.name)}
        version = store.publish(program, source=source, message=message, parent=parent)
        for a in alias or []:
            version = store.set_alias(program.name, a, version.hash)
        if as_json:
            _print_json({"created": version.hash not in before, **version.model_dump(mode="json")})
            return
        verb = "stored" if version.hash not in before else "already stored as"
        extra = f" (aliases: {', '.join(version.aliases)})" if version.aliases else ""
        out.print(f"{verb} [bold]{version.ref}[/] {version.short_hash}{extra}", highlight=False)


@programs_app.command("list")
def programs_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every stored program with its latest version and aliases."""
    with _store(db, as_json) as store:
        rows = store.list_programs()
        if as_json:
            _print_json([r.model_dump(mode="json") for r in rows])
            return
        table = Table("name", "versions", "latest", "hash", "aliases", "updated")
        for r in rows:
            names = ", ".join(f"{a}→{_version_of(store, h)}" for a, h in r.aliases.items())
            table.add_row(r.name, str(r.versions), str(r.latest_version or "-"), (r.latest_hash or "")[:12],
                          names, _when(r.updated_at))
        out.print(table)


def _version_of(store: Store, digest: str) -> str:
    version = store.resolve(digest)
    return f"@{version.version}" if version.version is not None else version.short_hash


@programs_app.command("show")
def programs_show(ref: Annotated[str, typer.Argument(help="hash, NAME, NAME@N or NAME@ALIAS")],
                  db: DbOption = None, as_json: JsonOption = False) -> None:
    """A version's metadata and its program (verified against its hash)."""
    with _store(db, as_json) as store:
        version = store.resolve(ref)
        data = store.export(version.hash)
        if as_json:
            _print_json({**version.model_dump(mode="json"), "program": data})
            return
        out.print(f"[bold]{version.ref}[/]  {version.hash}", highlight=False)
        out.print(f"source: {version.source}   created: {_when(version.created_at)}", highlight=False)
        if version.parent:
            out.print(f"parent: {version.parent}", highlight=False)
        if version.aliases:
            out.print(f"aliases: {', '.join(version.aliases)}", highlight=False)
        if version.message:
            out.print(f"message: {version.message}", highlight=False)
        import yaml

        out.print(Syntax(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100), "yaml"))


@programs_app.command("history")
def programs_history(name: str, db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every version of NAME, oldest first."""
    with _store(db, as_json) as store:
        versions = store.history(name)
        if not versions:
            raise ProgramNotFound(f"no program named {name!r} (see `stepbridge programs list`)")
        if as_json:
            _print_json([v.model_dump(mode="json") for v in versions])
            return
        table = Table("version", "hash", "source", "parent", "aliases", "created", "message")
        for v in versions:
            table.add_row(str(v.version), v.short_hash, v.source, (v.parent or "")[:12], ", ".join(v.aliases),
                          _when(v.created_at), v.message or "")
        out.print(table)


@programs_app.command("export")
def programs_export(
    ref: str,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="File (.yaml/.yml/.json); default stdout.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="yaml or json (stdout only).")] = "yaml",
    db: DbOption = None,
) -> None:
    """Write a stored program back out as a file."""
    with _store(db) as store:
        program = store.load(ref, validate=False)
        if output is not None:
            program.dump(output)
            err.print(f"wrote {output}", highlight=False)
        elif fmt == "json":
            sys.stdout.write(program.to_json() + "\n")
        else:
            sys.stdout.write(program.to_yaml())


@programs_app.command("alias")
def programs_alias(
    target: Annotated[str, typer.Argument(metavar="NAME@ALIAS")],
    ref: Annotated[str, typer.Argument(help="The version to point at (NAME@N, hash, ...).")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Point NAME@ALIAS at a version."""
    name, sep, alias = target.partition("@")
    if not sep or not name or not alias:
        _fail(InputValidationError(f"expected NAME@ALIAS, got {target!r}"), 2, as_json)
    with _store(db, as_json) as store:
        version = store.set_alias(name, alias, ref)
        if as_json:
            _print_json(version.model_dump(mode="json"))
            return
        out.print(f"{name}@{alias} → {version.ref} {version.short_hash}", highlight=False)


# ------------------------------------------------------------------------------------------------
# executions
# ------------------------------------------------------------------------------------------------
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")


def parse_since(text: str) -> datetime:
    """``30m``, ``2h``, ``7d``, ``1w`` ago, or an ISO date/time (local time if no zone)."""
    m = _DURATION.match(text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
        return datetime.now(UTC) - timedelta(**{unit: float(m.group(1))})
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: use 30m, 2h, 7d or an ISO date like 2025-01-31T12:00") from None
    return dt.astimezone(UTC) if dt.tzinfo is None else dt


@executions_app.command("list")
def executions_list(
    program: Annotated[str | None, typer.Option(help="Program name or reference.")] = None,
    status: Annotated[list[str] | None, typer.Option(help="Status (repeatable).")] = None,
    since: Annotated[str | None, typer.Option(help="e.g. 30m, 2h, 7d, or an ISO date/time.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recorded executions, newest first."""
    from .models import EXECUTION_STATUSES

    when = parse_since(since) if since else None
    for value in status or []:
        if value not in EXECUTION_STATUSES:
            close = did_you_mean(value, EXECUTION_STATUSES)
            hint = f"did you mean {close!r}? " if close else ""
            _fail(ConfigurationError(f"--status {value!r} is not a status ({hint}one of "
                                     f"{', '.join(EXECUTION_STATUSES)})", where="--status", suggestion=close), 2,
                  as_json)
    with _store(db, as_json) as store:
        rows = store.list_executions(program=program, status=status, since=when, limit=limit)
        if as_json:
            _print_json([e.model_dump(mode="json") for e in rows])
            return
        if not rows:
            err.print("no executions" + (" match" if program or status or since else " recorded yet"),
                      highlight=False)
            return
        for line in _execution_lines(rows, out):
            out.print(line, highlight=False, no_wrap=True, overflow="ellipsis")


_STATUS_STYLE = {"succeeded": "green", "failed": "red", "interrupted": "yellow", "cancelled": "magenta"}


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return f"{int(ms // 60_000)}m{int(ms % 60_000 // 1000):02d}s"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _plain(text: str) -> str:
    """Stored text on one line, with no control character (an LM reply could carry terminal escapes)."""
    return _CONTROL.sub("\ufffd", " ".join(text.split()))


def _execution_lines(rows: list[Execution], console: Console) -> list[Text]:
    """One line per execution, its error (if any) indented on the lines below: every column stays readable at
    80 columns, and the error gets the whole width instead of what a table's last column would leave it."""
    width = console.width
    header = ("id", "program", "backend", "status", "tries", "duration", "created")
    cells = [tuple(_plain(v) for v in (e.id[:12], e.program_name, e.backend, e.status, str(e.attempts),
                                       _duration(e.duration_ms), _when(e.created_at, short=True))) for e in rows]
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header))]
    # Too wide: the free-text columns (program, then backend) give way, down to 8 characters each.
    for i in (1, 2):
        over = sum(widths) + 2 * (len(widths) - 1) - width
        if over > 0:
            widths[i] = max(min(8, widths[i]), widths[i] - over)
    right = {4, 5}

    def line(values: tuple[str, ...], styles: tuple[str, ...]) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, (value, style) in enumerate(zip(values, styles, strict=True)):
            cell = Text(value, style=style)
            cell.truncate(widths[i], overflow="ellipsis", pad=False)
            pad = " " * (widths[i] - cell.cell_len)
            text.append_text(Text(pad) + cell if i in right else cell + Text(pad if i < len(widths) - 1 else ""))
            if i < len(widths) - 1:
                text.append("  ")
        return text

    lines = [line(header, ("bold",) * len(header))]
    for e, values in zip(rows, cells, strict=True):
        lines.append(line(values, ("", "", "", _STATUS_STYLE.get(e.status, "cyan"), "", "", "")))
        if e.error:
            message = Text(_plain(f"{e.error.get('type')}: {e.error.get('message')}"), style="red")
            wrapped = list(message.wrap(console, max(20, width - 3)))
            for part in wrapped:
                part.rstrip()
            if len(wrapped) > 3:  # at most three lines: `executions show ID` has the rest
                wrapped = wrapped[:3]
                wrapped[2].append("…")
            lines += [Text("  ") + part for part in wrapped]
    return lines


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("\n", "⏎ ")
    text = text if len(text) <= limit else text[:limit] + f"… (+{len(text) - limit} chars)"
    return escape(text)  # stored data is printed as written, never interpreted as rich markup


def _add_step(parent: Tree, step: Any, full: bool) -> None:
    pointer = getattr(step, "pointer", "") or ""
    where = str(step.step) if pointer in ("", f"/steps/{step.step}") else escape(pointer)  # nested (format 2)
    passes = getattr(step, "passes", None)
    label = f"[bold]{where}[/] {step.kind}" + (f" [dim]pass {'.'.join(map(str, passes))}[/]" if passes else "")
    if step.module:
        label += f" [cyan]{step.module}[/]"
    if step.module_type:
        label += f" ({step.module_type})"
    label += f" [dim]{step.duration_ms:.1f} ms[/]"
    if step.error:
        label += " [red]✗[/]"
    node = parent.add(label)
    limit = 10_000 if full else 200
    if step.inputs:
        node.add(f"inputs: {_short(step.inputs, limit)}")
    if step.outputs is not None:
        node.add(f"outputs: {_short(step.outputs, limit)}")
    for i, call in enumerate(step.lm_calls):
        tokens = call.usage.get("total_tokens")
        lm = node.add(f"LM call {i + 1}: {call.model} [dim]{call.latency_ms:.0f} ms"
                      f"{f', {tokens} tokens' if tokens else ''}{', cached' if call.cached else ''}[/]")
        msgs = lm.add(f"{len(call.messages)} messages" + ("" if full else " (folded; --full to expand)"))
        for m in call.messages:
            msgs.add(f"[magenta]{m.get('role', '?')}[/]: {_short(m.get('content', ''), limit)}")
        if call.response is not None:
            lm.add(f"response: {_short(call.response, limit)}")
        if call.error:
            lm.add(f"[red]error[/]: {_short(call.error, limit)}")
    if step.error:
        node.add(f"[red]error[/]: {_short(step.error, limit)}")
    for child in step.children:
        _add_step(node, child, full)


def render_execution(execution: Execution, steps: list[Any], *, full: bool = False) -> Tree:
    """The execution as a rich tree: status, timings, usage, error, then one branch per step."""
    colour = {"succeeded": "green", "failed": "red", "interrupted": "yellow"}.get(execution.status, "cyan")
    tree = Tree(f"[bold]{execution.id}[/] [{colour}]{execution.status}[/] — {execution.program_name} "
                f"{execution.program_hash[:12]} on {execution.backend}")
    timing = tree.add("timings")
    timing.add(f"created {_when(execution.created_at)}, started {_when(execution.started_at)}, "
               f"finished {_when(execution.finished_at)}")
    if execution.duration_ms is not None:
        timing.add(f"duration {execution.duration_ms:.1f} ms, attempts {execution.attempts}")
    else:
        timing.add(f"attempts {execution.attempts}")
    tree.add(f"inputs: {_short(execution.inputs, 10_000 if full else 300)}")
    if execution.outputs is not None:
        tree.add(f"outputs: {_short(execution.outputs, 10_000 if full else 300)}")
    if execution.usage:
        tree.add("usage: " + ", ".join(f"{k}={v}" for k, v in execution.usage.items()))
    if execution.error:
        e = tree.add(f"[red]error {escape(str(execution.error.get('type')))}[/]: "
                     f"{escape(str(execution.error.get('message')))}")
        if execution.error.get("details"):
            e.add(_short(execution.error["details"], 10_000 if full else 400))
    trace = tree.add(f"trace ({len(steps)} steps)")
    for step in steps:
        _add_step(trace, step, full)
    return tree


@executions_app.command("show")
def executions_show(
    execution_id: Annotated[str, typer.Argument(metavar="ID", help="Execution id (or a unique prefix).")],
    full: Annotated[bool, typer.Option("--full", help="Do not fold LM messages or truncate values.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """One execution with its trace as a tree (steps, LM messages folded, usage, timings, errors)."""
    with _store(db, as_json) as store:
        _check_prefix(execution_id, "execution")
        execution = store.get_execution(execution_id)
        if execution is None:
            raise ExecutionNotFound(f"no execution {execution_id!r} (see `stepbridge executions list`)")
        steps = store.execution_steps(execution.id)
        if as_json:
            _print_json({
                **execution.model_dump(mode="json"),
                "trace": [s.model_dump(mode="json") for s in steps],
                "status_history": [c.model_dump(mode="json") for c in store.status_history(execution.id)],
            })
            return
        out.print(render_execution(execution, steps, full=full))


@executions_app.command("resume")
def executions_resume(
    program: Annotated[str | None, typer.Option(help="Only this program (name or reference).")] = None,
    backend: Annotated[str | None, typer.Option(
        help="Re-run on this adapter (native, dspy, pool, or package.module:factory) instead of the "
             "registered adapter named by each execution's recorded backend.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Executions re-run at once.")] = 8,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-run interrupted executions: runs cut off by a crash, and the unstarted rows of killed batches.

    Runs of dead processes are marked interrupted first; a crashed run is re-run as attempt + 1, a killed
    batch's rows in input order.

    A recorded backend is only looked up as a registered adapter name; executions recorded on any
    other adapter are reported as not resumable unless ``--backend`` names the adapter to use. Rows
    that cannot be resumed stay interrupted: nothing is recorded against them."""
    from .resume import resume

    with _store(db, as_json) as store:
        outcomes = resume(store, program=program, backend=backend, concurrency=concurrency)
        if as_json:
            _print_json([o.__dict__ for o in outcomes])
        else:
            for o in outcomes:
                mark = "[green]✓[/]" if o.ok else "[red]✗[/]"
                where = f" (batch {o.batch_id[:12]} row {o.index})" if o.batch_id else ""
                out.print(f"{mark} {o.execution_id}{where} {o.status}" + (f": {escape(o.error)}" if o.error else ""),
                          highlight=False)
            out.print(f"resumed {len(outcomes)} execution(s)", highlight=False)
            for batch_id in dict.fromkeys(o.batch_id for o in outcomes if o.batch_id):
                batch = store.get_batch(batch_id)
                if batch is not None:
                    out.print(_batch_line(batch), highlight=False)
        if any(not o.ok for o in outcomes):
            raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------
# batches
# ------------------------------------------------------------------------------------------------
def _batch_line(batch: Batch) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(batch.counts.items()))
    return f"batch {batch.id} ({batch.program_name}, {batch.size} rows): {counts or 'no rows'}"


@batches_app.command("list")
def batches_list(
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Recorded batches, newest first, with their rows counted by status."""
    with _store(db, as_json) as store:
        rows = store.list_batches(limit=limit)
        if as_json:
            _print_json([{**b.model_dump(mode="json"), "done": b.done} for b in rows])
            return
        table = Table("id", "program", "backend", "rows", "status", "created")
        for b in rows:
            counts = ", ".join(f"{n} {s}" for s, n in sorted(b.counts.items()))
            table.add_row(b.id[:12], f"{b.program_name} {b.program_hash[:8]}", b.backend, str(b.size),
                          escape(counts), _when(b.created_at))
        out.print(table)


@batches_app.command("show")
def batches_show(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="Batch id (or a unique prefix).")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """A batch's rows in input order: status, outputs or error, execution id."""
    with _store(db, as_json) as store:
        _check_prefix(batch_id, "batch")
        batch = store.get_batch(batch_id)
        if batch is None:
            raise StorageError(f"no batch {batch_id!r} (see `stepbridge batches list`)")
        results = store.batch_results(batch.id)
        if as_json:
            _print_json({"batch": {**batch.model_dump(mode="json"), "done": batch.done},
                         "results": [r.model_dump(mode="json") for r in results]})
            return
        out.print(_batch_line(batch), highlight=False)
        table = Table("row", "status", "execution", "outputs / error")
        for r in results:
            shown = r.outputs if r.outputs is not None else r.error
            table.add_row(str(r.index), r.status, r.execution_id[:12], _short(shown) if shown is not None else "-")
        out.print(table)


# ------------------------------------------------------------------------------------------------
# db
# ------------------------------------------------------------------------------------------------
@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Apply the schema migrations (also done automatically on first use)."""
    from .db import default_url, redacted, upgrade

    url = db or default_url()
    try:
        rev = upgrade(url)
    except StepbridgeError as exc:
        err.print(f"[bold red]error[/]: {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"{redacted(url)} is at schema revision {rev}", highlight=False)


@db_app.command("current")
def db_current(db: DbOption = None) -> None:
    """Print the schema revision of the database (without migrating it)."""
    from .db import current_revision, default_url, head_revision, make_engine

    engine = make_engine(db or default_url())
    try:
        rev = current_revision(engine)
    except Exception as exc:
        err.print(f"[bold red]error[/]: {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    out.print(f"{rev or '(empty)'} (code head: {head_revision()})", highlight=False)
