"""The ``stepbridge`` command line (typer + rich).

Exit codes: 0 ok, 1 a run failed, 2 invalid program, input or configuration (nothing ran), 130
interrupted (Ctrl-C), 143 terminated (SIGTERM). ``--json`` output is stable: it is the pydantic dump
of the same objects the Python API returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from . import heap
from .errors import ConfigurationError, InputValidationError, ProgramValidationError, StepbridgeError, did_you_mean
from .secrets import scrub, scrub_process_output

app = typer.Typer(
    name="stepbridge",
    help="Run LM programs written down as data on interchangeable backends (native, dspy, pool, ray).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
lm_app = typer.Typer(help="The reference LM: a deterministic OpenAI-compatible server.", no_args_is_help=True)
# The root help groups the commands by what a newcomer comes to do.
RUN, STORED, SERVE, INTEROP = "Run", "Stored programs and results", "Serve", "DSPy and adapters"
app.add_typer(lm_app, name="lm", rich_help_panel=SERVE)

# emoji off and data escaped: LM text like ':x:' or '[/bold]' must print as written
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)

EXIT_OK, EXIT_RUN_FAILED, EXIT_INVALID = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as shells report Ctrl-C

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: STEPBRIDGE_DATABASE_URL or "
                                                           "the local SQLite file).", envvar="STEPBRIDGE_DATABASE_URL")]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"stepbridge {version('stepbridge')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _every_command(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    # Before anything prints or logs: the operator's keys are known (their profiles are read) and this
    # process's output is scrubbed of them (data is scrubbed before rendering too, see below).
    scrub_process_output()
    from .lm import load_profiles

    with contextlib.suppress(Exception):  # a broken config is reported by the commands that need it
        load_profiles()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(scrub(data), ensure_ascii=False, indent=2, default=str) + "\n")


def _text(value: Any) -> str:
    value = scrub(value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _print_error(exc: StepbridgeError, as_json: bool) -> None:
    if as_json:
        _print_json({"ok": False, "error": exc.to_dict()})
    else:
        err.print(f"[bold red]error[/] ({type(exc).__name__}): {escape(str(exc))}", highlight=False, soft_wrap=True)


def _fail_invalid(exc: ProgramValidationError | InputValidationError, as_json: bool) -> typer.Exit:
    if as_json:
        _print_json({"ok": False, "error": exc.to_dict()})
    elif isinstance(exc, ProgramValidationError):
        errors = [i for i in exc.issues if i.severity == "error"]
        err.print(f"[bold red]invalid program[/]: {len(errors)} problem{'s' if len(errors) != 1 else ''}")
        for issue in exc.issues:
            colour = "red" if issue.severity == "error" else "yellow"
            err.print(f"  [{colour}]{issue.severity}[/] {escape(str(issue))}", highlight=False, soft_wrap=True)
    else:
        err.print(f"[bold red]invalid input[/]: {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_INVALID)


def _open_store(db: str | None) -> Any:
    from stepbridge.storage import Store

    return Store(db)


@app.command(rich_help_panel=RUN)
def validate(
    program: Annotated[Path, typer.Argument(help="Program file (YAML or JSON).")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check a program file; print every problem with its JSON pointer and line. Exit 2 if invalid."""
    from .loader import load_program

    try:
        prog = load_program(program)
    except ProgramValidationError as exc:
        raise _fail_invalid(exc, as_json) from None
    warnings = prog.warnings
    if as_json:
        _print_json({"ok": True, "name": prog.name, "hash": prog.content_hash,
                     "issues": [w.to_dict() for w in warnings]})
        return
    for w in warnings:
        err.print(f"  [yellow]warning[/] {escape(str(w))}", highlight=False, soft_wrap=True)
    out.print(f"[green]valid[/] {prog.name} [dim]{prog.content_hash}[/]")


@app.command(rich_help_panel=RUN)
def schema() -> None:
    """Print the JSON Schema of the program file format (generated from the pydantic models)."""
    from .program import Program

    _print_json(Program.model_json_schema(by_alias=True))


