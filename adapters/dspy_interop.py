"""DSPy interop: existing DSPy programs in, programs out to DSPy, optimizers in between.

* :func:`import_module` turns a live DSPy module (optionally after loading its saved JSON state)
  into a program. DSPy's saved state is lossy (no field names or types; matched by position), so
  conversion always starts from the live object:

  - ``dspy.Predict`` / ``dspy.ChainOfThought`` convert **exactly** (signature with types and
    descriptions, instructions, demos, the predictor's model/temperature/max_tokens — never an
    endpoint or key);
  - a custom module whose ``forward`` is a **fixed data flow** over its predictors is converted by
    observing runs on sample inputs: DSPy callbacks give the call tree (which named predictor was
    called, with what, returning what), value matching gives the data flow (each argument is a
    program input, an earlier call's output, or a constant), and the result is **verified** by
    running the original module and the converted program on the samples and comparing outputs
    and the exact LM messages;
  - anything else becomes one ``dspy`` step naming the module's class as registered in
    :data:`stepbridge.registry.dspy_modules` (exact name), with its state as JSON.

  Nothing is ever unpickled, ``dspy.load``-ed or imported from a name found in a file.
* :func:`to_module` is the program as a real ``dspy.Module`` (:class:`stepbridge.adapters.dspy.ProgramModule`);
  :func:`export_state` is its state, loadable with DSPy's own ``module.load(path)``.
* :func:`from_module` turns an optimized :class:`ProgramModule` back into a program (demos and
  instructions filled in, a source note in the description); :func:`optimize` runs a DSPy optimizer
  (``BootstrapFewShot`` by default) on a program end to end.

DSPy is imported lazily (through :mod:`stepbridge.adapters.dspy`, which sets DSPy up to work offline).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stepbridge.errors import StepbridgeError
from stepbridge.program import Program
from stepbridge.signature import FieldSpec, Signature, TypeExpr

__all__ = [
    "ConversionError",
    "ImportReport",
    "Verification",
    "export_state",
    "from_module",
    "import_module",
    "optimize",
    "signature_from_dspy",
    "to_module",
    "verify",
]


class ConversionError(StepbridgeError):
    """A DSPy module could not be turned into a program (see the message and ``report``)."""

    def __init__(self, message: str, *, report: dict[str, Any] | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.report = report or {}

    def details(self) -> dict[str, Any]:
        return {"report": self.report}


@dataclass
class Verification:
    """Result of running the original module and the converted program on the same inputs."""

    ok: bool
    samples: int
    mismatches: list[str] = field(default_factory=list)


@dataclass
class ImportReport:
    """How a DSPy module was converted: ``mode`` is ``exact``, ``traced`` or ``dspy_step``; ``parts``
    says how each sub-module became part of the program."""

    mode: str
    parts: dict[str, str] = field(default_factory=dict)
    verification: Verification | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool | None:
        return None if self.verification is None else self.verification.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "parts": dict(self.parts),
            "verified": self.verified,
            "samples": self.verification.samples if self.verification else 0,
            "mismatches": list(self.verification.mismatches) if self.verification else [],
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        lines = [f"conversion: {self.mode}"]
        lines += [f"  {name}: {how}" for name, how in self.parts.items()]
        if self.verification is not None:
            v = self.verification
            lines.append(f"  verified on {v.samples} sample(s): {'ok' if v.ok else 'FAILED'}")
            lines += [f"    {m}" for m in v.mismatches]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _dspy() -> Any:
    from stepbridge.adapters import dspy as adapter  # sets DSPy up to run offline before importing it

    return adapter


# ================================================================================================
# Signatures and single predictors (exact)
# ================================================================================================
def _field_desc(name: str, info: Any) -> str | None:
    extra = getattr(info, "json_schema_extra", None) or {}
    desc = extra.get("desc")
    if desc is None or desc == f"${{{name}}}":
        return None
    return str(desc)


def signature_from_dspy(sig: Any, *, drop_outputs: Sequence[str] = ()) -> Signature:
    """A :class:`Signature` from a ``dspy.Signature`` class (types, descriptions, instructions).
    Instructions equal to DSPy's default for the fields are left unset (they render the same)."""
    from stepbridge.formats import default_instructions

    def fields(group: Mapping[str, Any], skip: Sequence[str] = ()) -> dict[str, FieldSpec]:
        return {
            name: FieldSpec(type=str(TypeExpr.from_annotation(info.annotation)), desc=_field_desc(name, info))
            for name, info in group.items() if name not in skip
        }

    plain = Signature(inputs=fields(sig.input_fields), outputs=fields(sig.output_fields, drop_outputs))
    instructions = sig.instructions
    if not instructions or instructions == default_instructions(plain):
        return plain
    return plain.with_instructions(instructions)


