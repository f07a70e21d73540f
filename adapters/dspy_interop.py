"""DSPy interop: existing DSPy programs in, programs out to DSPy, optimizers in between.

* :func:`import_module` (:mod:`stepbridge.adapters.dspy_import`) turns a live DSPy module into a
  program and reports, per construct, how faithful the conversion is.
* :func:`to_module` is the program as a real ``dspy.Module`` (:class:`stepbridge.adapters.dspy.ProgramModule`);
  :func:`export_state` is its state, loadable with DSPy's own ``module.load(path)``.
* :func:`from_module` turns an optimized :class:`ProgramModule` back into a program (demos and
  instructions filled in, a source note in the description); :func:`optimize` runs a DSPy optimizer
  (``BootstrapFewShot`` by default) on a program end to end.

DSPy is imported lazily (through :mod:`stepbridge.adapters.dspy`, which sets DSPy up to work offline).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from stepbridge.errors import ConversionError
from stepbridge.program import Program

from .dspy_convert import _demo_dicts, _dspy
from .dspy_import import Construct, ImportReport, Verification, import_module, signature_from_dspy, verify

__all__ = [
    "Construct",
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
