"""What an import reports, and verification: the original module and the converted program run on the
same inputs, outputs and every LM message compared (concurrent calls as a multiset).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from stepbridge.errors import ConversionError
from stepbridge.program import Program

from .dspy_convert import BARE, _dspy, _equal_data, _returned, _run_observed, _SentMessages, _snapshot


@dataclass
class Verification:
    """Result of running the original module and the converted program on the same inputs."""

    ok: bool
    samples: int
    mismatches: list[str] = field(default_factory=list)


@dataclass
class Construct:
    """One part of the module (a predictor, a statement of ``forward``) and how it was converted:
    ``status`` is ``exact``, ``verified``, ``unverified`` or ``opaque``; ``why`` says why when not."""

    name: str
    status: str
    why: str | None = None
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"construct": self.name, "status": self.status, "why": self.why, "line": self.line}

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.name}{where}: {self.status}" + (f" — {self.why}" if self.why else "")


@dataclass
class ImportReport:
    """How a DSPy module was converted: ``mode`` is ``exact``, ``traced`` or ``dspy_step``; ``parts``
    says how each sub-module became part of the program; ``constructs`` how each construct did."""

    mode: str
    parts: dict[str, str] = field(default_factory=dict)
    verification: Verification | None = None
    notes: list[str] = field(default_factory=list)
    constructs: list[Construct] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``exact``, ``verified``, ``partially verified``, ``unverified``, ``opaque`` or ``failed``."""
        if self.mode == "dspy_step":
            return "opaque"
        if self.verification is not None and not self.verification.ok:
            return "failed"
        if self.mode == "exact" and not any(c.status == "unverified" for c in self.constructs):
            return "verified" if self.verification is not None else "exact"
        if self.verification is None:
            return "unverified"
        if any(c.status in ("unverified", "opaque") for c in self.constructs):
            return "partially verified"
        return "verified"

    @property
    def verified(self) -> bool | None:
        """True only when every construct was verified on the samples (never for a partial cover)."""
        if self.verification is None:
            return None
        return self.status == "verified"

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "status": self.status,
            "parts": dict(self.parts),
            "verified": self.verified,
            "samples": self.verification.samples if self.verification else 0,
            "mismatches": list(self.verification.mismatches) if self.verification else [],
            "constructs": [c.to_dict() for c in self.constructs],
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        lines = [f"conversion: {self.mode} ({self.status})"]
        lines += [f"  {name}: {how}" for name, how in self.parts.items()]
        lines += [f"  {c}" for c in self.constructs if c.name not in self.parts]
        if self.verification is not None:
            v = self.verification
            lines.append(f"  verified on {v.samples} sample(s): {'ok' if v.ok else 'FAILED'}")
            lines += [f"    {m}" for m in v.mismatches]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _default_constructs(obj: Any) -> list[Construct]:
    """Output fields with a default (``dspy.OutputField(default=...)``): DSPy fills a reply that leaves
    them out; a program field has no default, so such a reply would not parse the same way."""
    from pydantic_core import PydanticUndefined

    out = []
    for _, predictor in obj.named_predictors():
        sig = predictor.signature
        for name, info in sig.output_fields.items():
            has_default = info.default_factory is not None or info.default not in (PydanticUndefined, None)
            if has_default:
                out.append(Construct(f"{sig.__name__}.{name}", "unverified",
                                     "DSPy fills its default when a reply leaves the field out; the program has no "
                                     "field defaults (the samples' replies all gave it)"))
    return out


#: Types whose values a program passes as JSON data where DSPy passes a Python object (a model, an enum
#: member, a tuple, a History): a Python reward function sees them differently.
_OBJECT_KINDS = ("named", "object", "enum", "history", "tuple")


def _ensemble_constructs(program: Program) -> list[Construct]:
    """An ensemble whose Python reward (a :func:`~stepbridge.adapters.dspy_reward.dspy_reward`) would see a
    typed field as JSON data where DSPy shows it the Python object: unverified, with the fields named."""
    from stepbridge.interface import module_interface
    from stepbridge.program import BestOfNModule, RefineModule
    from stepbridge.signature import parse_type

    out = []
    for name, module in program.modules.items():
        if not isinstance(module, BestOfNModule | RefineModule) or module.reward.metric is None:
            continue
        interface = module_interface(module, program.modules)
        if interface is None:
            continue
        typed = [k for k, spec in [*interface.inputs.items(), *interface.outputs.items()]
                 if any(t.kind in _OBJECT_KINDS for t in parse_type(spec.type).walk())]
        if typed:
            out.append(Construct(f"{name} reward", "unverified",
                                 f"the reward function gets {', '.join(typed)} as JSON data (an object as a dict, "
                                 "an enum as its value, a tuple as a list), where DSPy passes the Python object"))
    return out


