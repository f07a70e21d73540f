"""Importing a live DSPy module as a program, and saying honestly how faithful the result is.

Three ways, tried in order (conversion always starts from the live object; nothing is unpickled,
``dspy.load``-ed or imported from a name found in a file):

* **exact** — a bare ``dspy.Predict`` / ``dspy.ChainOfThought``: signature (types become a format-2
  ``types`` section: pydantic models, enums, ``Any``, ``History``), instructions, demos, and the
  settings that change what is sent (the predictor's model, ``temperature``, ``max_tokens``, ``n``,
  and the ambient DSPy adapter: ``dspy.context(adapter=JSONAdapter())`` becomes ``adapter: json``);
  never an endpoint or key.
* **traced** — a custom module whose ``forward``/``aforward`` calls predictors (attributes, or kept in
  lists, dicts and nested modules) in a fixed data flow: runs on sample inputs are observed through
  DSPy callbacks (arguments copied at call time), value matching wires each argument to a program
  input, an earlier result or a constant (an ambiguous match is settled by a second run on perturbed
  inputs, never by preference), and the conversion is verified by running both on every sample and
  comparing outputs and every LM message.
* **opaque** — one ``dspy`` step naming the module's registered class, its inputs from ``forward``'s
  parameters and its outputs from every sample (or the module's declared ``signature``).

**What "verified" means.** ``forward``'s source is read statically (:mod:`ast`) and its lines are
traced while the samples run: every ``if``/``while``/``for``/``try``/comprehension/conditional
expression is a *construct* of the report, ``verified`` only when all its paths ran on the samples
(and a loop only when its count cannot vary: ``range(<literal>)``); otherwise the import is
*partially verified* and the report names what was not covered. :class:`ImportReport` lists every
construct as ``exact``, ``verified``, ``unverified`` (why) or ``opaque`` (why); ``strict=True`` (CLI
``--strict``) refuses anything less than fully verified.

Every failure is a :class:`~stepbridge.errors.ConversionError` naming the construct, its source file
and line, and what to do. The LM for tracing is resolved as the CLI resolves it (the operator's
default LM profile, through :class:`~stepbridge.adapters.dspy.DSPyAdapter`) unless ``lm=`` is given.

The pieces: :mod:`.dspy_convert` (places, types, exact predictor modules, running the original),
:mod:`.dspy_trace` (tracing and wiring), :mod:`.dspy_static` (reading forward's source),
:mod:`.dspy_coverage` (which paths ran), :mod:`.dspy_verify` (the report and verification),
:mod:`.dspy_lm_guard` (a module never reaches its own LMs); this module chooses among the ways.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable
from typing import Any

from stepbridge.errors import ConversionError
from stepbridge.program import Program
from stepbridge.signature import FieldSpec, Signature

from .dspy_convert import (
    _doc,
    _dspy,
    _entry,
    _error,
    _infer_type,
    _leaf_interface,
    _output_names,
    _predictor_module,
    _program,
    _register_hint,
    _run_observed,
    _snake,
    _snapshot,
    _Types,
    _unconvertible_reason,
    _where,
    dspy_retriever,
    signature_from_dspy,
)
from .dspy_trace import _static_program, _trace_program
from .dspy_verify import (
    Construct,
    ImportReport,
    Verification,
    _default_constructs,
    _ensemble_constructs,
    _ensemble_notes,
    _lm_scope,
    verify,
)

__all__ = ["Construct", "ImportReport", "Verification", "dspy_retriever", "import_module", "signature_from_dspy",
           "verify"]


def _registered_name(obj: Any) -> str | None:
    from stepbridge.registry import dspy_modules

    for name in dspy_modules.names():
        try:
            target = dspy_modules.get(name)
        except Exception:  # a broken entry point must not break imports of other modules
            continue
        if target is type(obj) or target is obj:
            return name
    return None


def _module_state(obj: Any) -> dict[str, Any]:
    """Per predictor its state (``dspy.Retrieve`` and other non-predictor parameters are left out:
    DSPy 3.4.1's own ``Module.dump_state`` fails on ``Retrieve``)."""
    adapter = _dspy()
    state = {name: p.dump_state() for name, p in obj.named_predictors()}
    return adapter.sanitize_state(json.loads(json.dumps(state, default=str)))


def _dspy_step_program(obj: Any, samples: list[dict[str, Any]], lm: Any, name: str, registered: str,
                       why: str) -> tuple[Program, ImportReport]:
    cls = type(obj)
    entry = _entry(obj)
    params = [p for p in inspect.signature(getattr(obj, entry)).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not samples:
        raise _error("an opaque 'dspy' step needs the module's outputs, and no sample inputs were given",
                     construct=f"{cls.__name__}.{entry}", target=getattr(cls, entry),
                     hint=f"give sample inputs (--sample-inputs FILE.jsonl; inputs would be "
                          f"{', '.join(p.name for p in params) or 'none'})")
    types = _Types()
    declared = getattr(obj, "signature", None)
    outputs: dict[str, FieldSpec] = {}
    if declared is not None and hasattr(declared, "output_fields"):
        outputs = signature_from_dspy(declared, types=types).outputs
    with _lm_scope(lm) as run_lm:
        predictions = [_run_observed(obj, _snapshot(s), run_lm)[0] for s in samples]
    seen: dict[str, set[str]] = {}
    for p in predictions:
        for k in _output_names(p, obj):
            seen.setdefault(k, set()).add(_infer_type(p[k]))
    always = [k for k in seen if all(k in _output_names(p, obj) for p in predictions)]
    dropped = [k for k in seen if k not in always and k not in outputs]
    for k in always:
        if k not in outputs:
            kinds = seen[k]
            outputs[k] = FieldSpec(type=kinds.pop() if len(kinds) == 1 else "Any")
    input_names = [p.name for p in params] or list(samples[0])
    clash = sorted(set(input_names) & set(outputs))
    if clash:
        raise _error(f"output field(s) {', '.join(clash)} have the name of an input; a program signature keeps "
                     "inputs and outputs apart", construct=f"{cls.__name__}.{entry}", target=getattr(cls, entry),
                     hint="return the outputs under other names")
    inputs = {k: FieldSpec(type=_infer_type(samples[0][k]) if k in samples[0] else "str") for k in input_names}
    signature = Signature(inputs=inputs, outputs=outputs)
    module = {"type": "dspy", "module": registered, "signature": signature.model_dump(mode="json"),
              "state": _module_state(obj)}
    steps: list[dict[str, Any]] = [
        {"call": "module", "with": {k: f"$inputs.{k}" for k in inputs}, "as": "result"},
        {"return": {k: f"$result.{k}" for k in outputs}}]
    program = _program(name, signature, {"module": module}, steps, types, description=_doc(obj))
    notes = [why]
    if dropped:
        notes.append(f"output field(s) {', '.join(dropped)} returned on some samples only: left out of the outputs")
    return program, ImportReport("dspy_step", {"module": f"dspy step {registered!r} with its state"},
                                 notes=notes, constructs=[Construct(cls.__name__, "opaque", why)])


def import_module(obj: Any, state: dict[str, Any] | None = None, sample_inputs: Iterable[dict[str, Any]] | None = None,
                  *, lm: Any = None, name: str | None = None, fallback: bool = True,
                  strict: bool = False) -> tuple[Program, ImportReport]:
    """Convert a live DSPy module into a program (see the module docstring for the three ways).

    ``state`` (a DSPy JSON state dict) is loaded into ``obj`` first, with every predictor's ``lm``
    dropped. ``sample_inputs`` drive tracing and verification (under ``lm``, else the operator's
    default LM profile, as the CLI does). ``fallback=False`` raises instead of producing an opaque
    ``dspy`` step; ``strict=True`` raises unless the whole conversion is verified on the samples.
    Every failure is a :class:`~stepbridge.errors.ConversionError`.
    """
    try:
        program, report = _import(obj, state, [dict(s) for s in (sample_inputs or [])], lm, name, fallback)
    except ConversionError:
        raise
    except Exception as exc:  # never a traceback: say which module and what to do
        cls = type(obj)
        raise _error(f"the conversion failed with {type(exc).__name__}: {exc}", construct=cls.__name__,
                     target=cls, hint=_register_hint(cls)) from exc
    if strict and report.status != "verified":
        raise _error(f"the conversion is {report.status}, not verified:\n{report}", construct=type(obj).__name__,
                     target=type(obj), hint="give sample inputs that take every path, or drop --strict",
                     report=report.to_dict())
    return program, report


def _import(obj: Any, state: dict[str, Any] | None, samples: list[dict[str, Any]], lm: Any, name: str | None,
            fallback: bool) -> tuple[Program, ImportReport]:
    adapter = _dspy()
    dspy = adapter.dspy
    if not isinstance(obj, dspy.Module):
        raise _error(f"expected a dspy.Module instance, got {type(obj).__name__}", construct=type(obj).__name__,
                     hint="pass a module instance (or a class/factory making one on the CLI)")
    if state is not None:
        try:
            obj.load_state(adapter.sanitize_state(state))
        except Exception as exc:
            raise _error(f"the DSPy state does not fit this module ({type(exc).__name__}: {exc})",
                         construct=f"{type(obj).__name__} state", target=type(obj),
                         hint="give the JSON state saved from this module class (module.save(path))") from None
    program_name = name or _snake(type(obj).__name__)
    cls = type(obj)

    types = _Types()
    exact = _predictor_module(obj, types)
    if exact is not None:
        data, mtype = exact
        program_sig = _leaf_interface(data)
        steps: list[dict[str, Any]] = [
            {"call": "main", "with": {k: f"$inputs.{k}" for k in program_sig.inputs}, "as": "result"},
            {"return": {k: f"$result.{k}" for k in program_sig.outputs}},
        ]
        program = _program(program_name, program_sig, {"main": data}, steps, types)
        report = ImportReport("exact", {"main": f"{mtype} (exact)"},
                              constructs=[Construct("main", "exact"), *_ensemble_constructs(program),
                                          *_default_constructs(obj)], notes=_ensemble_notes(program))
        if samples:
            report.verification = verify(obj, program, samples, lm=lm)
            if not report.verification.ok:
                raise _error("verification of an exact conversion failed:\n" + str(report), construct=mtype,
                             target=cls, hint="report this module: an exact conversion must not differ",
                             report=report.to_dict())
        return program, report

    why: str
    first_fix: str | None = None
    builtin = _unconvertible_reason(obj)
    if builtin is not None:
        why = f"dspy.{cls.__name__} has no exact conversion: {builtin}"
    elif samples:
        static_why: list[str] = []
        try:
            with _lm_scope(lm) as run_lm:
                static = _static_program(obj, samples, run_lm, program_name, static_why)
                if static is not None:
                    return static
                program, report, checked = _trace_program(obj, samples, run_lm, program_name)
                # The original runs again (not the traced runs): hidden state or randomness shows up here.
                report.verification = verify(obj, program, checked, lm=run_lm)
            if report.verification.ok:
                return program, report
            why = "the traced conversion failed verification:\n" + "\n".join(report.verification.mismatches)
        except ConversionError as exc:
            why = exc.message.split("; to fix: ")[0]
            if (exc.construct or "").endswith(" reward_fn") or (exc.construct or "").startswith("ReAct tool"):
                first_fix = exc.hint  # a registration the user can make: said before the opaque fallback's
        if static_why:
            why += f" (and its source is outside what is read statically: {static_why[0]})"
    else:
        why = ("a custom forward is converted by tracing runs on sample inputs, and none were given "
               "(--sample-inputs FILE.jsonl on the command line, sample_inputs= from Python)")
    registered = _registered_name(obj)
    if not fallback or registered is None:
        hint = _register_hint(cls) if registered is None else "allow the opaque fallback (drop --no-fallback)"
        if registered is None and cls.__module__.startswith("dspy."):
            hint = ("register the instance (stepbridge.registry.dspy_modules.register('name', module)) to import it "
                    "as an opaque 'dspy' step")
        if first_fix:
            hint = f"{first_fix}; or {hint}"
        file, line = _where(cls)
        raise ConversionError(f"cannot convert {cls.__name__}: {why}; to fix: {hint}", construct=cls.__name__,
                              file=file, line=line, hint=hint, report={"reason": why})
    return _dspy_step_program(obj, samples, lm, program_name, registered, why)