def _lm_config(predictor: Any) -> dict[str, Any] | None:
    lm = getattr(predictor, "lm", None)
    if lm is None:
        return None
    kwargs = dict(getattr(lm, "kwargs", {}) or {})
    config: dict[str, Any] = {"model": lm.model}
    if kwargs.get("temperature") is not None:
        config["temperature"] = kwargs["temperature"]
    tokens = kwargs.get("max_tokens") or kwargs.get("max_completion_tokens")
    if tokens is not None:
        config["max_tokens"] = tokens
    return config


def _demo_dicts(demos: Iterable[Any], names: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for demo in demos:
        data = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
        out.append(json.loads(json.dumps({k: data[k] for k in names if k in data}, default=str)))
    return out


def _predictor_module(obj: Any) -> tuple[dict[str, Any], str] | None:
    """The program module (as file data) for an exact Predict / ChainOfThought, and its type."""
    dspy = _dspy().dspy
    if type(obj) is dspy.ChainOfThought:
        predict = obj.predict
        names = list(predict.signature.output_fields)
        if not names or names[0] != "reasoning":
            return None
        sig = signature_from_dspy(predict.signature, drop_outputs=("reasoning",))
        mtype = "chain_of_thought"
    elif type(obj) is dspy.Predict:
        predict = obj
        sig = signature_from_dspy(predict.signature)
        mtype = "predict"
    else:
        return None
    all_fields = [*predict.signature.input_fields, *predict.signature.output_fields]
    data: dict[str, Any] = {"type": mtype, "signature": sig.with_instructions(None).model_dump(mode="json")}
    if sig.instructions is not None:
        data["instructions"] = sig.instructions
    demos = _demo_dicts(predict.demos, all_fields)
    if demos:
        data["demos"] = demos
    lm = _lm_config(predict)
    if lm:
        data["lm"] = lm
    return data, mtype


def _program(name: str, signature: Signature, modules: dict[str, Any], steps: list[dict[str, Any]],
             description: str | None = None) -> Program:
    from stepbridge.validate import validate

    data: dict[str, Any] = {"stepbridge": 1, "name": name, "signature": signature.model_dump(mode="json"),
                            "modules": modules, "steps": steps}
    if description:
        data["description"] = description
    program = Program.model_validate(data)
    validate(program)
    return program


def _escape(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        return "$" + value
    if isinstance(value, list):
        return [_escape(v) for v in value]
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


# ================================================================================================
# Tracing custom modules
# ================================================================================================
@dataclass
class _Call:
    name: str
    kwargs: dict[str, Any]
    outputs: dict[str, Any] | None = None


class _Tracer:
    """DSPy callback recording the outermost calls of a module's named sub-modules."""

    def __init__(self, root: Any, names: dict[int, str]):
        from dspy.utils.callback import BaseCallback

        tracer = self

        class _Callback(BaseCallback):
            def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
                tracer.start(call_id, instance, inputs)

            def on_module_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
                tracer.end(call_id, outputs, exception)

        self.callback = _Callback()
        self.root = root
        self.names = names
        self.calls: list[_Call] = []
        self.problems: list[str] = []
        self._open: dict[str, _Call | None] = {}
        self._recording = 0  # open recorded calls (nested calls inside them are theirs)

    def start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if instance is self.root:
            self._open[call_id] = None
            return
        if self._recording:
            self._open[call_id] = None
            return
        name = self.names.get(id(instance))
        if name is None:
            self.problems.append(f"forward calls a {type(instance).__name__} that is not one of its attributes")
            self._open[call_id] = None
            return
        args = dict(inputs.get("kwargs") or {})
        if inputs.get("args"):
            self.problems.append(f"{name} is called with positional arguments")
        extra = {k for k in ("config", "demos", "lm", "signature") if k in args}
        if extra:
            self.problems.append(f"{name} is called with per-call {', '.join(sorted(extra))}")
        call = _Call(name, args)
        self.calls.append(call)
        self._open[call_id] = call
        self._recording += 1

    def end(self, call_id: str, outputs: Any, exception: BaseException | None) -> None:
        call = self._open.pop(call_id, None)
        if call is None:
            return
        self._recording -= 1
        if exception is not None or outputs is None:
            self.problems.append(f"{call.name} raised {type(exception).__name__ if exception else 'no result'}")
            return
        call.outputs = dict(outputs.items()) if hasattr(outputs, "items") else None


def _sub_modules(obj: Any) -> dict[str, Any]:
    dspy = _dspy().dspy
    return {name: value for name, value in vars(obj).items() if isinstance(value, dspy.Module)}


def _lm_copy(lm: Any) -> Any:
    return lm.copy()


def _run_observed(obj: Any, inputs: dict[str, Any], lm: Any, callbacks: list[Any] | None = None
                  ) -> tuple[Any, list[list[dict[str, Any]]]]:
    """Run a module under ``lm`` (a fresh copy) and return its prediction and the messages it sent."""
    dspy = _dspy().dspy
    run_lm = _lm_copy(lm)
    with dspy.context(lm=run_lm, callbacks=list(callbacks or [])):
        prediction = obj(**inputs)
    return prediction, [list(entry.get("messages") or []) for entry in run_lm.history]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _candidates(value: Any, inputs: dict[str, Any], results: list[tuple[str, dict[str, Any]]],
                target: str) -> list[str]:
    """References whose value equals ``value``, most plausible first: a field named like the target,
    then the latest call's outputs back to the program inputs."""
    refs: list[str] = []
    for as_name, outputs in reversed(results):
        refs += [f"${as_name}.{k}" for k, v in outputs.items() if _same(v, value)]
    refs += [f"$inputs.{k}" for k, v in inputs.items() if _same(v, value)]
    return sorted(refs, key=lambda ref: ref.rsplit(".", 1)[-1] != target)


def _infer_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, list):
        return f"list[{_infer_type(value[0])}]" if value else "list[str]"
    if isinstance(value, dict):
        inner = {_infer_type(v) for v in value.values()}
        return f"dict[str, {inner.pop()}]" if len(inner) == 1 else "dict[str, str]"
    return "str"


def _output_names(prediction: Any) -> list[str]:
    if hasattr(prediction, "keys"):
        return list(prediction.keys())
    raise ConversionError(f"forward returned {type(prediction).__name__}, not a dspy.Prediction")


def _trace_program(obj: Any, samples: list[dict[str, Any]], lm: Any, name: str
                   ) -> tuple[Program, ImportReport, list[tuple[Any, list[list[dict[str, Any]]]]]]:
    subs = _sub_modules(obj)
    names = {id(m): n for n, m in subs.items()}
    converted: dict[str, tuple[dict[str, Any], str]] = {}
    for sub_name, sub in subs.items():
        done = _predictor_module(sub)
        if done is not None:
            converted[sub_name] = done
    observed = []
    traces: list[list[_Call]] = []
    problems: list[str] = []
    for sample in samples:
        tracer = _Tracer(obj, names)
        observed.append(_run_observed(obj, sample, lm, [tracer.callback]))
        traces.append(tracer.calls)
        problems += tracer.problems
    sequences = {tuple(c.name for c in calls) for calls in traces}
    if len(sequences) != 1:
        problems.append("the sequence of sub-module calls differs between samples: "
                        + " | ".join(" -> ".join(s) or "(none)" for s in sorted(sequences)))
    if problems:
        raise ConversionError("forward is not a fixed data flow: " + "; ".join(dict.fromkeys(problems)))
    sequence = next(iter(sequences))
    unsupported = sorted({n for n in sequence if n not in converted})
    if unsupported:
        raise ConversionError("forward calls sub-modules that are not dspy.Predict / dspy.ChainOfThought: "
                              + ", ".join(f"{n} ({type(subs[n]).__name__})" for n in unsupported))
    counts: dict[str, int] = {}
    as_names: list[str] = []
    for n in sequence:
        counts[n] = counts.get(n, 0) + 1
        as_names.append(f"{n}_out" if counts[n] == 1 else f"{n}_out{counts[n]}")

    Sample = tuple[Any, dict[str, Any], list[tuple[str, dict[str, Any]]]]

    def match(what: str, target: str, per_sample: list[Sample]) -> Any:
        common: list[str] | None = None
        for value, inputs, results in per_sample:
            cands = _candidates(value, inputs, results, target)
            common = cands if common is None else [c for c in common if c in cands]
        if common:
            return common[0]
        values = [v for v, _, _ in per_sample]
        if all(_same(v, values[0]) for v in values) and _json_safe(values[0]):
            return _escape(values[0])
        raise ConversionError(f"{what}: the value is neither a program input, an earlier result nor a "
                              "constant (a computed value cannot be expressed as a program step)")

    steps: list[dict[str, Any]] = []
    notes: list[str] = []
    for position, module_name in enumerate(sequence):
        arg_names = list(traces[0][position].kwargs)
        with_: dict[str, Any] = {}
        for arg in arg_names:
            per_sample = []
            for sample, calls in zip(samples, traces, strict=True):
                if arg not in calls[position].kwargs:
                    raise ConversionError(f"{module_name} gets argument {arg!r} only in some samples")
                results = [(as_names[i], calls[i].outputs or {}) for i in range(position)]
                per_sample.append((calls[position].kwargs[arg], sample, results))
            with_[arg] = match(f"argument {arg!r} of call {position + 1} ({module_name})", arg, per_sample)
            if not (isinstance(with_[arg], str) and with_[arg].startswith("$") and not with_[arg].startswith("$$")):
                notes.append(f"argument {arg!r} of {module_name} is the constant {with_[arg]!r}")
        steps.append({"call": module_name, "with": with_, "as": as_names[position]})
    output_names = _output_names(observed[0][0])
    returns: dict[str, Any] = {}
    for out in output_names:
        per_sample = []
        for sample, calls, (prediction, _) in zip(samples, traces, observed, strict=True):
            results = [(as_names[i], calls[i].outputs or {}) for i in range(len(sequence))]
            per_sample.append((prediction[out], sample, results))
        returns[out] = match(f"output {out!r}", out, per_sample)
    steps.append({"return": returns})

    # Types: program inputs and outputs take the type of the field they feed / come from.
    modules = {n: converted[n][0] for n in dict.fromkeys(sequence)}
    sigs = {n: Signature.model_validate(m["signature"]) for n, m in modules.items()}
    in_types: dict[str, str] = {k: _infer_type(v) for k, v in samples[0].items()}
    for step in steps[:-1]:
        for arg, ref in step["with"].items():
            if isinstance(ref, str) and ref.startswith("$inputs."):
                spec = sigs[step["call"]].inputs.get(arg)
                if spec is not None:
                    in_types[ref.split(".", 1)[1]] = spec.type
    out_types: dict[str, str] = {}
    for out, ref in returns.items():
        src, _, fld = str(ref).lstrip("$").partition(".")
        if src == "inputs":
            out_types[out] = in_types.get(fld, "str")
        elif src in as_names:
            call_name = sequence[as_names.index(src)]
            spec = sigs[call_name].outputs.get(fld)
            out_types[out] = spec.type if spec is not None else "str"  # reasoning of a CoT
        else:
            out_types[out] = _infer_type(observed[0][0][out])
    signature = Signature(inputs={k: FieldSpec(type=t) for k, t in in_types.items()},
                          outputs={k: FieldSpec(type=t) for k, t in out_types.items()})
    program = _program(name, signature, modules, steps, description=_doc(obj))
    parts = {n: f"{converted[n][1]} (exact, traced call{'s' if sequence.count(n) > 1 else ''})" for n in modules}
    unused = sorted(set(subs) - set(modules))
    if unused:
        notes.append(f"never called on the samples (left out): {', '.join(unused)}")
    if len(samples) == 1:
        notes.append("traced on one sample only: a computed value that happens to be constant would pass as a "
                     "constant; give several samples")
    return program, ImportReport("traced", parts, notes=notes), observed


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _doc(obj: Any) -> str | None:
    doc = type(obj).__doc__
    if not doc or type(obj).__module__.startswith("dspy."):
        return None
    return " ".join(doc.split())[:2000]


# ================================================================================================
# Verification
# ================================================================================================
def verify(obj: Any, program: Program, samples: Sequence[dict[str, Any]], *, lm: Any = None,
           observed: Sequence[tuple[Any, list[list[dict[str, Any]]]]] | None = None) -> Verification:
    """Run the original module and ``program`` (as a DSPy module) on each sample and compare the
    program's outputs and every LM message. ``observed`` reuses runs of the original already made."""
    lm = _resolve_lm(lm)
    module = to_module(program)
    mismatches: list[str] = []
    for i, sample in enumerate(samples):
        original, original_messages = observed[i] if observed else _run_observed(obj, sample, lm)
        try:
            converted, converted_messages = _run_observed(module, sample, lm)
        except Exception as exc:
            mismatches.append(f"sample {i}: the converted program failed: {type(exc).__name__}: {exc}")
            continue
        for out in program.signature.outputs:
            want = original.get(out)
            if not _same(want, converted[out]):
                mismatches.append(f"sample {i}: output {out!r} differs: {want!r} != {converted[out]!r}")
        if len(original_messages) != len(converted_messages):
            mismatches.append(f"sample {i}: {len(original_messages)} LM calls originally, "
                              f"{len(converted_messages)} converted")
        for n, (a, b) in enumerate(zip(original_messages, converted_messages, strict=False)):
            if a != b:
                mismatches.append(f"sample {i}: LM call {n + 1} sent different messages")
    return Verification(ok=not mismatches, samples=len(samples), mismatches=mismatches)


def _resolve_lm(lm: Any) -> Any:
    dspy = _dspy().dspy
    lm = lm if lm is not None else dspy.settings.lm
    if lm is None:
        raise ConversionError("tracing and verifying a DSPy module needs an LM: pass lm= or configure one")
    return lm


# ================================================================================================
# import_module
# ================================================================================================
def _registered_name(obj: Any) -> str | None:
    from stepbridge.registry import dspy_modules

    for name in dspy_modules.names():
        try:
            target = dspy_modules.get(name)
        except Exception:  # a broken entry point must not break imports of other modules
            continue
        if target is type(obj):
            return name
    return None


def _dspy_step_program(obj: Any, samples: list[dict[str, Any]], lm: Any, name: str, registered: str,
                       why: str) -> tuple[Program, ImportReport]:
    import inspect

    if samples:
        lm = _resolve_lm(lm)
        prediction, _ = _run_observed(obj, samples[0], lm)
        inputs = {k: FieldSpec(type=_infer_type(v)) for k, v in samples[0].items()}
        outputs = {k: FieldSpec(type=_infer_type(prediction[k])) for k in _output_names(prediction)}
    else:
        params = [p for p in inspect.signature(obj.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        inputs = {p.name: FieldSpec() for p in params}
        raise ConversionError(f"a 'dspy' step needs the module's outputs; give sample inputs "
                              f"(inputs would be {', '.join(inputs) or 'none'})")
    signature = Signature(inputs=inputs, outputs=outputs)
    adapter = _dspy()
    state = adapter.sanitize_state(json.loads(json.dumps(obj.dump_state(), default=str)))
    module = {"type": "dspy", "module": registered, "signature": signature.model_dump(mode="json"),
              "state": state}
    steps: list[dict[str, Any]] = [{"call": "module", "with": {k: f"$inputs.{k}" for k in inputs}, "as": "result"},
             {"return": {k: f"$result.{k}" for k in outputs}}]
    program = _program(name, signature, {"module": module}, steps, description=_doc(obj))
    return program, ImportReport("dspy_step", {"module": f"dspy step {registered!r} with its state"},
                                 notes=[why])


def import_module(obj: Any, state: dict[str, Any] | None = None, sample_inputs: Iterable[dict[str, Any]] | None = None,
                  *, lm: Any = None, name: str | None = None, fallback: bool = True) -> tuple[Program, ImportReport]:
    """Convert a live DSPy module into a program (see the module docstring for the three ways).

    ``state`` (a DSPy JSON state dict) is loaded into ``obj`` first, with every predictor's ``lm``
    dropped. ``sample_inputs`` drive tracing and verification of custom modules (with ``lm``, or the
    LM DSPy is configured with). ``fallback=False`` raises :class:`ConversionError` instead of
    producing a ``dspy`` step.
    """
    adapter = _dspy()
    dspy = adapter.dspy
    if not isinstance(obj, dspy.Module):
        raise ConversionError(f"expected a dspy.Module instance, got {type(obj).__name__}")
    if state is not None:
        obj.load_state(adapter.sanitize_state(state))
    samples = [dict(s) for s in (sample_inputs or [])]
    program_name = name or _snake(type(obj).__name__)

    exact = _predictor_module(obj)
    if exact is not None:
        data, mtype = exact
        program_sig = Signature.model_validate(data["signature"])
        sig = program_sig
        steps: list[dict[str, Any]] = [
            {"call": "main", "with": {k: f"$inputs.{k}" for k in sig.inputs}, "as": "result"},
            {"return": {k: f"$result.{k}" for k in sig.outputs}},
        ]
        program = _program(program_name, program_sig, {"main": data}, steps)
        report = ImportReport("exact", {"main": f"{mtype} (exact)"})
        if samples:
            report.verification = verify(obj, program, samples, lm=lm)
            if not report.verification.ok:
                raise ConversionError("verification of an exact conversion failed:\n" + str(report),
                                      report=report.to_dict())
        return program, report

    why: str
    if samples:
        try:
            lm_ = _resolve_lm(lm)
            program, report, _observed = _trace_program(obj, samples, lm_, program_name)
            # The original runs again (not the traced runs): hidden state or randomness shows up here.
            report.verification = verify(obj, program, samples, lm=lm_)
            if report.verification.ok:
                return program, report
            why = "the traced conversion failed verification:\n" + "\n".join(report.verification.mismatches)
        except ConversionError as exc:
            why = exc.message
    else:
        why = "a custom forward is converted by tracing runs on sample inputs, and none were given"
    registered = _registered_name(obj)
    if not fallback or registered is None:
        hint = "" if registered else (
            f"; register {type(obj).__name__} in stepbridge.registry.dspy_modules (or the "
            "'stepbridge.dspy_modules' entry point group) to import it as a 'dspy' step")
        raise ConversionError(f"cannot convert {type(obj).__name__}: {why}{hint}", report={"reason": why})
    return _dspy_step_program(obj, samples, lm, program_name, registered, why)


def _snake(text: str) -> str:
    import re

    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", text).lower()
    return re.sub(r"[^a-z0-9_]", "_", snake) or "imported"


# ================================================================================================
# Export, optimization round trip
# ================================================================================================
def to_module(program: Program) -> Any:
    """The program as a real ``dspy.Module`` (predictors named after the program's modules)."""
    return _dspy().ProgramModule(program)


def export_state(program: Program) -> dict[str, Any]:
    """The DSPy JSON state of :func:`to_module` (instructions, demos, signatures), with the
    ``metadata`` DSPy's ``module.load(path)`` checks. Write it with ``json.dump`` to a ``.json`` file."""
    from dspy.utils.saving import get_dependency_versions

    module = to_module(program)
    state = _dspy().sanitize_state(module.dump_state())
    state = json.loads(json.dumps(state, default=str))
    state["metadata"] = {"dependency_versions": get_dependency_versions()}
    return state


def from_module(module: Any, program: Program | None = None, *, source: str | None = None,
                name: str | None = None) -> Program:
    """A new program from a (possibly optimized) :class:`ProgramModule`: each LM module gets the
    predictor's demos and instructions; ``dspy`` modules get their current state. ``source`` is
    appended to the description as a note saying how the program was made."""
    adapter = _dspy()
    dspy = adapter.dspy
    program = program or module.program
    data = program.to_dict()
    for mod_name, spec in program.modules.items():
        sub = getattr(module, mod_name)
        if spec.type in ("predict", "chain_of_thought"):
            predict = sub.predict if isinstance(sub, dspy.ChainOfThought) else sub
            names = [*predict.signature.input_fields, *predict.signature.output_fields]
            entry = data["modules"][mod_name]
            demos = _demo_dicts(predict.demos, names)
            if demos:
                entry["demos"] = demos
            else:
                entry.pop("demos", None)
            current = signature_from_dspy(predict.signature,
                                          drop_outputs=("reasoning",) if spec.type == "chain_of_thought" else ())
            if current.instructions != spec.effective_signature.instructions:  # type: ignore[union-attr]
                entry["instructions"] = current.instructions
        elif spec.type == "dspy":
            state = json.loads(json.dumps(sub.dump_state(), default=str))
            data["modules"][mod_name]["state"] = adapter.sanitize_state(state)
    if name:
        data["name"] = name
    if source:
        description = data.get("description") or ""
        data["description"] = (description + "\n\n" if description else "") + f"source: {source}"
    new = Program.model_validate(data).with_base_dir(program._base_dir)
    from stepbridge.validate import validate

    validate(new)
    return new


def optimize(program: Program, trainset: Sequence[dict[str, Any]], metric: Callable[..., Any], *,
             optimizer: Any = None, lm: Any = None, input_keys: Sequence[str] | None = None,
             adapter: Any = None) -> tuple[Program, dict[str, Any]]:
    """Compile ``program`` with a DSPy optimizer and return the optimized program plus a provenance
    dict (``source``, ``parent``, ``message``) for storage.

    ``optimizer`` defaults to ``dspy.BootstrapFewShot(metric=metric)``; ``lm`` defaults to the LM a
    :class:`~stepbridge.adapters.dspy.DSPyAdapter` resolves for the program (pass ``adapter`` to use
    yours: its profiles, or its reference LM server). ``trainset`` rows hold inputs and labels;
    ``input_keys`` defaults to the program's input fields.
    """
    mod = _dspy()
    dspy = mod.dspy
    owned = None
    if lm is None:
        if adapter is None:
            adapter = owned = mod.DSPyAdapter()
        lm, _ = adapter.dspy_lm(program.lm or _default_lm_config())
    try:
        keys = list(input_keys or program.signature.inputs)
        examples = [dspy.Example(**row).with_inputs(*keys) for row in trainset]
        teleprompter = optimizer if optimizer is not None else dspy.BootstrapFewShot(metric=metric)
        with dspy.context(lm=lm):
            compiled = teleprompter.compile(to_module(program), trainset=examples)
        label = type(teleprompter).__name__
        message = f"optimized with dspy.{label} on {len(examples)} training examples from {program.content_hash[:12]}"
        optimized = from_module(compiled, program, source=message)
    finally:
        if owned is not None:
            owned.close()
    return optimized, {"source": "optimized", "parent": program.content_hash, "message": message}


def _default_lm_config() -> Any:
    from stepbridge.program import LMConfig

    return LMConfig()
