"""Tracing a custom module's ``forward``: the predictor (and registered tool) calls each run makes,
copied at call time, wired by value matching (a second run on marked inputs and producer-marked outputs
settles equal values), and the program those calls make; or the program
:mod:`.dspy_static` reads from its source.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from stepbridge.errors import ConversionError
from stepbridge.program import Program
from stepbridge.signature import FieldSpec, Signature
from stepbridge.values import is_constant, parse_value

from .dspy_convert import (
    BARE,
    _bare_name,
    _doc,
    _dspy,
    _entry,
    _error,
    _escape,
    _identifier,
    _infer_type,
    _interface,
    _is_leaf,
    _json_safe,
    _leaf_interface,
    _perturb,
    _predictor_module,
    _program,
    _register_hint,
    _retrieve_module,
    _returned,
    _run_observed,
    _same,
    _snapshot,
    _Types,
    _unconvertible_reason,
)
from .dspy_coverage import _code_objects, _controls, _custom_classes, _judge_controls, _LineRecorder
from .dspy_verify import (
    Construct,
    ImportReport,
    _default_constructs,
    _ensemble_constructs,
    _ensemble_notes,
    verify,
)


@dataclass
class _Call:
    name: str
    kwargs: dict[str, Any]
    outputs: dict[str, Any] | None = None


class _Tracer:
    """DSPy callback recording the outermost calls of the module's predictors, wherever they are kept."""

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
        self._depth = threading.local()
        self._thread = threading.get_ident()
        self.tool_names: dict[str, str] = {}  # registered tool -> its module name in the program
        self._lock = threading.Lock()

    def start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            depth = getattr(self._depth, "n", 0)
            if instance is self.root or depth or not _is_leaf(instance):
                if depth:
                    self._depth.n = depth + 1
                self._open[call_id] = None
                if not _is_leaf(instance) and instance is not self.root and type(instance).__module__.startswith(
                        "dspy.") and depth == 0:
                    reason = _unconvertible_reason(instance) or "only Predict, ChainOfThought and ReAct are converted"
                    self.problems.append(f"forward calls dspy.{type(instance).__name__}, which is not converted: "
                                         f"{reason}")
                return
            name = self.names.get(id(instance))
            if threading.get_ident() != self._thread:
                self.problems.append("predictors are called from several threads (dspy.Parallel or a thread "
                                     "pool): the order of calls is not fixed")
            if name is None:
                self.problems.append(f"forward calls a {type(instance).__name__} it creates itself (not kept on "
                                     "the module)")
                self._open[call_id] = None
                self._depth.n = 1
                return
            args = _snapshot(dict(inputs.get("kwargs") or {}))
            if inputs.get("args"):
                self.problems.append(f"{name} is called with positional arguments")
            extra = {k for k in ("config", "demos", "lm", "signature") if k in args}
            if extra:
                self.problems.append(f"{name} is called with per-call {', '.join(sorted(extra))}")
            call = _Call(name, args)
            self.calls.append(call)
            self._open[call_id] = call
            self._depth.n = 1

    def tool(self, tool: str, frame: Any) -> Any:
        """A registered tool's function called by forward itself (not inside a predictor): one call, its
        arguments as bound at call time, its return value shaped as the tool step returns it."""
        with self._lock:
            if getattr(self._depth, "n", 0):
                return None
            code = frame.f_code
            params = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
            name = self.tool_names.setdefault(tool, _tool_module_name(tool, self.names))
            call = _Call(name, _snapshot({p: frame.f_locals[p] for p in params if p in frame.f_locals}))
            self.calls.append(call)

        def finish(value: Any) -> None:
            call.outputs = _tool_outputs(tool, _snapshot(value))

        return finish

    def end(self, call_id: str, outputs: Any, exception: BaseException | None) -> None:
        with self._lock:
            if call_id not in self._open:
                return
            call = self._open.pop(call_id)
            depth = getattr(self._depth, "n", 0)
            if depth:
                self._depth.n = depth - 1
            if call is None:
                return
            if exception is not None or outputs is None:
                self.problems.append(f"{call.name} raised {type(exception).__name__ if exception else 'no result'}")
                return
            call.outputs = _snapshot(dict(outputs.items())) if hasattr(outputs, "items") else None


def _tool_codes() -> dict[Any, str]:
    """The code objects of registered tools' Python functions (a call of one in forward is a tool step)."""
    from stepbridge.registry import tools

    out: dict[Any, str] = {}
    for name in tools.names():
        try:
            func = inspect.unwrap(tools.get(name).func)
        except Exception:  # a broken entry point must not break the import of other modules
            continue
        code = getattr(func, "__code__", None)
        if code is not None:
            out.setdefault(code, name)
    return out


