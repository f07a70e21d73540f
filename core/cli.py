"""The ``stepbridge`` command line (typer + rich).

Exit codes: 0 ok, 1 a run failed, 2 invalid program or input. ``--json`` output is stable: it is
the pydantic dump of the same objects the Python API returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .errors import InputValidationError, ProgramValidationError, StepbridgeError
from .secrets import scrub, scrub_process_output

app = typer.Typer(
    name="stepbridge",
    help="Run LM programs written down as data on interchangeable backends (native, dspy, pool).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
lm_app = typer.Typer(help="The reference LM: a deterministic OpenAI-compatible server.", no_args_is_help=True)
app.add_typer(lm_app, name="lm")

# emoji off and data escaped: LM text like ':x:' or '[/bold]' must print as written
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)

EXIT_OK, EXIT_RUN_FAILED, EXIT_INVALID = 0, 1, 2

DbOption = Annotated[str | None, typer.Option("--db", help="Database URL (default: STEPBRIDGE_DATABASE_URL or "
                                                           "the local SQLite file).", envvar="STEPBRIDGE_DATABASE_URL")]


@app.callback()
def _every_command() -> None:
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


@app.command()
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


@app.command()
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


@app.command()
def run(
    program: Annotated[str, typer.Argument(help="Program file, or a stored NAME[@VERSION|@ALIAS] or hash.")],
    inputs: Annotated[list[str] | None,
                      typer.Option("-i", "--input", help="An input as key=value (repeatable).")] = None,
    inputs_file: Annotated[Path | None, typer.Option("--inputs", help="Batch: a JSONL file, one inputs object "
                                                                      "per line.")] = None,
    backend: Annotated[str, typer.Option(help="native, dspy, pool, or package.module:factory.")] = "native",
    lm: Annotated[str | None, typer.Option(help="An LM profile name or a model (provider/model).")] = None,
    concurrency: Annotated[int, typer.Option(help="Batch rows run at once.")] = 8,
    timeout: Annotated[float | None, typer.Option(help="Seconds per run.")] = None,
    pool: Annotated[str | None, typer.Option(help="Broker address for --backend pool.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write results as JSONL.")] = None,
    db: DbOption = None,
    record: Annotated[bool, typer.Option(help="Record executions in the store.")] = True,
) -> None:
    """Run a program once (-i key=value) or over a JSONL file of inputs (--inputs) with a progress bar."""
    from .runner import load

    is_file = program.endswith((".yaml", ".yml", ".json")) or "/" in program
    try:
        # A stored NAME@ALIAS needs the store to be found, even when runs are not recorded.
        store = _open_store(db) if record or not is_file else None
    except StepbridgeError as exc:
        _print_error(exc, as_json)
        raise typer.Exit(EXIT_INVALID) from None
    if store is not None and record:
        interrupted = store.mark_interrupted()
        if interrupted:
            err.print(f"[yellow]{len(interrupted)} execution(s) left running by a dead process were marked "
                      "interrupted[/]; `stepbridge executions resume` re-runs them", soft_wrap=True)
    try:
        prog = load(program, store=store)
        rows = _read_rows(inputs_file) if inputs_file else [_parse_kv(inputs or [], prog)]
    except (ProgramValidationError, InputValidationError) as exc:
        raise _fail_invalid(exc, as_json) from None
    except StepbridgeError as exc:
        _print_error(exc, as_json)
        raise typer.Exit(EXIT_INVALID) from None
    if not record and store is not None:
        store.close()  # it was only needed to find the program
        store = None
    adapter_options: dict[str, Any] = {}
    if pool:
        adapter_options["address"] = pool
    try:
        code = asyncio.run(_run(prog, rows, batch=inputs_file is not None, backend=backend, lm=lm,
                                concurrency=concurrency, timeout=timeout, as_json=as_json, out_file=out_file,
                                store=store, adapter_options=adapter_options))
    finally:
        if store is not None:
            store.close()
    raise typer.Exit(code)


async def _run(prog: Any, rows: list[Any], **options: Any) -> int:
    """SIGTERM cancels the runs in flight, which are then recorded as cancelled (not left running)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await _run_rows(prog, rows, **options)
    except asyncio.CancelledError:
        err.print("[yellow]terminated[/]: runs in flight were recorded as cancelled")
        return 128 + signal.SIGTERM
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


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

        sink = out_file.open("w", encoding="utf-8") if out_file else None
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(),
                            console=err)
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
                        sink.write(json.dumps(scrub(row), ensure_ascii=False) + "\n")
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
            for row in results:
                if "error" in row:
                    err.print(f"  row {row['index']}: [red]{row['error']['type']}[/] "
                              f"{escape(row['error']['message'])}", highlight=False)
            colour = "green" if not failed else "red"
            err.print(f"[{colour}]{summary['succeeded']}/{summary['total']} succeeded[/], {failed} failed"
                      + (f"; results in {out_file}" if out_file else ""))
        return EXIT_RUN_FAILED if failed else EXIT_OK


