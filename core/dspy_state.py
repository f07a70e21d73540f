"""What a ``dspy`` step's saved state may set: the text and demos of the module's predictors.

A program (or a stored version) carries a DSPy module's saved state as JSON. DSPy's own
``load_state`` trusts it completely: every key of a predictor's state is ``setattr`` onto the
predictor, so a state with ``config: {api_base: ...}`` would send the prompt, with the operator's
key, wherever it says; ``lm`` builds an LM. Here a state is checked against an allowlist built from
what DSPy 3.4.1's ``dump_state`` writes, before anything runs, and only the allowed parts are ever
applied (by the DSPy adapter, through :func:`predictor_parts`):

* a predictor's ``signature``: ``instructions`` and, per field (by position, as DSPy saves them),
  ``prefix`` and ``description`` — all text;
* its ``demos``: a list of objects of field name -> JSON value;
* ``lm: null``, ``traces: []``, ``train: []`` and ``fields: {}`` are accepted because DSPy writes
  them for every predictor; they set nothing (any other value is refused);
* a state's top-level ``metadata`` (DSPy's ``save`` writes the dependency versions) is ignored.

The state of a bare predictor (``dspy.Predict``) is one predictor state; the state of any other
module maps each predictor's name (as ``named_parameters`` spells it: ``generate.predict``,
``hops[0]``, ``tools['search']``) to its state. Everything else is refused with a JSON pointer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .pointers import escape as _esc

__all__ = ["ModuleShape", "module_shape", "predictor_parts", "state_problems"]

#: What a predictor state may contain, and the only value accepted for the keys that set nothing.
SETTABLE_KEYS = ("signature", "demos")
INERT_KEYS: dict[str, Any] = {"lm": None, "traces": [], "train": [], "fields": {}}
SIGNATURE_KEYS = ("instructions", "fields")
SAVED_FIELD_KEYS = ("prefix", "description")
MAX_DEMOS = 1_000

# How DSPy's named_parameters() spells a predictor's path: attributes, list indices and dict keys.
_PARAM_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\]|\['[^'\\]*'\])*\Z")
_REFUSED = ("a DSPy state may set only the signature text (instructions, field prefixes and descriptions) and "
            "the demos of the module's predictors; endpoints, keys, LMs and call settings come from the "
            "operator's LM profiles")


@dataclass(frozen=True)
class ModuleShape:
    """The predictors of a registered DSPy module: name -> its signature's field names, in order.

    ``bare`` is true when the module is itself a predictor (its state is one predictor state)."""

    bare: bool
    predictors: dict[str, tuple[str, ...]]


def module_shape(module: Any) -> ModuleShape:
    """The shape of a live DSPy module, read through DSPy's own ``named_parameters`` (no dspy import)."""
    params = list(module.named_parameters())
    bare = any(name == "self" for name, _ in params)
    if bare:
        params = [(name, p) for name, p in params if name == "self"]
    predictors: dict[str, tuple[str, ...]] = {}
    for name, param in params:
        signature = getattr(param, "signature", None)
        fields = getattr(signature, "fields", None)
        predictors[name] = tuple(fields) if isinstance(fields, dict) else ()
    return ModuleShape(bare, predictors)


def _is_bare(state: dict[str, Any], shape: ModuleShape | None) -> bool:
    """Whether ``state`` is one predictor's state. Known from the module when it is at hand; otherwise
    read from the state: a module's state maps names to predictor states (objects holding predictor
    keys), so anything else is read as one predictor's (and checked key by key)."""
    if shape is not None:
        return shape.bare
    allowed = {*SETTABLE_KEYS, *INERT_KEYS}
    return any(key in allowed or not isinstance(value, dict) or (value and not allowed & set(value))
               for key, value in state.items() if key != "metadata")


def state_problems(state: Any, shape: ModuleShape | None = None) -> list[tuple[str, str]]:
    """Every problem of a saved state as (pointer relative to the state, message); empty when safe.

    With the module's ``shape`` the predictor names and field counts are checked too; without it
    (module not registered here) only the allowlist is."""
    if not isinstance(state, dict):
        return [("", "a DSPy state is a JSON object (what the module's dump_state() writes)")]
    problems: list[tuple[str, str]] = []
    if "metadata" in state:
        _check_metadata(state["metadata"], problems)
    if _is_bare(state, shape):
        fields = shape.predictors.get("self") if shape is not None else None
        _check_predictor({k: v for k, v in state.items() if k != "metadata"}, "", fields, problems)
        return problems
    for name, entry in state.items():
        if name == "metadata":
            continue
        pointer = f"/{_esc(str(name))}"
        if shape is not None and name not in shape.predictors:
            known = ", ".join(shape.predictors) or "none"
            problems.append((pointer, f"{name!r} is not a predictor of this module (its predictors: {known}); "
                                      f"{_REFUSED}"))
            continue
        if shape is None and not _PARAM_NAME.match(str(name)):
            problems.append((pointer, f"{name!r} is not a predictor name; {_REFUSED}"))
            continue
        if not isinstance(entry, dict):
            problems.append((pointer, "a predictor's state is a JSON object"))
            continue
        _check_predictor(entry, pointer, shape.predictors[name] if shape is not None else None, problems)
    return problems


