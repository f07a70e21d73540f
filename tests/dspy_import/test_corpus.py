"""Public DSPy programs (tests/dspy_import/corpus, each naming its source), imported and compared.

Each program runs in plain DSPy and, imported, on the native backend against the same reference LM;
outputs and every message must match. The result per program is ``identical`` (imported, runs on
native, same outputs and messages on the samples and on held-out inputs), ``opaque`` (imported as a
``dspy`` step: runs only on the dspy backend), ``not converted`` (a ConversionError saying what and
where) or ``failed`` (anything else: a traceback, a mismatch). Never allowed: a traceback, and a
conversion reported as verified that differs from DSPy on any input.

``python tests/dspy_import/test_corpus.py`` prints the table (the same classification).
"""

from __future__ import annotations

import asyncio
import enum
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
from stepbridge.adapters.dspy import dspy
from stepbridge.adapters.dspy_convert import _entry
from stepbridge.adapters.dspy_import import dspy_retriever, import_module
from stepbridge.adapters.dspy_reward import dspy_reward, reward_functions
from stepbridge.errors import ConversionError, ProgramValidationError
from stepbridge.registry import dspy_modules, metrics, retrievers, tools
from stepbridge.validate import validate_data

CORPUS = sorted((Path(__file__).resolve().parent / "corpus").glob("c*.py"))
#: the share of the corpus that must import to identical programs (raise it as the importer improves)
MIN_IDENTICAL = 0.9
_SEEN: dict[str, Outcome] = {}  # filled by the per-program tests, read by the share test (same module)


@dataclass
class Outcome:
    program: str
    construct: str
    result: str  # identical | opaque | not converted | failed
    status: str  # the import report's status (exact, verified, partially verified, ...) or the error
    detail: str = ""


def load(path: Path) -> Any:
    name = f"sb_corpus_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _json(value: Any) -> Any:
    if isinstance(value, dspy.Example):  # a whole prediction returned as an output: the object of its fields
        return {k: _json(value[k]) for k in value.keys()}  # noqa: SIM118 (an Example is no dict)
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


def _construct(obj: Any) -> str:
    cls = type(obj)
    return f"dspy.{cls.__name__}" if cls.__module__.startswith("dspy.") else f"custom {cls.__name__}"


def _context(mod: Any) -> Any:
    adapters = {"json": dspy.JSONAdapter, "xml": dspy.XMLAdapter}
    adapter = adapters[mod.ADAPTER]() if getattr(mod, "ADAPTER", None) else None
    return dspy.context(adapter=adapter, rm=getattr(mod, "RM", None))


def _plain(mod: Any, inputs: dict[str, Any], lm: Any) -> tuple[Any, list[Any]]:
    """A run in plain DSPy and the messages of every LM call that completed (on ``lm`` and on the copies
    BestOfN and Refine make, whose history is their own), seen through DSPy's callbacks."""
    from dspy.utils.callback import BaseCallback

    to_dspy = getattr(mod, "to_dspy", lambda x: x)
    started: dict[str, Any] = {}
    sent: list[Any] = []

    class Sent(BaseCallback):
        def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            started[call_id] = inputs["messages"]

        def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
            if exception is None:
                sent.append(started.pop(call_id))

    with _context(mod), dspy.context(lm=lm.copy(), callbacks=[Sent()]):
        module = mod.build()
        kwargs = to_dspy(json.loads(json.dumps(inputs)))
        # an async-only module runs as DSPy users run it: acall
        prediction = asyncio.run(module.acall(**kwargs)) if _entry(module) == "aforward" else module(**kwargs)
    return prediction, sent


def evaluate(path: Path, lm: Any, run_native: Any) -> Outcome:
    outcome = _evaluate(path, lm, run_native)
    outcome.detail = outcome.detail.replace(f"{path.parent}/", "")
    return outcome


