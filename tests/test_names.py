"""Names that would reach Python attributes are refused for every backend, at validation, with a
pointer and a hint; the reserved lists are checked against the real DSPy classes."""

from __future__ import annotations

import asyncio
import keyword
from typing import Any

import dspy
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stepbridge import Program, ProgramValidationError, RunOptions, load_program
from stepbridge.adapters.dspy import DSPyAdapter, ProgramModule
from stepbridge.adapters.native import NativeAdapter
from stepbridge.names import PROGRAM_INPUT_NAMES, RESERVED_MODULE_NAMES, field_name_problem, module_name_problem


def qa(module: str = "m", sig: Any = "question -> answer", program_sig: Any = "question -> answer") -> dict[str, Any]:
    return {"stepbridge": 1, "name": "names", "signature": program_sig,
            "modules": {module: {"type": "predict", "signature": sig}},
            "steps": [{"call": module, "with": {"question": "$inputs.question"}, "as": "r"},
                      {"return": {"answer": "$r.answer"}}]}


def issues(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ProgramValidationError) as info:
        load_program(data)
    return [(i.pointer, i.message) for i in info.value.issues]


@pytest.mark.parametrize("name", ["__class__", "__dict__", "__deepcopy__", "__reduce__", "__init__", "_sb_program",
                                  "_compiled", "_x", "forward", "named_predictors", "load_state", "program",
                                  "history", "callbacks", "deepcopy", "save"])
def test_module_names_reaching_attributes_are_refused(name: str) -> None:
    found = issues(qa(module=name))
    assert any(p == f"/modules/{name}" and "rename it" in m for p, m in found), found


@pytest.mark.parametrize("name", ["demos", "signature", "fields", "instructions", "model_config", "config", "lm",
                                  "self", "instance", "completions", "new_signature", "prediction", "input_fields",
                                  "output_fields", "_private", "__class__", "dspy_uuid", "model_dump"])
def test_field_names_reaching_dspy_internals_are_refused_everywhere(name: str) -> None:
    # in a module's string signature: the pointer is the signature
    found = issues(qa(sig=f"question, {name} -> answer"))
    assert any(p == "/modules/m/signature" and "rename it" in m for p, m in found), found
    # in long form: the pointer is the field
    long_form = {"inputs": {"question": {}}, "outputs": {"answer": {}, name: {}}}
    found = issues(qa(sig=long_form))
    assert ("/modules/m/signature/outputs/" + name) in [p for p, _ in found], found
    # in the program's own signature: as an output always; as an input unless a program may take it
    found = issues(qa(program_sig=f"question -> answer, {name}"))
    assert "/signature" in [p for p, _ in found], found
    if name not in PROGRAM_INPUT_NAMES:
        found = issues(qa(program_sig=f"question, {name} -> answer"))
        assert "/signature" in [p for p, _ in found], found


def test_completions_is_a_program_input_only() -> None:
    """DSPy's MultiChainComparison takes ``completions``: a program may too (its DSPy module takes inputs as
    ``**kwargs``); a module's field of that name reaches ``dspy.Predict``'s own argument (a TypeError)."""
    assert {"completions"} == PROGRAM_INPUT_NAMES
    assert field_name_problem("completions", program_input=True) is None
    assert field_name_problem("completions") is not None
    assert field_name_problem("demos", program_input=True) is not None
    from dspy.utils.dummies import DummyLM

    with dspy.context(lm=DummyLM([{"answer": "a"}])), pytest.raises(TypeError, match="completions"):
        dspy.Predict("completions -> answer")(completions="x")


def test_the_program_model_refuses_reserved_module_names_too() -> None:
    with pytest.raises(pydantic.ValidationError, match="__deepcopy__"):
        Program.model_validate(qa(module="__deepcopy__"))


def test_ordinary_names_are_fine() -> None:
    for name in ("demo", "signatures", "items", "labels", "inputs", "keys", "values", "text", "class_", "lambda"):
        assert field_name_problem(name) is None
        assert module_name_problem(name) is None
        load_program(qa(sig=f"question -> answer, {name}"))


