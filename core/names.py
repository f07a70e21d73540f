"""Names a program may give its modules and signature fields.

Backends turn program names into Python names: the DSPy adapter makes each module an attribute
of a ``dspy.Module`` and each field a keyword argument of ``dspy.Predict``, a pydantic field of a
``dspy.Signature`` and a key of a ``dspy.Prediction``. A name that is already an attribute or a
privileged argument there would reach Python internals (``__class__``, ``__deepcopy__``), change
what DSPy does (an input named ``config`` becomes the LM call's settings, one named ``demos``
replaces the few-shot examples) or answer differently on another backend. Such names are refused
for every backend, at validation, with a hint.

The lists are DSPy 3.4.1's (the pinned version), read from the real classes: ``tests/test_names.py``
checks them against the installed DSPy, so an upgrade that adds an attribute fails the tests.
"""

from __future__ import annotations

__all__ = ["PROGRAM_INPUT_NAMES", "RESERVED_FIELD_NAMES", "RESERVED_MODULE_NAMES", "field_name_problem",
           "module_name_problem"]

#: Public attributes of ``dspy.Module`` and of the DSPy adapter's ``ProgramModule`` (whose attributes the
#: program's modules become). Private and dunder names are refused by their leading underscore.
RESERVED_MODULE_NAMES = frozenset({
    "acall", "aforward", "batch", "callbacks", "deepcopy", "dump_state", "forward", "get_lm", "history",
    "inspect_history", "load", "load_state", "map_named_predictors", "named_parameters", "named_predictors",
    "named_sub_modules", "parameters", "predictors", "program", "program_modules", "reset_copy", "save", "set_lm",
})

#: Field names DSPy treats specially: ``dspy.Predict``'s privileged keyword arguments (``signature``,
#: ``demos``, ``config``, ``lm``, ``prediction``, ``new_signature``, and ``completions``, which its
#: ``forward`` passes positionally to ``_forward_postprocess``: an input of that name is a TypeError), the
#: parameters of the callback wrapper around every module call (``self``, ``instance``),
#: ``dspy.Prediction``'s ``completions`` property (an output of that name is hidden behind it), and
#: every public attribute of ``dspy.Signature`` (a field there shadows it: ``instructions``, ``fields``,
#: ``prepend``, pydantic's ``json``/``copy``/``validate``...). Names starting with ``model_`` (the rest
#: of pydantic's namespace, which a Signature is), ``dspy_`` (hidden by ``dspy.Example``) or ``_`` are
#: refused by prefix.
RESERVED_FIELD_NAMES = frozenset({
    "completions", "config", "demos", "instance", "lm", "new_signature", "prediction", "self",
    # dspy.Signature (class and metaclass), pydantic.BaseModel included
    "append", "append_instructions", "construct", "copy", "delete", "dict", "dump_state", "equals", "fields",
    "from_orm", "input_fields", "insert", "instructions", "json", "load_state", "mro", "output_fields", "parse_file",
    "parse_obj", "parse_raw", "prepend", "register", "schema", "schema_json", "signature", "update_forward_refs",
    "validate", "with_instructions", "with_updated_fields",
})
RESERVED_FIELD_PREFIXES = ("_", "model_", "dspy_")
#: Reserved names a *program* may take as an input: the program's DSPy module takes its inputs as
#: ``**kwargs`` and hands them to steps as data (never to ``dspy.Predict`` as they are), so ``completions``
#: there is DSPy's own argument of ``dspy.MultiChainComparison`` (``forward(completions, **kwargs)``),
#: which a step passes on as that module's ``completions``. As an output, or a field of a module's
#: signature, it stays reserved.
PROGRAM_INPUT_NAMES = frozenset({"completions"})


def module_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a module, or None."""
    if name.startswith("_"):
        return (f"module name {name!r} starts with '_': such names reach Python internals of the backends "
                f"(rename it, e.g. {name.lstrip('_') or 'module'!r})")
    if name in RESERVED_MODULE_NAMES:
        return (f"module name {name!r} is reserved: it is an attribute of the DSPy module a program becomes "
                f"(rename it, e.g. '{name}_step')")
    return None


def field_name_problem(name: str, *, program_input: bool = False) -> str | None:
    """Why ``name`` cannot name a signature field, or None (``program_input``: an input of the program's
    own signature, where :data:`PROGRAM_INPUT_NAMES` are allowed)."""
    if program_input and name in PROGRAM_INPUT_NAMES:
        return None
    prefix = next((p for p in RESERVED_FIELD_PREFIXES if name.startswith(p)), None)
    if prefix is not None:
        return (f"field name {name!r} starts with {prefix!r}, which DSPy reserves for its own attributes "
                f"(rename it, e.g. {name.removeprefix(prefix).lstrip('_') or 'value'!r})")
    if name in RESERVED_FIELD_NAMES:
        return (f"field name {name!r} is reserved: DSPy treats it specially (a Predict argument or a Signature "
                f"attribute), so it would not be a plain field (rename it, e.g. '{name}_value')")
    return None