def _evaluate(path: Path, lm: Any, run_native: Any) -> Outcome:
    mod = load(path)
    obj = mod.build()
    construct = _construct(obj)
    to_dspy = getattr(mod, "to_dspy", lambda x: x)
    registered = None
    if not type(obj).__module__.startswith("dspy."):  # a custom class may become an opaque step
        registered = f"corpus.{path.stem}"
        dspy_modules.register(registered, type(obj))
    for func in getattr(mod, "TOOLS", []):  # as the operator registers the tools a program names
        tools.register(func.__name__, func)
    rewards = reward_functions(obj)  # and the reward functions of its BestOfN / Refine modules
    for reward_name, func in rewards.items():
        metrics.register(reward_name, dspy_reward(func))
    if getattr(mod, "RM", None) is not None:  # and the retriever over its DSPy RM
        retrievers.register(f"corpus_{path.stem}", dspy_retriever(mod.RM))
    try:
        try:
            with _context(mod):
                program, report = import_module(obj, sample_inputs=[to_dspy(s) for s in mod.SAMPLES], lm=lm)
        except ConversionError as exc:
            return Outcome(path.stem, construct, "not converted", "error", exc.message.split("; to fix:")[0][-160:])
        except Exception as exc:  # a traceback: always a failure
            return Outcome(path.stem, construct, "failed", "traceback", f"{type(exc).__name__}: {exc}"[:160])
        finally:
            if registered:
                dspy_modules.unregister(registered)
        return _compare(path, mod, construct, program, report, lm, run_native)
    finally:
        for func in getattr(mod, "TOOLS", []):
            tools.unregister(func.__name__)
        for reward_name in rewards:
            metrics.unregister(reward_name)
        if getattr(mod, "RM", None) is not None:
            retrievers.unregister(f"corpus_{path.stem}")


def _compare(path: Path, mod: Any, construct: str, program: Any, report: Any, lm: Any, run_native: Any) -> Outcome:
    if report.mode == "dspy_step":
        return Outcome(path.stem, construct, "opaque", report.status, report.notes[0][:160] if report.notes else "")
    try:
        validate_data(program.to_dict())  # the program as `stepbridge import-dspy` writes it loads as it is
    except ProgramValidationError as exc:
        return Outcome(path.stem, construct, "failed", report.status, f"the written program does not load: {exc}"[:300])
    problems = []
    for inputs in [*mod.SAMPLES, *mod.HELD_OUT]:
        try:
            prediction, messages = _plain(mod, inputs, lm)
        except Exception as exc:
            return Outcome(path.stem, construct, "failed", report.status, f"plain DSPy failed: {exc}"[:160])
        try:
            result = run_native(program, inputs)
        except Exception as exc:
            problems.append(f"native failed: {type(exc).__name__}: {exc}"[:160])
            continue
        if isinstance(prediction, dspy.Prediction):
            want = {k: _json(prediction[k]) for k in program.signature.outputs if k in prediction}
        else:  # forward returned a bare value: the program's single output
            want = {k: _json(prediction) for k in program.signature.outputs}
        if result.outputs != want:
            problems.append(f"outputs differ on {inputs}: {result.outputs} != {want}"[:300])
        sent = [c.messages for s in result.trace for c in _lm_calls(s)]
        if any(s.kind in ("map", "parallel") for s in result.trace):  # concurrent calls: any order
            sent, messages = sorted(sent, key=repr), sorted(messages, key=repr)
        if sent != messages:
            problems.append(f"messages differ on {inputs} ({len(sent)} vs {len(messages)} calls)")
    if problems:
        return Outcome(path.stem, construct, "failed", report.status, "; ".join(problems)[:300])
    return Outcome(path.stem, construct, "identical", report.status)


def _lm_calls(step: Any) -> list[Any]:
    return [*step.lm_calls, *(c for child in (step.children or []) for c in _lm_calls(child))]


def test_corpus_has_at_least_25_programs_each_naming_its_source() -> None:
    assert len(CORPUS) >= 25
    for path in CORPUS:
        assert path.read_text(encoding="utf-8").startswith("# Source: "), path.name


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus_program(path: Path, dspy_lm: Any, run_native: Any) -> None:
    outcome = _SEEN[path.stem] = evaluate(path, dspy_lm, run_native)
    assert outcome.status != "traceback", outcome.detail
    # never a wrong "verified": a verified conversion must be identical everywhere it was compared
    if outcome.status in ("verified", "exact"):
        assert outcome.result == "identical", outcome.detail


def test_corpus_share_identical(dspy_lm: Any, run_native: Any) -> None:
    outcomes = [_SEEN.get(p.stem) or evaluate(p, dspy_lm, run_native) for p in CORPUS]
    identical = sum(o.result == "identical" for o in outcomes)
    assert identical / len(outcomes) >= MIN_IDENTICAL, table(outcomes)


def table(outcomes: list[Outcome]) -> str:
    """The corpus table (markdown): program, construct, result, the import's status, why."""
    rows = ["| program | construct | result | status | detail |", "|---|---|---|---|---|"]
    rows += [f"| {o.program} | {o.construct} | {o.result} | {o.status} | {o.detail.replace('|', '/')} |"
             for o in outcomes]
    identical = sum(o.result == "identical" for o in outcomes)
    rows.append(f"\n{identical} of {len(outcomes)} identical on native ({100 * identical / len(outcomes):.0f}%)")
    return "\n".join(rows)