def _tool_names() -> dict[int, str]:
    """id of each registered tool's Python function -> its registered name."""
    return {id(code_owner): name for name, code_owner in _tool_functions().items()}


def _tool_functions() -> dict[str, Any]:
    from stepbridge.registry import tools

    out: dict[str, Any] = {}
    for name in tools.names():
        try:
            out[name] = inspect.unwrap(tools.get(name).func)
        except Exception:  # a broken entry point must not break the import of other modules
            continue
    return out


def _forward_tools(entry: Any, taken: Mapping[int, str]) -> dict[int, tuple[str, list[str]]]:
    """Registered tools forward's module holds by name (``search`` it may call): id of the function ->
    (its module name in the program, its parameter names)."""
    known = {id(f): name for name, f in _tool_functions().items()}
    found: dict[int, tuple[str, list[str]]] = {}
    for value in getattr(inspect.unwrap(entry), "__globals__", {}).values():
        if callable(value) and id(inspect.unwrap(value)) in known:
            func = inspect.unwrap(value)
            name = known[id(func)]
            params = [p.name for p in inspect.signature(func).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            found[id(func)] = (_tool_module_name(name, taken), params)
    return found


def _unregistered_calls(obj: Any) -> list[str]:
    """Plain Python functions of forward's module that forward calls by name and no tool registration
    names (``search (line 19)``): their results can only reach a program through a tool step."""
    import ast
    import textwrap

    func = inspect.unwrap(getattr(type(obj), _entry(obj)))
    try:
        lines, start = inspect.getsourcelines(func)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError):
        return []
    known = {id(f) for f in _tool_functions().values()}
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            target = getattr(func, "__globals__", {}).get(node.func.id)
            if inspect.isfunction(target) and id(inspect.unwrap(target)) not in known:
                found.setdefault(node.func.id, node.lineno + start - 1)
    return [f"{name} (line {line})" for name, line in found.items()]


def _tool_module_name(tool: str, taken: Mapping[int, str]) -> str:
    name = _identifier(tool)
    return name if name not in taken.values() else f"{name}_tool"


def _tool_outputs(tool: str, value: Any) -> dict[str, Any]:
    """The outputs of a tool step returning ``value`` (a TypedDict's fields, else ``result``)."""
    from stepbridge.registry import tools

    outputs = list(tools.get(tool).signature.outputs)
    if outputs != ["result"] and isinstance(value, Mapping):
        return {k: value.get(k) for k in outputs}
    return {"result": value}


def _returned_fields(tool: str, runs: list[_Traced]) -> dict[str, FieldSpec] | None:
    """The fields of the ``dspy.Prediction`` a registered tool returned on every call of every run (the same
    fields each time), typed as the values were (``Any`` where they differ); ``None`` otherwise."""
    from dspy.primitives.example import Example

    values: list[Any] = [call.outputs.get("result") for run in runs for call in run.calls
                         if call.name == run.tools.get(tool) and call.outputs is not None]
    if not values or not all(isinstance(v, Example) for v in values):
        return None
    keys = [list(v.keys()) for v in values]
    if any(k != keys[0] for k in keys) or not keys[0]:
        return None
    fields = {}
    for k in keys[0]:
        kinds = {_infer_type(v[k]) for v in values}
        fields[k] = FieldSpec(type=kinds.pop() if len(kinds) == 1 else "Any")
    return fields


def _leaves(obj: Any) -> dict[str, Any]:
    """Every Predict / ChainOfThought reachable from the module (attributes, lists, dicts, nested
    modules), named after its path (``layers[0]`` -> ``layers_0``), outermost first."""
    leaves: dict[str, Any] = {}
    inside: set[int] = set()
    for path, sub in obj.named_sub_modules():
        if sub is obj or id(sub) in inside:
            continue
        if _is_leaf(sub):
            for _, inner in sub.named_sub_modules():
                if inner is not sub:
                    inside.add(id(inner))
            name = _identifier(path)
            while name in leaves:
                name += "_"
            leaves[name] = sub
    return leaves