def _check_metadata(value: Any, problems: list[tuple[str, str]]) -> None:
    ok = isinstance(value, dict) and all(
        isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in value.values())
    if not ok:
        problems.append(("/metadata", "metadata is DSPy's record of dependency versions: objects of text only"))


def _check_predictor(entry: dict[str, Any], pointer: str, fields: tuple[str, ...] | None,
                     problems: list[tuple[str, str]]) -> None:
    for key, value in entry.items():
        where = f"{pointer}/{_esc(str(key))}"
        if key == "signature":
            _check_signature(value, where, fields, problems)
        elif key == "demos":
            _check_demos(value, where, problems)
        elif key in INERT_KEYS:
            if value != INERT_KEYS[key] or type(value) is not type(INERT_KEYS[key]):
                problems.append((where, f"{key!r} may only be {INERT_KEYS[key]!r} here (what DSPy saves); {_REFUSED}"))
        else:
            problems.append((where, f"{key!r} cannot be set from a program: {_REFUSED}"))


def _check_signature(value: Any, pointer: str, fields: tuple[str, ...] | None,
                     problems: list[tuple[str, str]]) -> None:
    if not isinstance(value, dict):
        problems.append((pointer, "a saved signature is an object with 'instructions' and 'fields'"))
        return
    for key, item in value.items():
        where = f"{pointer}/{_esc(str(key))}"
        if key == "instructions":
            if not isinstance(item, str):
                problems.append((where, "instructions are text"))
        elif key == "fields":
            if not isinstance(item, list):
                problems.append((where, "a saved signature's fields are a list of {prefix, description}"))
                continue
            if fields is not None and len(item) > len(fields):
                problems.append((where, f"{len(item)} saved fields, but the predictor's signature has "
                                        f"{len(fields)} ({', '.join(fields)})"))
            for i, saved in enumerate(item):
                if not isinstance(saved, dict):
                    problems.append((f"{where}/{i}", "a saved field is an object with 'prefix' and 'description'"))
                    continue
                for fkey, text in saved.items():
                    if fkey not in SAVED_FIELD_KEYS:
                        problems.append((f"{where}/{i}/{_esc(str(fkey))}",
                                         f"{fkey!r} cannot be set from a program: a saved field has only a "
                                         "'prefix' and a 'description'"))
                    elif not isinstance(text, str):
                        problems.append((f"{where}/{i}/{fkey}", f"a field's {fkey} is text"))
        else:
            problems.append((where, f"{key!r} cannot be set from a program: a saved signature has only "
                                    "'instructions' and 'fields'"))


def _check_demos(value: Any, pointer: str, problems: list[tuple[str, str]]) -> None:
    if not isinstance(value, list):
        problems.append((pointer, "demos are a list of objects (field name -> value)"))
        return
    if len(value) > MAX_DEMOS:
        problems.append((pointer, f"{len(value)} demos; at most {MAX_DEMOS}"))
        return
    for i, demo in enumerate(value):
        if not isinstance(demo, dict):
            problems.append((f"{pointer}/{i}", "a demo is an object of field name -> value"))
            continue
        for key in demo:
            if not key or str(key).startswith("_"):
                problems.append((f"{pointer}/{i}/{_esc(str(key))}",
                                 f"demo key {key!r}: a demo maps field names (not starting with '_') to values"))


def predictor_parts(state: dict[str, Any], shape: ModuleShape) -> dict[str, dict[str, Any]]:
    """The allowed parts of a checked state, per predictor name (``self`` for a bare predictor):
    ``instructions``, ``fields`` (list of {prefix?, description?}) and ``demos`` where given."""
    entries = {"self": state} if shape.bare else {k: v for k, v in state.items() if k != "metadata"}
    parts: dict[str, dict[str, Any]] = {}
    for name, entry in entries.items():
        if name not in shape.predictors or not isinstance(entry, dict):
            continue
        part: dict[str, Any] = {}
        signature = entry.get("signature")
        if isinstance(signature, dict):
            if isinstance(signature.get("instructions"), str):
                part["instructions"] = signature["instructions"]
            if isinstance(signature.get("fields"), list):
                part["fields"] = [{k: v for k, v in f.items() if k in SAVED_FIELD_KEYS and isinstance(v, str)}
                                  for f in signature["fields"] if isinstance(f, dict)]
        if isinstance(entry.get("demos"), list):
            part["demos"] = [dict(d) for d in entry["demos"] if isinstance(d, dict)]
        parts[name] = part
    return parts