@lm_app.command("serve")
def lm_serve(
    port: Annotated[int, typer.Option(help="Port (0 picks a free one; the URL is printed first).")] = 8765,
    host: Annotated[str, typer.Option(help="Interface to bind (loopback by default).")] = "127.0.0.1",
    cassette: Annotated[Path | None,
                        typer.Option(help="Replay responses from this cassette; a miss is an error.")] = None,
    record: Annotated[bool, typer.Option("--record", help="Record upstream responses into --cassette.")] = False,
    upstream: Annotated[str | None, typer.Option(help="Upstream OpenAI-compatible base URL for --record.")] = None,
    upstream_key_env: Annotated[str | None,
                                typer.Option(help="NAME of the env variable with the upstream key.")] = None,
    latency_ms: Annotated[float, typer.Option(help="Added latency per request (benchmarks).")] = 0.0,
    fault: Annotated[str | None,
                     typer.Option(help="Fault for every request: error-500, slow-200, garbage, ...")] = None,
    log: Annotated[Path | None, typer.Option(help="Append every request to this JSONL file.")] = None,
) -> None:
    """Serve the deterministic reference LM (OpenAI-compatible /v1/chat/completions)."""
    from . import reference_lm

    if record and (upstream is None or cassette is None):
        err.print("[red]--record needs --upstream URL and --cassette FILE[/]")
        raise typer.Exit(EXIT_INVALID)
    reference_lm.serve(host=host, port=port, cassette=cassette, record=record, upstream=upstream,
                       upstream_key_env=upstream_key_env or "OPENAI_API_KEY", latency_ms=latency_ms, fault=fault,
                       log_path=log)


def _mount() -> None:
    """Sub-commands that live beside the packages they drive (storage, pool, DSPy interop)."""
    from stepbridge.adapters.dspy_cli import export_dspy, import_dspy
    from stepbridge.bridge.cli import pool_app, worker
    from stepbridge.conformance.cli import conformance
    from stepbridge.storage.cli import batches_app, db_app, executions_app, programs_app

    from .eval_cli import eval_command, evals_app
    from .optimize_cli import optimizations_app, optimize_command

    app.add_typer(programs_app, name="programs")
    app.add_typer(executions_app, name="executions")
    app.add_typer(batches_app, name="batches")
    app.add_typer(db_app, name="db")
    app.add_typer(pool_app, name="pool")
    app.command("worker")(worker)
    app.command("import-dspy")(import_dspy)
    app.command("export-dspy")(export_dspy)
    app.command("conformance")(conformance)
    app.command("eval")(eval_command)
    app.add_typer(evals_app, name="evals")
    app.command("optimize")(optimize_command)
    app.add_typer(optimizations_app, name="optimizations")


_mount()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
