"""The allowlist of a ``dspy`` step's saved state, against what the pinned DSPy really saves.

Every state DSPy 3.4.1 writes for Predict, ChainOfThought, ReAct and nested modules (predictors in a
sub-module, a list, a dict) must pass; anything a state could use to reach an endpoint, a key, an LM,
a call setting or a Python attribute must be refused with a pointer, at any depth.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sb_dspy_modules import program
from stepbridge import load_program
from stepbridge.dspy_state import module_shape, predictor_parts, state_problems
from stepbridge.errors import ProgramValidationError
from stepbridge.registry import dspy_modules

MODULES = ["sec_bare_predict", "sec_cot", "sec_nested", "sec_react"]


def saved(name: str, *, demos: bool = False) -> dict[str, Any]:
    """What DSPy's own save() writes for the registered module (optionally with demos)."""
    module = dspy_modules.instance(name)
    if demos:
        for _, predictor in module.named_predictors():
            predictor.demos = [{"question": "q", "answer": "a", "augmented": True}]
    return json.loads(json.dumps(module.dump_state()))


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("demos", [False, True])
def test_what_dspy_saves_is_accepted(name: str, demos: bool) -> None:
    state = saved(name, demos=demos)
    shape = module_shape(dspy_modules.instance(name))
    assert state_problems(state, shape) == []
    assert state_problems(state) == []  # without the module at hand too
    state["metadata"] = {"dependency_versions": {"python": "3.11", "dspy": "3.4.1", "cloudpickle": "3.1"}}
    assert state_problems(state, shape) == []
    load_program(program(name, state))