def _candidates(value: Any, inputs: dict[str, Any], results: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """The references whose value equals ``value``; failing those, ``{$index: [ref, i]}`` for a list
    holding it at position ``i`` (``search(q)[0]``, ``pred.items[-1]``)."""
    sources = [(f"${as_name}.{k}", v) for as_name, outputs in results for k, v in outputs.items()]
    sources += [(f"$inputs.{k}", v) for k, v in inputs.items()]
    refs: list[Any] = [ref for ref, v in sources if _same(v, value)]
    if refs:
        return refs
    if _is_prediction(value):  # a whole result passed on: DSPy sends its repr
        return [_prediction_text(as_name, list(outputs)) for as_name, outputs in results
                if list(outputs) and list(value.keys()) == list(outputs)
                and all(_same(value[k], v) for k, v in outputs.items())
                and _repr_of(outputs) in (None, str(value))]  # None: refused with the field types, below
    for ref, v in sources:
        if isinstance(v, list) and 0 < len(v) <= 1000:
            refs += [{"$index": [ref, i]} for i in (0, -1) if _same(v[i], value)]  # one element: 0 and -1 both
    return refs


def _is_prediction(value: Any) -> bool:
    return isinstance(value, _dspy().dspy.Prediction)


def _plain_repr(value: Any) -> bool:
    """A value whose ``repr`` its JSON data reproduces (str, numbers, bools, None, lists and str-keyed dicts)."""
    if type(value) in (str, int, float, bool, type(None)):
        return True
    if type(value) is list:
        return all(_plain_repr(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain_repr(v) for k, v in value.items())
    return False


def _repr_of(outputs: Mapping[str, Any]) -> str | None:
    """What ``str(dspy.Prediction(**outputs))`` is (one completion), computed as the program computes it."""
    if not all(_plain_repr(v) for v in outputs.values()):
        return None
    return "Prediction(\n    " + ",\n    ".join(f"{k}={str([v])[1:-1]}" for k, v in outputs.items()) + "\n)"


def _prediction_text(as_name: str, fields: list[str]) -> dict[str, Any]:
    """A ``$template`` giving the text DSPy sends for a whole ``dspy.Prediction`` passed as an argument: its
    ``repr``, ``Prediction(\n    k=repr(v),\n    ...\n)``. ``repr(v)`` is ``str([v])`` without its brackets
    (``$template`` renders a list as Python's ``str()``), exact for the types :func:`_repr_types` allows."""
    names = {f"v{i}": {"$slice": [{"$template": ["{v}", {"v": [f"${as_name}.{f}"]}]}, 1, -1]}
             for i, f in enumerate(fields)}
    text = "Prediction(\n    " + ",\n    ".join(f"{f}={{v{i}}}" for i, f in enumerate(fields)) + "\n)"
    return {"$template": [text, names]}


def _prediction_source(ref: Any) -> str | None:
    """The step name a :func:`_prediction_text` value renders, else ``None``."""
    try:
        inner = next(iter(ref["$template"][1].values()))["$slice"][0]["$template"][1]["v"][0]
    except (TypeError, KeyError, IndexError, StopIteration):
        return None
    return str(inner).lstrip("$").split(".")[0] if ref["$template"][0].startswith("Prediction(") else None


def _repr_types(sig: Signature) -> list[str]:
    """Output fields whose values' ``repr`` JSON data may not reproduce (objects, enums, Any, tuples...)."""
    from stepbridge.signature import parse_type

    plain = {"str", "int", "float", "bool", "literal", "optional", "list"}
    bad = []
    for name, spec in sig.outputs.items():
        kinds = [(x.kind, len(x.args)) for x in parse_type(spec.type).walk()]
        if not all(k in plain or (k == "dict" and n == 1) for k, n in kinds):
            bad.append(f"{name}: {spec.type}")
    return bad


def _marked(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each sample with a marker appended to its text values: inputs of another length and content,
    which may take paths the samples did not (and make equal-by-coincidence values differ)."""
    return [{k: _perturb(v, f"<input {k}>") for k, v in s.items()} for s in samples]


def _runnable(obj: Any, inputs: list[dict[str, Any]], lm: Any, names: dict[int, str]) -> list[_Traced]:
    """Traced runs of the inputs the original module accepts (a marked input it rejects is dropped)."""
    runs = []
    for sample in inputs:
        try:
            runs += _trace_runs(obj, [sample], lm, names, [])
        except ConversionError:
            continue
    return runs


def _template_parts(value: str, sources: dict[str, str]) -> list[Any]:
    """``value`` as literal text and references (greedy, longest source first at each position)."""
    by_length = sorted(sources.items(), key=lambda kv: -len(kv[1]))
    parts: list[Any] = []
    i = 0
    while i < len(value):
        for ref, text in by_length:
            if value.startswith(text, i):
                parts.append((ref,))
                i += len(text)
                break
        else:
            if parts and isinstance(parts[-1], str):
                parts[-1] += value[i]
            else:
                parts.append(value[i])
            i += 1
    return parts


def _render(parts: list[Any], sources: dict[str, str]) -> str | None:
    out = []
    for part in parts:
        if isinstance(part, tuple):
            if part[0] not in sources:
                return None
            out.append(sources[part[0]])
        else:
            out.append(part)
    return "".join(out)


def _infer_template(entries: list[Any]) -> dict[str, Any] | None:
    """A ``$template`` value rebuilding every observed string from the inputs and earlier results
    (an f-string in forward), or ``None``. Templates from the marked run are tried first: there,
    values equal by coincidence differ."""
    if not all(isinstance(v, str) for v, _, _ in entries):
        return None
    for value, _, sources in reversed(entries):
        parts = _template_parts(value, sources)
        if not any(isinstance(p, tuple) for p in parts):
            continue
        if all(_render(parts, src) == v for v, _, src in entries):
            names: dict[str, str] = {}
            text = []
            for part in parts:
                if isinstance(part, tuple):
                    base = _identifier(part[0].rsplit(".", 1)[-1])
                    name = next(n for n in (base, *(f"{base}_{k}" for k in range(2, 99)))
                                if names.get(n, part[0]) == part[0])
                    names[name] = part[0]
                    text.append("{" + name + "}")
                else:
                    text.append(part.replace("{", "{{").replace("}", "}}"))
            return {"$template": ["".join(text), names]}
    return None


@contextlib.contextmanager
def _salted(leaves: dict[str, Any]) -> Iterator[None]:
    """Each predictor's string outputs marked with who produced them (``answer`` becomes
    ``answer <from gen#2>``), so a value equal to an input by coincidence no longer is."""
    counts: dict[str, int] = {}

    def wrap(name: str, forward: Any) -> Any:
        def salted_forward(*args: Any, **kwargs: Any) -> Any:
            prediction = forward(*args, **kwargs)
            counts[name] = counts.get(name, 0) + 1
            for key in list(prediction.keys()):
                prediction[key] = _perturb(prediction[key], f"<from {name}#{counts[name]}>")
            return prediction

        return salted_forward

    patched = []
    for name, leaf in leaves.items():
        had = "forward" in vars(leaf)
        patched.append((leaf, had, vars(leaf).get("forward")))
        object.__setattr__(leaf, "forward", wrap(name, type(leaf).forward.__get__(leaf)))  # no direct-call warning
    try:
        yield
    finally:
        for leaf, had, before in patched:
            if had:
                object.__setattr__(leaf, "forward", before)
            else:
                del leaf.__dict__["forward"]


@dataclass
class _Traced:
    sample: dict[str, Any]
    calls: list[_Call]
    prediction: Any
    lines: dict[int, int]
    tools: dict[str, str] = field(default_factory=dict)  # registered tool -> module name


def _trace_runs(obj: Any, samples: list[dict[str, Any]], lm: Any, names: dict[int, str],
                problems: list[str]) -> list[_Traced]:
    codes: set[Any] = set()
    for cls, method in _custom_classes(obj):
        codes |= _code_objects(getattr(cls, method))
    runs = []
    tool_codes = _tool_codes()
    for sample in samples:
        tracer = _Tracer(obj, names)
        with _LineRecorder(codes, tool_codes, tracer.tool) as recorder:  # forward gets a copy of each sample
            prediction, _ = _run_observed(obj, _snapshot(sample), lm, [tracer.callback])
        runs.append(_Traced(sample, tracer.calls, prediction, recorder.lines, dict(tracer.tool_names)))
        problems += tracer.problems
    return runs


def _trace_program(obj: Any, samples: list[dict[str, Any]], lm: Any, name: str
                   ) -> tuple[Program, ImportReport, list[dict[str, Any]]]:
    """The traced program, its report, and the inputs it must be verified on (whose paths count)."""
    types = _Types()
    leaves = _leaves(obj)
    names = {id(m): n for n, m in leaves.items()}
    converted = {n: _predictor_module(m, types) for n, m in leaves.items()}
    problems: list[str] = []
    runs = _trace_runs(obj, samples, lm, names, problems)
    for r in runs:  # registered tools forward called: tool steps
        for tool, module_name in r.tools.items():
            converted[module_name] = ({"type": "tool", "tool": tool}, "tool")
    sequences = {tuple(c.name for c in r.calls) for r in runs}
    if len(sequences) != 1:
        problems.append("the sequence of predictor calls differs between samples: "
                        + " | ".join(" -> ".join(s) or "(none)" for s in sorted(sequences)))
    cls = type(obj)
    entry = getattr(cls, _entry(obj))
    if problems:
        raise _error("forward is not a fixed data flow: " + "; ".join(dict.fromkeys(problems)),
                     construct=f"{cls.__name__}.{_entry(obj)}", target=entry, hint=_register_hint(cls))
    sequence = next(iter(sequences))
    if not sequence:
        raise _error("forward calls no predictor", construct=f"{cls.__name__}.{_entry(obj)}", target=entry,
                     hint=_register_hint(cls))
    counts: dict[str, int] = {}
    as_names: list[str] = []
    for n in sequence:
        counts[n] = counts.get(n, 0) + 1
        as_names.append(f"{n}_out" if counts[n] == 1 else f"{n}_out{counts[n]}")
    output_sets = {tuple(_returned(r.prediction)) for r in runs}
    if len(output_sets) != 1:
        raise _error(f"forward returns different fields on different samples: {sorted(output_sets)}",
                     construct=f"{cls.__name__}.{_entry(obj)}", target=entry, hint=_register_hint(cls))
    output_names = list(next(iter(output_sets)))

    def observations(trace_runs: list[_Traced]) -> dict[tuple[int, str], list[Any]]:
        """Per (call position or -1 for the return, argument): the value, the references equal to it,
        and every string value it could be built from."""
        obs: dict[tuple[int, str], list[Any]] = {}
        for r in trace_runs:
            for position in range(len(r.calls) + 1):
                results = [(as_names[i], r.calls[i].outputs or {}) for i in range(position)]
                sources = {f"$inputs.{k}": v for k, v in r.sample.items() if isinstance(v, str) and v.strip()}
                sources.update({f"${n}.{k}": v for n, outs in results for k, v in outs.items()
                                if isinstance(v, str) and v.strip()})
                if position < len(r.calls):
                    items = [((position, arg), value) for arg, value in r.calls[position].kwargs.items()]
                else:
                    items = [((-1, out), _returned(r.prediction)[out]) for out in output_names]
                for key, value in items:
                    obs.setdefault(key, []).append((value, _candidates(value, r.sample, results), sources))
        return obs

    def common(entries: list[Any]) -> list[str]:
        refs: list[str] | None = None
        for _, cands, _ in entries:
            refs = list(cands) if refs is None else [c for c in refs if c in cands]
        return refs or []

    def constant(entries: list[Any]) -> bool:
        return all(_same(v, entries[0][0]) for v, _, _ in entries)

    obs = observations(runs)
    ambiguous = {key for key, entries in obs.items()
                 if len(common(entries)) > 1 or (not common(entries) and not constant(entries))}
    perturbed_note = None
    has_control = any(_controls(c, m) for c, m in _custom_classes(obj))
    runs_for_lines = runs
    if ambiguous or has_control:
        # A second run on marked inputs, with every predictor output marked by its producer: values equal by
        # coincidence then differ, and a path that depends on the data may change (then it is no fixed flow).
        perturbed = _marked(samples)
        more_problems: list[str] = []
        try:
            with _salted(leaves):
                extra = _trace_runs(obj, perturbed, lm, names, more_problems)
        except ConversionError as exc:  # the module rejects marked inputs: nothing settled, nothing counted
            extra = []
            more_problems.append(exc.message)
        paths = {tuple(c.name for c in r.calls) for r in extra}
        if not more_problems and extra and paths != {sequence}:
            raise _error("forward is not a fixed data flow: on marked inputs it calls "
                         + " | ".join(" -> ".join(p) or "(none)" for p in sorted(paths - {sequence}))
                         + " instead of " + " -> ".join(sequence), construct=f"{cls.__name__}.{_entry(obj)}",
                         target=entry, hint=_register_hint(cls))
        if not more_problems:
            for key, entries in observations(extra).items():
                obs[key] = obs.get(key, []) + entries
            perturbed_note = (f"checked on a second run of {len(extra)} sample(s) with marked inputs and predictor "
                              "outputs (wiring, and the path taken)")

    constructs: list[Construct] = []
    notes: list[str] = [perturbed_note] if perturbed_note else []

    def wire(key: tuple[int, str], what: str) -> Any:
        entries = obs[key]
        refs = common(entries)
        if len(refs) > 1:
            settled = ", marked inputs included" if perturbed_note else " (no marked run could tell them apart)"
            listed = ", ".join(map(str, refs))
            constructs.append(Construct(what, "unverified", f"its value equals each of {listed} on every "
                                        f"run{settled}: wired to {refs[0]}"))
        if refs:
            return refs[0]
        values = [v for v, _, _ in entries]
        if all(_same(v, values[0]) for v in values) and _json_safe(values[0]):
            notes.append(f"{what} is the constant {values[0]!r}")
            return _escape(values[0])
        template = _infer_template(entries)
        if template is not None:
            notes.append(f"{what} is built from a text template")
            return template
        unregistered = _unregistered_calls(obj)
        called = (f"; forward calls Python function(s) that are not registered tools: {', '.join(unregistered)} "
                  "(a program names tools, it never runs forward's own code)") if unregistered else ""
        raise _error(f"{what}: the value is neither a program input, an earlier result, a constant nor a text "
                     f"built from them (a computed value){called}", construct=f"{cls.__name__}.{_entry(obj)}",
                     target=entry, hint=("register each as a tool returning JSON data (stepbridge.tools.register("
                                         f"{unregistered[0].split(' ')[0]!r}, ...)), " if unregistered else "")
                     + "pass the value a predictor returned or an input unchanged, or " + _register_hint(cls))

    steps: list[dict[str, Any]] = []
    for position, module_name in enumerate(sequence):
        arg_names = list(runs[0].calls[position].kwargs)
        if any(list(r.calls[position].kwargs) != arg_names for r in runs):
            raise _error(f"{module_name} gets different arguments on different samples",
                         construct=f"{cls.__name__}.{_entry(obj)}", target=entry, hint=_register_hint(cls))
        with_ = {arg: wire((position, arg), f"argument {arg!r} of call {position + 1} ({module_name})")
                 for arg in arg_names}
        steps.append({"call": module_name, "with": with_, "as": as_names[position]})
    returns = {out: wire((-1, out), f"output {out!r}") for out in output_names}
    if list(returns) == [BARE]:  # forward returned a bare value: the program's one output, named after it
        bare = _bare_name(returns[BARE], list(samples[0]))
        returns = {bare: returns[BARE]}
        notes.append(f"forward returns a bare {type(runs[0].prediction).__name__}, not a dspy.Prediction: the "
                     f"program returns it as its output {bare!r}")
    steps.append({"return": returns})

    unconvertible = sorted({n for n in sequence if converted[n] is None})
    if unconvertible:
        raise _error("calls predictors that cannot be converted exactly: " + ", ".join(unconvertible),
                     construct=f"{cls.__name__}.{_entry(obj)}", target=entry, hint=_register_hint(cls))
    modules = {n: converted[n][0] for n in dict.fromkeys(sequence)}  # type: ignore[index]
    sigs = {n: _interface(m) for n, m in modules.items()}
    for step in steps[:-1]:
        for arg, ref in step["with"].items():
            src = _prediction_source(ref)
            if src is None:
                continue
            producer = sequence[as_names.index(src)]
            bad = _repr_types(Signature(inputs={}, outputs=dict(sigs[producer].outputs)))
            if (modules[producer].get("lm") or {}).get("n", 1) != 1:
                bad.append(f"n={modules[producer]['lm']['n']} completions")
            if bad:
                raise _error(f"argument {arg!r} of {step['call']} is the whole result of {producer}, which DSPy "
                             "sends as its repr; a program reproduces that text only for plain field types, not "
                             + ", ".join(bad), construct=f"{cls.__name__}.{_entry(obj)}", target=entry,
                             hint="pass the field the next predictor needs (result.answer), or " + _register_hint(cls))
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
            spec = sigs[sequence[as_names.index(src)]].outputs.get(fld)
            out_types[out] = spec.type if spec is not None else "str"
        else:
            first = _returned(runs[0].prediction)
            out_types[out] = _infer_type(first[out] if out in first else first.get(BARE))
    clash = sorted(set(in_types) & set(out_types))
    if clash:
        raise _error(f"output field(s) {', '.join(clash)} have the name of an input; a program signature keeps "
                     "inputs and outputs apart", construct=f"{cls.__name__}.{_entry(obj)}", target=entry,
                     hint="return the outputs under other names, or " + _register_hint(cls))
    signature = Signature(inputs={k: FieldSpec(type=t) for k, t in in_types.items()},
                          outputs={k: FieldSpec(type=t) for k, t in out_types.items()})
    program = _program(name, signature, modules, steps, types, description=_doc(obj))
    parts = {n: f"{converted[n][1]} (exact, traced call{'s' if sequence.count(n) > 1 else ''})"  # type: ignore[index]
             for n in modules}
    constructs = [Construct(n, "exact") for n in modules] + constructs + _default_constructs(obj)
    if has_control:  # paths count as exercised only on inputs that are also verified: the marked ones, unmarked outputs
        marked_runs = _runnable(obj, _marked(samples), lm, names)
        other = sorted({tuple(c.name for c in r.calls) for r in marked_runs} - {sequence})
        if other:
            raise _error("forward is not a fixed data flow: on marked inputs it calls "
                         + " | ".join(" -> ".join(p) or "(none)" for p in other) + " instead of "
                         + " -> ".join(sequence), construct=f"{cls.__name__}.{_entry(obj)}", target=entry,
                         hint=_register_hint(cls))
        runs_for_lines = runs + marked_runs
    constructs += _judge_controls(obj, [r.lines for r in runs_for_lines])
    unused = sorted(set(leaves) - set(modules))
    if unused:
        constructs += [Construct(n, "unverified", "never called on the samples (left out of the program)")
                       for n in unused]
    if len(samples) == 1:
        notes.append("traced on one sample only: a computed value that happens to be constant would pass as a "
                     "constant; give several samples")
    report = ImportReport("traced", parts, notes=notes + _ensemble_notes(program),
                          constructs=constructs + _ensemble_constructs(program))
    return program, report, [r.sample for r in runs_for_lines]


def _static_program(obj: Any, samples: list[dict[str, Any]], lm: Any, name: str, why: list[str] | None = None
                    ) -> tuple[Program, ImportReport] | None:
    """The program read statically from forward's source (:mod:`.dspy_static`), verified on the
    samples; ``None`` when the module nests custom modules, forward is outside the subset, or the program
    fails verification (the caller traces instead, and a trace of a branching forward is at best partially
    verified; ``why`` gets the reason)."""
    from stepbridge.program import MAX_LOOP

    from .dspy_static import Unsupported, compile_forward

    entry = _entry(obj)
    dspy = _dspy().dspy
    if len(_custom_classes(obj)) != 1:  # nested custom modules: traced
        return None
    types = _Types()
    leaves = _leaves(obj)
    converted: dict[str, Any] = {n: _predictor_module(m, types) for n, m in leaves.items()}
    interfaces = {n: _leaf_interface(c[0]) for n, c in converted.items() if c is not None}
    names = {id(m): n for n, m in leaves.items() if n in interfaces}
    positional: dict[str, str] = {}
    for attr, value in vars(obj).items():  # dspy.Retrieve kept on the module: a retrieve step (RM registered)
        data = _retrieve_module(value) if isinstance(value, dspy.Retrieve) else None
        if data is not None:
            module_name = _identifier(attr) if _identifier(attr) not in converted else f"{_identifier(attr)}_rm"
            converted[module_name] = (data, "retrieve")
            interfaces[module_name] = _interface(data)
            names[id(value)] = module_name
            positional[module_name] = "query"
    tools = _forward_tools(getattr(type(obj), entry), names)
    observed: list[_Traced] | None = None
    tool_notes: list[str] = []
    for tool, (module_name, _) in tools.items():
        tool_data: dict[str, Any] = {"type": "tool", "tool": _tool_names()[tool]}
        if list(_interface(tool_data).outputs) == ["result"]:  # its annotations name no fields: what did it return?
            if observed is None:
                observed = _trace_runs(obj, samples, lm, {id(m): n for n, m in leaves.items()}, [])
            fields = _returned_fields(tool_data["tool"], observed)
            if fields is not None:
                tool_data["signature"] = Signature(inputs=dict(_interface(tool_data).inputs),
                                                   outputs=fields).model_dump(mode="json")
                tool_notes.append(f"tool {tool_data['tool']!r} returned a dspy.Prediction with the fields "
                                  f"{', '.join(fields)} on every sample: they are its outputs here (their types as "
                                  "the samples gave them)")
        converted[module_name] = (tool_data, "tool")
        interfaces[module_name] = _interface(tool_data)
    try:
        field_types = {n: {k: f.type for k, f in sig.outputs.items()} for n, sig in interfaces.items()}
        lists = tuple(k for k in samples[0] if all(isinstance(s.get(k), list) for s in samples))  # typed list[...]
        strs = tuple(k for k in samples[0] if all(isinstance(s.get(k), str) for s in samples))  # typed str
        compiled = compile_forward(obj, entry, names, {n: list(sig.outputs) for n, sig in interfaces.items()},
                                   types=field_types, tools=tools, positional=positional, list_inputs=lists,
                                   str_inputs=strs)
    except Unsupported as exc:
        if why is not None:
            why.append(f"line {exc.line}: {exc}" if exc.line else str(exc))
        return None
    modules = {n: converted[n][0] for n in dict.fromkeys(compiled.calls)}
    if any(BARE in mapping for mapping in compiled.returns):  # forward returns a bare value: name the output
        names_given = {_bare_name(mapping[BARE], list(samples[0])) for mapping in compiled.returns}
        bare = names_given.pop() if len(names_given) == 1 else "output"
        for mapping in compiled.returns:
            mapping[bare] = mapping.pop(BARE)
    # inputs: typed by the predictor field each feeds; outputs: every name any return gives (null elsewhere)
    in_types = {k: _infer_type(v) for k, v in samples[0].items()}

    def walk(steps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for step in steps:
            yield step
            for key in ("then", "else", "default", "parallel"):
                yield from walk(step.get(key) or [])
            for case in step.get("cases") or []:
                yield from walk(case["steps"])
            if isinstance(step.get("loop"), dict):
                yield from walk(step["loop"]["steps"])

    for step in walk(compiled.steps):
        module = str(step.get("call") or step.get("map") or "")
        for arg, ref in (step.get("with") or {}).items() if module else ():
            if isinstance(ref, str) and ref.startswith("$inputs."):
                spec = interfaces[module].inputs.get(arg)
                if spec is not None:
                    in_types[ref.split(".", 1)[1]] = spec.type
        over = step.get("over")
        if module and isinstance(over, list):  # a list written in the file: each item's references
            for element in over:
                for arg, ref in (element.items() if isinstance(element, dict) else ()):
                    spec = interfaces[module].inputs.get(arg)
                    if spec is not None and isinstance(ref, str) and ref.startswith("$inputs."):
                        in_types[ref.split(".", 1)[1]] = spec.type
        if module and isinstance(over, str) and over.startswith("$inputs."):  # a list of what each element feeds
            item = f"${step['item']}"
            fed = [interfaces[module].inputs[a].type for a, r in step["with"].items()
                   if r == item and a in interfaces[module].inputs]
            in_types[over.split(".", 1)[1]] = f"list[{fed[0] if fed else 'str'}]"
    as_modules = dict(compiled.as_modules)
    mapped_as = {step["as"] for step in walk(compiled.steps) if "map" in step}
    out_names = list(dict.fromkeys(k for mapping in compiled.returns for k in mapping))
    out_types: dict[str, set[str]] = {k: set() for k in out_names}
    for mapping in compiled.returns:
        for k in out_names:
            if k not in mapping:
                mapping[k] = None
                out_types[k].add("None")
                continue
            ref = mapping[k]
            src, _, fld = str(ref).lstrip("$").partition(".") if isinstance(ref, str) else ("", "", "")
            if src == "inputs":
                out_types[k].add(in_types.get(fld, "str"))
            elif src in as_modules and not fld:  # a whole result: the object of its fields
                out_types[k].add("list[dict[str, Any]]" if src in mapped_as else "dict[str, Any]")
            elif isinstance(ref, dict) and not any(str(key).startswith("$") for key in ref):
                out_types[k].add("dict[str, Any]")  # a prediction forward built, returned whole: its fields
            elif src in as_modules:
                ftype = interfaces[as_modules[src]].outputs[fld].type
                out_types[k].add(f"list[{ftype}]" if src in mapped_as else ftype)
            elif isinstance(ref, dict) and "$template" in ref:
                out_types[k].add("str")
            elif isinstance(ref, dict) and "$index" in ref:  # one element of a map step's results
                src, _, fld = str(ref["$index"][0]).lstrip("$").partition(".")
                out_types[k].add(interfaces[as_modules[src]].outputs[fld].type if src in as_modules else "Any")
            else:  # a value built of references or operations: its type is not its shape's (checked when run)
                out_types[k].add("Any" if not is_constant(parse_value(ref, version=2)) else _infer_type(ref))
    outputs = {}
    for k, kinds in out_types.items():
        real = kinds - {"None"}
        base = real.pop() if len(real) == 1 else "Any"
        outputs[k] = FieldSpec(type=f"Optional[{base}]" if "None" in kinds and base != "Any" else base)
    signature = Signature(inputs={k: FieldSpec(type=t) for k, t in in_types.items()}, outputs=outputs)
    try:
        program = _program(name, signature, modules, compiled.steps, types, description=_doc(obj))
    except ConversionError as exc:
        if why is not None:
            why.append(exc.message)
        return None
    cls = type(obj)
    report = ImportReport("static", {n: f"{converted[n][1]} (exact)" for n in modules},
                          notes=[f"{cls.__name__}.{entry} read statically: {compiled.branches} if step(s), "
                                 f"{len(compiled.mapped)} map step(s)"],
                          constructs=[*(Construct(n, "exact") for n in modules), *_ensemble_constructs(program),
                                      *_default_constructs(obj)])
    report.notes += [f"for loop (line {line}) converted to a loop step" for line in compiled.loops]
    report.notes += tool_notes
    report.notes += [f"the for loop of line {line} makes at most {MAX_LOOP:,} passes (a program's loops are bounded): "
                     "a longer list fails the step with a typed error where Python would go on"
                     for line in compiled.over]
    report.notes += [f"output {k!r} is a whole prediction: the program returns the object of its fields (DSPy returns "
                     "the dspy.Prediction; as data they are equal)" for k in compiled.whole]
    report.notes += _ensemble_notes(program)
    names = {id(m): n for n, m in leaves.items()}
    runs = _trace_runs(obj, samples, lm, names, []) + _runnable(obj, _marked(samples), lm, names)
    report.verification = verify(obj, program, [r.sample for r in runs], lm=lm)
    if not report.verification.ok:
        if why is not None:
            why.append("the program read from the source differs from the module: "
                       + "; ".join(report.verification.mismatches))
        return None
    for judged in _judge_controls(obj, [r.lines for r in runs], compiled.proven):
        if judged.line in compiled.mapped:  # a map step: one call per element, for any length
            judged = Construct(judged.name, "verified", "converted to a map step (any number of elements)",
                               judged.line)
        elif judged.line in compiled.over and ": for `" in judged.name:  # the bound, said where it applies
            bound = f"for lists of at most {MAX_LOOP:,} elements (a longer one fails the step)"
            judged = Construct(judged.name, judged.status, f"{judged.why}; {bound}" if judged.why else bound,
                               judged.line)
        report.constructs.append(judged)
    return program, report