def _ensemble_notes(program: Program) -> list[str]:
    """What an ensemble does differently from DSPy on purpose (docs/agents-and-ensembles.md)."""
    from stepbridge.program import BestOfNModule, RefineModule

    if not any(isinstance(m, BestOfNModule | RefineModule) for m in program.modules.values()):
        return []
    return ["best_of_n/refine: fail_count is counted per call (DSPy lowers it on the module object across calls), "
            "and a failed attempt is logged where DSPy prints it"]


def _program_inputs(value: Any) -> Any:
    """Sample inputs as the data a program takes: a ``dspy.Example`` (as DSPy users pass completions to
    MultiChainComparison) becomes its dict."""
    dspy = _dspy().dspy
    if isinstance(value, dspy.Example):
        return {k: _program_inputs(v) for k, v in value.toDict().items()}
    if isinstance(value, list | tuple):
        return type(value)(_program_inputs(v) for v in value)
    if isinstance(value, dict):
        return {k: _program_inputs(v) for k, v in value.items()}
    return value


def verify(obj: Any, program: Program, samples: Sequence[dict[str, Any]], *, lm: Any = None) -> Verification:
    """Run the original module and ``program`` (as a DSPy module) on each sample and compare the
    program's outputs and every LM message."""
    from .dspy import ProgramModule

    concurrent = any(isinstance(step, dict) and ("map" in step or "parallel" in step)
                     for step in _all_steps(program.to_dict()["steps"]))
    with _lm_scope(lm) as run_lm:
        module = ProgramModule(program)
        mismatches: list[str] = []
        for i, sample in enumerate(samples):
            original, original_messages = _run_observed(obj, _snapshot(sample), run_lm)
            sent = _SentMessages()
            try:
                converted, converted_messages = _run_observed(module, _program_inputs(_snapshot(sample)), run_lm,
                                                              what="the converted program", sent=sent)
            except ConversionError as exc:
                mismatches.append(f"sample {i}: {exc.message}")
                continue
            if sent.by_rewards:
                raise _reward_calls_an_lm(sent.by_rewards[0])
            got = _returned(original)
            if list(got) == [BARE]:  # a bare returned value: the program's single output
                got = {out: got[BARE] for out in program.signature.outputs}
            for out in program.signature.outputs:
                want = got.get(out)
                if not _equal_data(want, converted[out]):
                    mismatches.append(f"sample {i}: output {out!r} differs: {want!r} != {converted[out]!r}")
            if len(original_messages) != len(converted_messages):
                mismatches.append(f"sample {i}: {len(original_messages)} LM calls originally, "
                                  f"{len(converted_messages)} converted")
            if concurrent:  # map / parallel calls run concurrently: the same messages, in any order
                original_messages = sorted(original_messages, key=_message_key)
                converted_messages = sorted(converted_messages, key=_message_key)
            for n, (a, b) in enumerate(zip(original_messages, converted_messages, strict=False)):
                if a != b:
                    mismatches.append(f"sample {i}: LM call {n + 1} sent different messages")
    return Verification(ok=not mismatches, samples=len(samples), mismatches=mismatches)


def _reward_calls_an_lm(fn: Any) -> ConversionError:
    """A reward function that calls an LM itself: those calls are no step of the program (and a metric has
    no LM on the native backend), so the conversion would not send what DSPy sends."""
    from .dspy_convert import _error

    name = getattr(fn, "__name__", type(fn).__name__)
    return _error(f"the reward function {name} calls an LM itself; a program's metric reward makes no LM calls "
                  "(they would be no step of the program, and the native backend gives a metric no LM)",
                  construct=f"{name} reward_fn", target=fn,
                  hint="make the judge a module of the program (reward: {module: judge, field: score}), or register "
                       "the enclosing module to import it as an opaque 'dspy' step")


def _message_key(messages: Any) -> str:
    return json.dumps(messages, sort_keys=True, default=str)


def _all_steps(steps: list[Any]) -> Iterator[Any]:
    for step in steps:
        yield step
        if isinstance(step, dict):
            for key in ("then", "else", "default", "parallel"):
                yield from _all_steps(step.get(key) or [])
            for case in step.get("cases") or []:
                yield from _all_steps(case.get("steps") or [])
            if isinstance(step.get("loop"), dict):
                yield from _all_steps(step["loop"].get("steps") or [])


@contextlib.contextmanager
def _lm_scope(lm: Any) -> Iterator[Any]:
    """``lm``, or the LM the CLI would use: the operator's default profile through a DSPyAdapter."""
    if lm is not None:
        yield lm
        return
    from stepbridge.program import LMConfig

    adapter = _dspy().DSPyAdapter()
    try:
        yield adapter.dspy_lm(LMConfig())[0]
    finally:
        adapter.close()