def test_reserved_module_names_cover_every_attribute_of_the_dspy_program_module() -> None:
    program = load_program(qa())
    instance = ProgramModule(program)
    public = {n for n in [*dir(ProgramModule), *vars(instance)] if not n.startswith("_")} - set(program.modules)
    assert public <= RESERVED_MODULE_NAMES, sorted(public - RESERVED_MODULE_NAMES)


def test_reserved_field_names_cover_every_attribute_of_a_dspy_signature() -> None:
    """A field shadowing a Signature attribute (pydantic warns about each) is refused: DSPy's modules and
    optimizers call them (ChainOfThought prepends, optimizers rewrite instructions)."""
    public = {n for n in set(dir(dspy.Signature)) | set(dir(type(dspy.Signature))) if not n.startswith("_")}
    assert {n for n in public if field_name_problem(n) is None} == set()


def _candidates() -> list[str]:
    """Every public attribute of DSPy's Signature, Example, Prediction and Predict (class and instance) and
    of pydantic's BaseModel, plus Python keywords and a few likely words: not refused -> must be plain."""
    names = set(dir(dspy.Signature)) | set(dir(type(dspy.Signature))) | set(dir(dspy.Example))
    names |= set(dir(dspy.Prediction)) | set(vars(dspy.Prediction())) | set(dir(dspy.Predict))
    names |= set(vars(dspy.Predict("a -> b"))) | set(dir(pydantic.BaseModel)) | set(keyword.kwlist)
    names |= {"args", "kwargs", "fn", "cls", "trace", "reasoning", "outputs", "base", "answer_"}
    return sorted(n for n in names if n.isidentifier() and not n.startswith("_"))


async def _runs(names: list[str]) -> dict[str, list[str]]:
    """Which names answer differently on native and dspy (outputs, or the messages sent)."""
    native, dspy_adapter = NativeAdapter(), DSPyAdapter()
    differ: dict[str, list[str]] = {}
    try:
        for name in names:
            as_input = {"question": "q?", name: "v"}
            for kind, sig, inputs in (("predict", f"question, {name} -> answer", as_input),
                                      ("predict", f"question -> {name}", {"question": "q?"}),
                                      ("chain_of_thought", f"question, {name} -> answer", as_input)):
                data = qa(sig=sig, program_sig=sig)
                data["modules"]["m"]["type"] = kind
                data["steps"] = [{"call": "m", "with": {k: f"$inputs.{k}" for k in inputs}, "as": "r"},
                                 {"return": {o: f"$r.{o}" for o in sig.split("-> ")[1].split(", ")}}]
                try:
                    program = load_program(data)
                except ProgramValidationError:
                    differ.setdefault(name, []).append("refused")
                    continue
                seen = []
                for adapter in (native, dspy_adapter):
                    try:
                        result = await adapter.run(program, inputs, RunOptions())
                        seen.append((result.outputs, [c.messages for t in result.trace for c in t.lm_calls]))
                    except Exception as exc:
                        seen.append((type(exc).__name__, str(exc)[:200]))
                if seen[0] != seen[1]:
                    differ.setdefault(name, []).append(f"{sig}: {seen[0]!r:.200} != {seen[1]!r:.200}")
    finally:
        await native.aclose()
        await dspy_adapter.aclose()
    return differ


def test_every_name_not_refused_behaves_the_same_on_native_and_dspy() -> None:
    """The probe the reserved list was built from, run against the installed DSPy: a name DSPy treats
    specially answers differently on the two backends, so it must be refused (and a refused name must
    really be one of those, or named in the docs)."""
    differ = asyncio.run(_runs(_candidates()))
    not_refused = {n: why for n, why in differ.items() if "refused" not in why}
    assert not not_refused, not_refused
    assert all(field_name_problem(n) for n in ("demos", "config", "lm", "signature", "instructions"))


@given(st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(
    lambda n: field_name_problem(n) is None and n not in ("question", "answer") and not keyword.iskeyword(n)))
@settings(max_examples=25, deadline=None)
def test_random_ordinary_field_names_behave_the_same_on_native_and_dspy(name: str) -> None:
    assert asyncio.run(_runs([name])) == {}