def _first_predictor(state: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    if name == "sec_bare_predict":
        return "", state
    key = next(iter(state))
    return "/" + key.replace("~", "~0").replace("/", "~1"), state[key]


ATTACKS: list[tuple[str, Any]] = [
    ("config", {"api_base": "http://127.0.0.1:9/v1", "api_key": "x"}),
    ("lm", {"model": "openai/x", "api_base": "http://127.0.0.1:9/v1"}),
    ("api_base", "http://127.0.0.1:9/v1"),
    ("traces", [{"x": 1}]),
    ("train", [{"question": "q"}]),
    ("fields", {"answer": {"threshold": 0.5}}),
    ("callbacks", []),
    ("forward", "x"),
    ("__class__", {}),
    ("stage", "x"),
    ("unknown", 1),
]


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize(("key", "value"), ATTACKS)
def test_anything_else_in_a_predictor_state_is_refused_with_its_pointer(name: str, key: str, value: Any) -> None:
    state = saved(name)
    where, entry = _first_predictor(state, name)
    entry[key] = value
    pointer = f"/modules/m/state{where}/{key}"
    with pytest.raises(ProgramValidationError) as info:
        load_program(program(name, state))
    assert pointer in [i.pointer for i in info.value.issues], info.value.issues
    # and without the registered module at hand (a client that only validates)
    shape_free = state_problems(state)
    assert f"{where}/{key}" in [p for p, _ in shape_free]


@pytest.mark.parametrize(
    ("name", "edit", "pointer"),
    [
        ("sec_bare_predict", lambda s: s["signature"].update(api_base="x"), "/signature/api_base"),
        ("sec_bare_predict", lambda s: s["signature"]["fields"][0].update(api_base="x"),
         "/signature/fields/0/api_base"),
        ("sec_bare_predict", lambda s: s["signature"]["fields"][0].update(prefix=5), "/signature/fields/0/prefix"),
        ("sec_bare_predict", lambda s: s["signature"]["fields"].append({"prefix": "x"}), "/signature/fields"),
        ("sec_bare_predict", lambda s: s["signature"].update(instructions=["x"]), "/signature/instructions"),
        ("sec_bare_predict", lambda s: s.update(demos=[{"_store": {}}]), "/demos/0/_store"),
        ("sec_bare_predict", lambda s: s.update(demos="x"), "/demos"),
        ("sec_bare_predict", lambda s: s.update(lm="openai/gpt"), "/lm"),
        ("sec_bare_predict", lambda s: s.update(traces={}), "/traces"),
        ("sec_bare_predict", lambda s: s.update(metadata={"x": {"y": 1}}), "/metadata"),
        ("sec_cot", lambda s: s.update({"predict.config": {"api_base": "x"}}), "/predict.config"),
        ("sec_cot", lambda s: s.update({"other": s["predict"]}), "/other"),
        ("sec_cot", lambda s: s.update(predict=[]), "/predict"),
        ("sec_nested", lambda s: s["hops[1]"].update(config={"api_base": "x"}), "/hops[1]/config"),
        ("sec_nested", lambda s: s["by_name['first']"].update(lm={"model": "x"}), "/by_name['first']/lm"),
        ("sec_nested", lambda s: s.update({"hops[2]": s["hops[0]"]}), "/hops[2]"),
        ("sec_react", lambda s: s["extract.predict"].update(config={"base_url": "x"}), "/extract.predict/config"),
    ],
)
def test_refusals_point_at_the_offending_value(name: str, edit: Any, pointer: str) -> None:
    state = saved(name)
    edit(state)
    with pytest.raises(ProgramValidationError) as info:
        load_program(program(name, state))
    assert f"/modules/m/state{pointer}" in [i.pointer for i in info.value.issues], info.value.issues


def test_a_bare_predict_state_without_a_signature_is_still_checked() -> None:
    """The attack of issue 9: the predictor's own keys at the top, with no ``signature`` key at all."""
    for state in ({"config": {"api_base": "http://127.0.0.1:9/v1"}}, {"demos": [], "config": {"api_base": "x"}},
                  {"lm": None, "config": {"api_base": "x"}}):
        with pytest.raises(ProgramValidationError) as info:
            load_program(program("sec_bare_predict", state))
        assert "/modules/m/state/config" in [i.pointer for i in info.value.issues]


def test_a_state_that_is_not_an_object_is_refused() -> None:
    for state in ([], "x", 5):
        with pytest.raises(ProgramValidationError) as info:
            load_program(program("sec_cot", state))
        assert any(i.pointer.startswith("/modules/m/state") for i in info.value.issues)


def test_the_backstop_refuses_models_built_without_validation() -> None:
    """Program.model_validate (what code paths other than validation use) refuses the same states."""
    from pydantic import ValidationError
    from stepbridge import Program

    state = saved("sec_bare_predict")
    state["config"] = {"api_base": "http://127.0.0.1:9/v1"}
    with pytest.raises(ValidationError, match="state/config"):
        Program.model_validate(program("sec_bare_predict", state))


def test_allowed_parts_are_what_the_adapter_applies() -> None:
    state = saved("sec_nested", demos=True)
    state["hops[1]"]["signature"]["instructions"] = "Be brief."
    state["hops[1]"]["signature"]["fields"][0]["description"] = "what to look up"
    parts = predictor_parts(state, module_shape(dspy_modules.instance("sec_nested")))
    assert set(parts) == {"inner.predict", "hops[0]", "hops[1]", "by_name['first']"}
    assert parts["hops[1]"]["instructions"] == "Be brief."
    assert parts["hops[1]"]["fields"][0]["description"] == "what to look up"
    assert parts["hops[0]"]["demos"] == [{"question": "q", "answer": "a", "augmented": True}]
    assert all(set(p) <= {"instructions", "fields", "demos"} for p in parts.values())


# -- random damage: any key added anywhere outside the allowlist is refused -----------------------
_PATHS = st.sampled_from(["", "/signature", "/signature/fields/0", "/demos/0"])
_KEYS = st.text(min_size=1, max_size=12).filter(lambda k: k not in ("signature", "demos", "instructions", "fields",
                                                                     "prefix", "description", "metadata"))


@given(path=_PATHS, key=_KEYS, value=st.one_of(st.none(), st.integers(), st.text(max_size=5), st.just({})))
@settings(max_examples=200, deadline=None)
def test_random_keys_outside_the_allowlist_are_refused(path: str, key: str, value: Any) -> None:
    state = copy.deepcopy(_BASE)
    target: Any = state
    for part in [p for p in path.split("/") if p]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[key] = value
    problems = state_problems(state, _SHAPE)
    if path == "/demos/0" and not key.startswith("_"):
        assert problems == []  # a demo is field name -> any value
    elif path == "" and key in ("lm", "traces", "train") and value == {"lm": None, "traces": [], "train": []}[key]:
        assert problems == []
    else:
        escaped = key.replace("~", "~0").replace("/", "~1")
        assert f"{path}/{escaped}" in [p for p, _ in problems], problems


_BASE = saved("sec_bare_predict", demos=True)
_SHAPE = module_shape(dspy_modules.instance("sec_bare_predict"))