def _parse_kv(pairs: list[str], prog: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InputValidationError(f"-i expects key=value, got {pair!r}")
        key, _, raw = pair.partition("=")
        field = prog.signature.inputs.get(key)
        if field is not None and field.type_expr.kind != "str":
            try:
                values[key] = json.loads(raw)
                continue
            except (ValueError, RecursionError):  # (nesting deeper than the interpreter's recursion limit)
                raise InputValidationError(f"input {key!r} is {field.type}: give it as JSON, got {raw!r}",
                                           field=key) from None
        values[key] = raw
    return values


def _read_rows(path: Path) -> list[Any]:
    """Every non-empty line: its JSON value, or the raw text if it is not JSON. Rows that are not objects
    become failed rows of the batch (recorded, counted), not a reason to stop it."""
    rows: list[Any] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except (ValueError, RecursionError):
                        rows.append(line.rstrip("\n"))
    except OSError as exc:
        raise InputValidationError(f"cannot read {path}: {exc.strerror}") from None
    return rows


@app.command(rich_help_panel=RUN)
def run(
    program: Annotated[str, typer.Argument(metavar="PROGRAM",
                                           help="Program file, or a stored NAME, NAME@VERSION, NAME@ALIAS or hash.")],
    inputs: Annotated[list[str] | None,
                      typer.Option("-i", "--input", help="An input as key=value (repeatable).")] = None,
    inputs_file: Annotated[Path | None, typer.Option("--inputs", help="Batch: a JSONL file, one inputs object "
                                                                      "per line.")] = None,
    backend: Annotated[str, typer.Option(help="native, dspy, pool, ray, or package.module:factory.")] = "native",
    lm: Annotated[str | None, typer.Option(help="An LM profile name or a model (provider/model).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Batch rows run at once.")] = 8,
    timeout: Annotated[float | None, typer.Option(help="Seconds per run.")] = None,
    pool: Annotated[str | None, typer.Option(help="Broker address for --backend pool (default: $STEPBRIDGE_POOL, "
                                                  "else this user's `stepbridge pool start`, else a pool for "
                                                  "this run only).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write results as JSONL, in input order.")] = None,
    db: DbOption = None,
    record: Annotated[bool, typer.Option("--record/--no-record",
                                         help="Record executions in the store (--no-record: do not).")] = True,
    publish: Annotated[bool, typer.Option("--publish", help="Also store a program file as the next version of "
                                                            "its name (like `programs add`).")] = False,
) -> None:
    """Run a program once (-i key=value) or over a JSONL file of inputs (--inputs) with a progress bar.

    A file's runs are recorded against its content hash; --publish or `programs add` makes it a version."""
    from .runner import check_timeout, load

    is_file = program.endswith((".yaml", ".yml", ".json")) or "/" in program
    try:
        check_configuration(lm)  # a typo in the operator's settings stops here: nothing ran or was recorded
        check_timeout(timeout, "--timeout")
        adapter_options = _adapter_options(backend, pool)
        # A stored NAME@ALIAS needs the store to be found, even when runs are not recorded.
        store = _open_store(db) if record or publish or not is_file else None
    except ConfigurationError as exc:
        _print_error(exc, as_json)
        raise typer.Exit(EXIT_INVALID) from None
    except StepbridgeError as exc:
        _print_error(exc, as_json)
        raise typer.Exit(EXIT_INVALID) from None
    try:
        prog = load(program, store=store)
        check_program_profiles(prog)
        rows = _read_rows(inputs_file) if inputs_file else [_parse_kv(inputs or [], prog)]
    except (ProgramValidationError, InputValidationError) as exc:
        raise _fail_invalid(exc, as_json) from None
    except StepbridgeError as exc:
        _print_error(exc, as_json)
        raise typer.Exit(EXIT_INVALID) from None
    if store is not None and record:
        interrupted = store.mark_interrupted()
        if interrupted:
            err.print(f"[yellow]{len(interrupted)} execution(s) left running by a dead process were marked "
                      "interrupted[/]; `stepbridge executions resume` re-runs them", soft_wrap=True)
    if publish and store is not None and is_file:
        version = store.publish(prog)
        if not as_json:
            err.print(f"published [bold]{escape(version.ref)}[/] {version.short_hash}", highlight=False)
    if not record and store is not None:
        store.close()  # it was only needed to find the program
        store = None
    try:
        heap.settle()  # a long run keeps its rows: keep full collections off the start-up heap
        code = asyncio.run(_run(prog, rows, batch=inputs_file is not None, backend=backend, lm=lm,
                                concurrency=concurrency, timeout=timeout, as_json=as_json, out_file=out_file,
                                store=store, adapter_options=adapter_options))
    finally:
        if store is not None:
            store.close()
    raise typer.Exit(code)


def check_configuration(lm: str | None) -> None:
    """The config file parses, and ``--lm NAME`` (no ``/``: a profile) is a configured profile."""
    from .lm import load_profiles, unknown_profile_message

    profiles = load_profiles()
    if lm is not None and "/" not in lm and lm != "reference" and lm not in profiles:
        raise ConfigurationError(unknown_profile_message(lm, profiles), where="--lm",
                                 suggestion=did_you_mean(lm, [*profiles, "reference"]))


def check_program_profiles(prog: Any) -> None:
    """Every LM profile the program names is configured (before a run fails on it half-way)."""
    from .lm import load_profiles, unknown_profile_message

    profiles = load_profiles()
    named = [("/lm", prog.lm)] + [(f"/modules/{n}/lm", getattr(m, "lm", None)) for n, m in prog.modules.items()]
    for where, config in named:
        name = getattr(config, "profile", None)
        if name and name != "reference" and name not in profiles:
            raise ConfigurationError(f"{where}: {unknown_profile_message(name, profiles)}", where=where,
                                     suggestion=did_you_mean(name, [*profiles, "reference"]))


def _adapter_options(backend: str, pool: str | None) -> dict[str, Any]:
    """For the pool backend: the broker to use (checked now, ~1 s at most), or none (a pool for this run)."""
    if backend != "pool":
        if pool:
            raise ConfigurationError("--pool is only for --backend pool", where="--pool")
        return {}
    from stepbridge.bridge.address import check_reachable, client_address, default_running

    address, origin = client_address(pool)
    if origin == "default" and not default_running():
        return {}  # nobody started a pool: this run gets its own local one
    check_reachable(address, origin=origin)
    return {"address": address}


async def _run(prog: Any, rows: list[Any], **options: Any) -> int:
    """SIGINT (Ctrl-C) and SIGTERM cancel the runs in flight, which are then recorded as cancelled (not left
    running); the exit code says which signal (130 or 143)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    received: list[int] = []
    before = signal.getsignal(signal.SIGINT)

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop, signum)
    try:
        return await _run_rows(prog, rows, **options)
    except asyncio.CancelledError:
        got = received[0] if received else int(signal.SIGTERM)
        what = "interrupted" if got == signal.SIGINT else "terminated"
        err.print(f"[yellow]{what}[/]: runs in flight were recorded as cancelled")
        return 128 + got
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGINT, before)  # the loop's removal would reset it to KeyboardInterrupt


class _RateColumn(ProgressColumn):
    """Runs per second so far (rich's own speed columns are for bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f}/s" if speed else "-/s", style="progress.data.speed")


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("[red]{task.fields[failed]} failed"), _RateColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=err)


async def _run_rows(prog: Any, rows: list[Any], *, batch: bool, backend: str, lm: str | None,
                    concurrency: int, timeout: float | None, as_json: bool, out_file: Path | None, store: Any,
                    adapter_options: dict[str, Any]) -> int:
    from .runner import Runner

    try:
        runner = Runner(backend, store=store, lm=lm, timeout=timeout, **adapter_options)
    except StepbridgeError as exc:
        _print_error(exc, as_json)
        return EXIT_INVALID
    async with runner:
        if not batch:
            try:
                result = await runner.run(prog, rows[0])
            except (ProgramValidationError, InputValidationError) as exc:
                raise _fail_invalid(exc, as_json) from None
            except StepbridgeError as exc:
                if as_json:
                    _print_json({"ok": False, "error": exc.to_dict(),
                                 "trace": [t.model_dump(mode="json") for t in exc.trace]})
                else:
                    err.print(f"[bold red]run failed[/] ({type(exc).__name__}): {escape(str(exc))}", highlight=False)
                return EXIT_RUN_FAILED
            if out_file:
                out_file.write_text(json.dumps(scrub({"index": 0, "inputs": rows[0], "outputs": result.outputs,
                                                      "execution_id": result.execution_id}), ensure_ascii=False)
                                    + "\n")
            if as_json:
                _print_json(result.model_dump(mode="json"))
            else:
                body = "\n".join(f"[bold]{escape(_text(str(k)))}[/]: {escape(_text(v))}"
                                 for k, v in result.outputs.items())
                out.print(Panel(body, title=f"{prog.name} · {result.backend}", title_align="left", expand=False),
                          highlight=False)
                out.print(f"[dim]{result.duration_ms:.0f} ms · {result.usage.lm_calls} LM call(s) · "
                          f"execution {result.execution_id}[/]", highlight=False)
            return EXIT_OK

        failed = 0
        results: list[Any] = [None] * len(rows)
        batch_ids: list[str] = []

        def recorded(batch_id: str) -> None:  # every row is recorded pending: a kill from here on loses nothing
            batch_ids.append(batch_id)
            if not as_json:
                err.print(f"batch {batch_id}: {len(rows)} row(s) recorded; if this stops early, "
                          "`stepbridge executions resume` continues it", highlight=False, soft_wrap=True)

        sink = _InOrder(out_file.open("w", encoding="utf-8")) if out_file else None
        progress = _progress()
        try:
            with progress:
                task = progress.add_task(prog.name, total=len(rows), failed=0)
                async for item in runner.stream(prog, rows, concurrency=concurrency, on_batch=recorded):
                    row: dict[str, Any] = {"index": item.index, "inputs": item.inputs}
                    if item.result is not None:
                        row["outputs"] = item.result.outputs
                        row["execution_id"] = item.result.execution_id
                    else:
                        failed += 1
                        assert item.error is not None
                        row["error"] = item.error.to_dict()
                    results[item.index] = row
                    if sink:
                        sink.add(item.index, row)
                    progress.update(task, advance=1, failed=failed)
        except StepbridgeError as exc:  # the batch could not be recorded: nothing ran
            _print_error(exc, as_json)
            return EXIT_RUN_FAILED
        finally:
            if sink:
                sink.close()
        summary = {"total": len(rows), "succeeded": len(rows) - failed, "failed": failed,
                   "batch_id": batch_ids[0] if batch_ids else None}
        if as_json:
            _print_json({"summary": summary, "results": results})
        else:
            if out_file is None:
                _print_rows(results)
            for row in results:
                if "error" in row:
                    err.print(f"  row {row['index']}: [red]{row['error']['type']}[/] "
                              f"{escape(row['error']['message'])}", highlight=False)
            colour = "green" if not failed else "red"
            err.print(f"[{colour}]{summary['succeeded']}/{summary['total']} succeeded[/], {failed} failed"
                      + (f"; results in {out_file}" if out_file else ""))
        return EXIT_RUN_FAILED if failed else EXIT_OK


class _InOrder:
    """Writes JSONL rows in input order as they complete: a row waits only for the rows before it."""

    def __init__(self, fh: Any):
        self.fh, self.next, self.waiting = fh, 0, {}  # type: ignore[var-annotated]

    def add(self, index: int, row: dict[str, Any]) -> None:
        self.waiting[index] = row
        while self.next in self.waiting:
            self.fh.write(json.dumps(scrub(self.waiting.pop(self.next)), ensure_ascii=False) + "\n")
            self.next += 1
        self.fh.flush()

    def close(self) -> None:
        for index in sorted(self.waiting):  # interrupted: what finished is kept, still in order
            self.fh.write(json.dumps(scrub(self.waiting[index]), ensure_ascii=False) + "\n")
        self.fh.close()


_TABLE_MAX_COLUMNS, _TABLE_MAX_ROWS = 6, 200


def _print_rows(results: list[dict[str, Any]]) -> None:
    """A batch's results on stdout: a table of inputs and outputs, or one line per row when it is wide."""
    def fields(key: str) -> list[str]:
        names: dict[str, None] = {}
        for row in results:
            if isinstance(row.get(key), dict):
                names.update(dict.fromkeys(map(str, row[key])))
        return list(names)

    ins, outs = fields("inputs"), fields("outputs")
    wide = len(ins) + len(outs) > _TABLE_MAX_COLUMNS or len(results) > _TABLE_MAX_ROWS or out.width < 60
    if not wide:
        table = Table("#", *(escape(f) for f in ins), *(f"[bold]{escape(f)}[/]" for f in outs), box=None,
                      header_style="dim", pad_edge=False)
        for row in results:
            given = row["inputs"] if isinstance(row["inputs"], dict) else {}
            got = row.get("outputs") or {}
            cells = [escape(_short(given.get(f, ""))) for f in ins]
            cells += [escape(_short(got.get(f, ""))) for f in outs] if "error" not in row else \
                ["[red]error[/]"] + [""] * (len(outs) - 1)
            table.add_row(str(row["index"]), *cells)
        out.print(table)
        return
    for row in results:
        shown = row.get("outputs") if "error" not in row else {"error": row["error"]["type"]}
        out.print(f"{row['index']}\t{escape(_short(row['inputs'], 100))} → {escape(_short(shown, 300))}",
                  highlight=False, soft_wrap=True)


def _short(value: Any, limit: int = 80) -> str:
    text = _text(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@lm_app.command("serve")
def lm_serve(
    port: Annotated[int, typer.Option(help="Port (0 picks a free one; the URL is printed first).")] = 8765,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")] = "127.0.0.1",
    cassette: Annotated[Path | None,
                        typer.Option(help="Replay responses from this cassette (a miss is an error); with "
                                          "--upstream, record into it instead.")] = None,
    upstream: Annotated[str | None, typer.Option(help="Forward to this OpenAI-compatible base URL and record its "
                                                      "answers into --cassette.")] = None,
    upstream_key_env: Annotated[str | None,
                                typer.Option(help="NAME of the env variable with the upstream key.")] = None,
    latency_ms: Annotated[float, typer.Option(help="Added latency per request (benchmarks).")] = 0.0,
    fault: Annotated[str | None,
                     typer.Option(help="Fault for every request: error-500, slow-200, garbage, ...")] = None,
    log: Annotated[Path | None, typer.Option(help="Append every request to this JSONL file.")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (413 beyond).")] = 8 * 2**20,
    request_timeout: Annotated[float, typer.Option(help="Seconds a client has to send a whole request (408).")]
    = 30.0,
    log_bytes: Annotated[int, typer.Option(help="Bodies kept in the in-memory request log (oldest out).")]
    = 64 * 2**20,
    record: Annotated[bool, typer.Option("--record", hidden=True,
                                         help="Old spelling: --upstream alone now means record.")] = False,
) -> None:
    """Serve the deterministic reference LM (OpenAI-compatible /v1/chat/completions).

    It is not a language model: each output echoes the inputs ("answer: What is 2+2?"). No key, no network.

    Models reference/error-429, reference/slow-200, reference/garbage inject faults. Real answers: an LM profile.
    Bounded like a server: body size, request time, request log (docs/security.md)."""
    from . import reference_lm

    if (record or upstream is not None) and (upstream is None or cassette is None):
        err.print("[red]recording needs --upstream URL and --cassette FILE[/]")
        raise typer.Exit(EXIT_INVALID)
    reference_lm.serve(host=host, port=port, cassette=cassette, record=upstream is not None, upstream=upstream,
                       upstream_key_env=upstream_key_env or "OPENAI_API_KEY", latency_ms=latency_ms, fault=fault,
                       log_path=log, max_body_bytes=max_body_bytes, request_timeout=request_timeout,
                       log_bytes=log_bytes)


def _mount() -> None:
    """Sub-commands that live beside the packages they drive (storage, pool, DSPy interop)."""
    from stepbridge.adapters.dspy_cli import export_dspy, import_dspy
    from stepbridge.bridge.cli import pool_app, worker
    from stepbridge.conformance.cli import conformance
    from stepbridge.storage.cli import batches_app, db_app, executions_app, programs_app

    from .eval_cli import eval_command, evals_app
    from .optimize_cli import optimizations_app, optimize_command

    app.add_typer(programs_app, name="programs", rich_help_panel=STORED)
    app.add_typer(executions_app, name="executions", rich_help_panel=STORED)
    app.add_typer(batches_app, name="batches", rich_help_panel=STORED)
    app.add_typer(db_app, name="db", rich_help_panel=STORED)
    app.add_typer(pool_app, name="pool", rich_help_panel=SERVE)
    app.command("worker", rich_help_panel=SERVE)(worker)
    app.command("import-dspy", rich_help_panel=INTEROP)(import_dspy)
    app.command("export-dspy", rich_help_panel=INTEROP)(export_dspy)
    app.command("conformance", rich_help_panel=INTEROP)(conformance)
    app.command("eval", rich_help_panel=RUN)(eval_command)
    app.add_typer(evals_app, name="evals", rich_help_panel=STORED)
    app.command("optimize", rich_help_panel=RUN)(optimize_command)
    app.add_typer(optimizations_app, name="optimizations", rich_help_panel=STORED)


_mount()


def command() -> Any:
    """The (click) command behind ``app``, with help that shows value names (PATH, N, TEXT) instead of
    Python types in angle brackets (``<bool>``, ``<list[str]>``), nothing after a flag, and docstring
    paragraphs reflowed to the terminal (typer would keep the source's line breaks)."""
    cmd = typer.main.get_command(app)

    def walk(c: Any) -> None:
        if c.help:
            c.help = "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(c.help).split("\n\n"))
        for param in c.params:
            _plain(param)
        help_option = c.get_help_option

        def get_help_option(ctx: Any) -> Any:
            option = help_option(ctx)
            return _plain(option) if option is not None else None

        c.get_help_option = get_help_option
        for sub in getattr(c, "commands", {}).values():
            walk(sub)

    walk(cmd)
    panels = [RUN, STORED, SERVE, INTEROP]
    group: Any = cmd  # a group: the app has sub-commands
    group.commands = dict(sorted(group.commands.items(), key=lambda item: panels.index(
        getattr(item[1], "rich_help_panel", None) or RUN)))
    return cmd


def _plain(param: Any) -> Any:
    if param.param_type_name == "argument":
        param.metavar = param.metavar or (param.name or "").upper()
        label = ""  # the name column already says it
    elif getattr(param, "is_flag", False) or getattr(param, "count", False):
        label = ""
    else:
        label = param.metavar = param.metavar or _metavar(param)
    param.display_type_rich = lambda ctx, label=label: label or None
    return param


def _metavar(param: Any) -> str:
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return "VALUE"
    if desc.is_path:
        return "PATH"
    if desc.is_choice:
        return "|".join(map(str, desc.choices or ()))
    base = desc.annotation.__args__[0] if getattr(desc, "is_list", False) else desc.annotation
    return {int: "N", float: "NUMBER"}.get(base, "TEXT")


def _interrupted(signum: int, frame: Any) -> None:
    raise typer.Exit(EXIT_INTERRUPTED)


def _wants_json(args: list[str]) -> bool:
    """Whether ``--json`` is among the options (before a ``--``)."""
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def usage_error(exc: typer.TyperException) -> dict[str, Any]:
    """A usage error (an unknown option, a value out of range, a missing argument) as ``--json`` prints every
    error: ``{"ok": false, "error": {"type", "message", "details"}}``."""
    ctx = getattr(exc, "ctx", None)
    param = getattr(exc, "param", None)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    return {"ok": False, "error": {"type": "UsageError", "message": message,
                                   "details": {"command": getattr(ctx, "command_path", None),
                                               "param": getattr(param, "name", None), "kind": type(exc).__name__}}}


def main(args: list[str] | None = None) -> None:
    # Ctrl-C before or after the event loop runs (loading, opening the store) exits 130 like it does
    # mid-run; click would otherwise say "Aborted!" and exit 1.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, _interrupted)
    args = sys.argv[1:] if args is None else args
    if not _wants_json(args):
        command()(args=args, prog_name="stepbridge")
        return
    # under --json every error is JSON on stdout, also those click finds before a command runs
    try:
        code = command().main(args=args, prog_name="stepbridge", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors (typer carries its own click)
        _print_json(usage_error(exc))
        sys.exit(getattr(exc, "exit_code", EXIT_INVALID))
    except typer.Abort:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


if __name__ == "__main__":
    main()
