"""``stepbridge import-dspy`` and ``stepbridge export-dspy`` (typer commands, mounted by :mod:`stepbridge.cli`).

Both are also available as a small standalone Typer app (:data:`app`) for tests.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from stepbridge.errors import ProgramValidationError, StepbridgeError

__all__ = ["app", "export_dspy", "import_dspy", "load_target"]

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def load_target(target: str) -> Any:
    """The DSPy module named by ``package.module:attr`` (operator input, like an adapter factory).

    ``attr`` may be a module instance, or a class / factory called without arguments. The current
    directory is importable, as with ``python -m``.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise typer.BadParameter(f"expected MODULE:ATTR, got {target!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # the operator's module failed to import: say so, no traceback
        raise typer.BadParameter(f"cannot load {target!r}: {type(exc).__name__}: {exc}") from None
    from .dspy import dspy

    if isinstance(obj, dspy.Module):
        return obj
    if callable(obj):
        try:
            made = obj()
        except Exception as exc:
            raise typer.BadParameter(f"{target!r} raised {type(exc).__name__} when called: {exc}") from None
        if isinstance(made, dspy.Module):
            return made
    raise typer.BadParameter(f"{target!r} is not a dspy.Module (or a class/factory making one)")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep to decode
            raise typer.BadParameter(f"{path}:{lineno}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise typer.BadParameter(f"{path}:{lineno}: each line must be a JSON object of inputs")
        rows.append(row)
    return rows


def import_dspy(
    target: Annotated[str, typer.Argument(help="The DSPy module as package.module:attr (an instance or a class).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Program file to write (.yaml or .json).")],
    state: Annotated[Path | None, typer.Option("--state", help="DSPy JSON state to load first (module.save).")]
    = None,
    sample_inputs: Annotated[Path | None, typer.Option(
        "--sample-inputs", help="JSONL of forward inputs: a custom forward is traced and verified on them.")] = None,
    name: Annotated[str | None, typer.Option(help="Program name (default: from the class name).")] = None,
    no_fallback: Annotated[bool, typer.Option(
        "--no-fallback", help="Fail instead of writing a 'dspy' step when the forward cannot be converted.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the conversion report as JSON.")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Fail unless every construct of the conversion is verified on the samples.")] = False,
) -> None:
    """Turn an existing DSPy program into a program file and report how each part was converted."""
    from stepbridge.errors import ConversionError

    from .dspy_interop import import_module

    def failed(kind: str, message: str, code: int, details: dict[str, Any] | None = None) -> typer.Exit:
        """Every error the same way: JSON on stdout under --json, one line on stderr otherwise."""
        if as_json:
            sys.stdout.write(json.dumps({"ok": False, "error": {"type": kind, "message": message,
                                                                "details": details or {}}},
                                        indent=2, default=str) + "\n")
        else:
            typer.echo(f"cannot import {target}: {message}", err=True)
        return typer.Exit(code)

    try:
        obj = load_target(target)
        state_data = json.loads(state.read_text(encoding="utf-8")) if state is not None else None
        samples = _read_jsonl(sample_inputs) if sample_inputs is not None else None
        program, report = import_module(obj, state_data, samples, name=name, fallback=not no_fallback,
                                        strict=strict)
    except (ConversionError, ProgramValidationError) as exc:
        raise failed(type(exc).__name__, str(exc), EXIT_INVALID, exc.to_dict().get("details")) from None
    except StepbridgeError as exc:
        raise failed(type(exc).__name__, str(exc), EXIT_FAILED, exc.to_dict().get("details")) from None
    except typer.BadParameter as exc:  # the target, or a --sample-inputs line: the operator's input
        raise failed("UsageError", exc.format_message(), EXIT_INVALID) from None
    except (OSError, ValueError, RecursionError) as exc:  # unreadable --state / --sample-inputs files
        raise failed("InputValidationError", f"{type(exc).__name__}: {exc}", EXIT_INVALID) from None
    try:
        program.dump(output)
    except (OSError, ValueError) as exc:
        raise failed("OutputError", f"cannot write {output}: {getattr(exc, 'strerror', None) or exc}",
                     EXIT_FAILED) from None
    if as_json:
        sys.stdout.write(json.dumps({"ok": True, "program": str(output), "hash": program.content_hash,
                                     "report": report.to_dict()}, indent=2) + "\n")
    else:
        typer.echo(str(report))
        typer.echo(f"wrote {output} ({program.content_hash[:12]})")


def export_dspy(
    program: Annotated[Path, typer.Argument(help="Program file (.yaml or .json).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="DSPy state file to write (.json).")],
) -> None:
    """Write a program's DSPy state (instructions, demos), loadable with DSPy's module.load(path)."""
    from stepbridge.loader import load_program

    from .dspy_interop import export_state

    try:
        prog = load_program(program)
    except ProgramValidationError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_INVALID) from None
    if output.suffix != ".json":
        raise typer.BadParameter("the state file must end in .json (DSPy's module.load reads JSON by suffix)")
    output.write_text(json.dumps(export_state(prog), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    typer.echo(f"wrote {output}")


app = typer.Typer(help="DSPy interop.", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.command("import-dspy")(import_dspy)
app.command("export-dspy")(export_dspy)
