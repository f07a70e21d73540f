"""Golden tests: a field's constraints (``dspy.OutputField(ge=0, le=100)``) against the real DSPy 3.4.1.

DSPy turns pydantic constraint arguments into text (``greater than or equal to: 0``, in the order they
were given), prints it under the field's description (``Constraints: ...``) in every adapter's system
message, and checks no reply and no input against them. A program field keeps that text
(``constraints``) and does the same; every expected value here comes from DSPy itself.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

_CACHE = tempfile.mkdtemp(prefix="stepbridge-dspy-cache-")
os.environ.setdefault("DSPY_CACHEDIR", _CACHE)
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import dspy  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from stepbridge.adapters.dspy_convert import signature_from_dspy  # noqa: E402
from stepbridge.errors import ProgramValidationError  # noqa: E402
from stepbridge.formats import Prompt, chain_of_thought, to_dspy_signature  # noqa: E402
from stepbridge.loader import load_program  # noqa: E402
from stepbridge.signature import FieldSpec, Signature  # noqa: E402

ADAPTERS: dict[str, Any] = {"chat": dspy.ChatAdapter(), "json": dspy.JSONAdapter(), "xml": dspy.XMLAdapter()}


class Scored(dspy.Signature):
    """Give a suspicion score for the code."""

    code: str = dspy.InputField(min_length=2, desc="the code")
    task: str = dspy.InputField()
    score: int = dspy.OutputField(description="how likely a backdoor is", le=100, ge=0)  # le first: kept first
    ratio: float = dspy.OutputField(gt=0.5, multiple_of=0.25)
    name: str = dspy.OutputField(max_length=3)
    tags: list[str] = dspy.OutputField(desc="labels")


INPUTS = {"code": "def f(x): return x", "task": "identity"}


def test_the_constraint_text_is_dspys_in_the_order_given() -> None:
    sig = signature_from_dspy(Scored)
    assert sig.outputs["score"].constraints == "less than or equal to: 100, greater than or equal to: 0"
    assert sig.outputs["ratio"].constraints == "greater than: 0.5, a multiple of the given number: 0.25"
    assert sig.inputs["code"].constraints == "minimum length: 2"
    assert sig.outputs["tags"].constraints is None and sig.inputs["task"].constraints is None


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_messages_match_dspy(adapter: str) -> None:
    sig = signature_from_dspy(Scored)
    ours = Prompt(sig, adapter=adapter).messages(INPUTS)
    assert ours == ADAPTERS[adapter].format(Scored, [], INPUTS)
    assert "\nConstraints: less than or equal to: 100, greater than or equal to: 0\n" in ours[0]["content"]
    # the dspy backend's signature (export back to DSPy) prints the same
    assert ADAPTERS[adapter].format(to_dspy_signature(sig), [], INPUTS) == ours


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_chain_of_thought_matches_dspy(adapter: str) -> None:
    sig = signature_from_dspy(Scored)
    theirs = ADAPTERS[adapter].format(dspy.ChainOfThought(Scored).predict.signature, [], INPUTS)
    assert Prompt(chain_of_thought(sig), adapter=adapter).messages(INPUTS) == theirs


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_replies_outside_the_constraints_parse_as_in_dspy(adapter: str) -> None:
    """DSPy 3.4.1 does not check replies against the constraints (150 > le=100 is kept): neither do we."""
    sig = signature_from_dspy(Scored)
    outputs = {"score": 150, "ratio": 0.1, "name": "far too long", "tags": []}
    text = ADAPTERS[adapter].format_assistant_message_content(Scored, outputs)
    theirs = ADAPTERS[adapter].parse(Scored, text)
    assert Prompt(sig, adapter=adapter).parse(text) == theirs == outputs


_NUMBER = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False, width=32))
_CONSTRAINT = st.one_of(
    st.tuples(st.sampled_from(["gt", "ge", "lt", "le"]), _NUMBER),
    st.tuples(st.just("multiple_of"), st.one_of(st.integers(1, 10**6), st.floats(1e-6, 1e6))),  # pydantic: > 0
    st.tuples(st.sampled_from(["min_length", "max_length"]), st.integers(0, 10**4)),
)


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.lists(_CONSTRAINT, min_size=1, max_size=4, unique_by=lambda p: p[0]),
    desc=st.one_of(st.none(), st.text(max_size=30)),
    adapter=st.sampled_from(list(ADAPTERS)),
)
def test_any_constraints_print_as_in_dspy(pairs: list[tuple[str, Any]], desc: str | None, adapter: str) -> None:
    kwargs: dict[str, Any] = dict(pairs)
    if desc is not None:
        kwargs["desc"] = desc
    theirs_sig = dspy.Signature({"question": (str, dspy.InputField()), "value": (float, dspy.OutputField(**kwargs))},
                                "Answer.")
    sig = signature_from_dspy(theirs_sig)
    inputs = {"question": "q"}
    assert Prompt(sig, adapter=adapter).messages(inputs) == ADAPTERS[adapter].format(theirs_sig, [], inputs)


def _program(constraints: str | None) -> dict[str, Any]:
    field: dict[str, Any] = {"type": "int"}
    if constraints is not None:
        field["constraints"] = constraints
    return {"stepbridge": 1, "name": "p", "signature": "code -> score: int",
            "modules": {"m": {"type": "predict", "signature": {"inputs": {"code": {}}, "outputs": {"score": field}}}},
            "steps": [{"call": "m", "with": {"code": "$inputs.code"}, "as": "r"}, {"return": {"score": "$r.score"}}]}


def test_constraints_are_part_of_the_identity_and_survive_a_round_trip() -> None:
    plain, bounded = load_program(_program(None)), load_program(_program("greater than or equal to: 0"))
    assert plain.content_hash != bounded.content_hash
    # a field without constraints hashes as before they existed
    assert plain.modules["m"].signature.canonical()["outputs"]["score"] == {"type": "int", "desc": None}  # type: ignore[union-attr]
    again = load_program(bounded.to_dict())
    assert again.content_hash == bounded.content_hash
    assert again.modules["m"].signature.outputs["score"].constraints == "greater than or equal to: 0"  # type: ignore[union-attr]
    # the short string form cannot hold them: the long form is written
    assert isinstance(bounded.to_dict()["modules"]["m"]["signature"], dict)


def test_an_object_types_field_takes_no_constraints() -> None:
    data = _program(None)
    data["stepbridge"] = 2
    data["types"] = {"Score": {"fields": {"value": {"type": "int", "constraints": "greater than: 0"}}}}
    with pytest.raises(ProgramValidationError, match="takes no 'constraints'"):
        load_program(data)


def test_constraints_are_bounded_text() -> None:
    with pytest.raises(ValueError, match="at most 20000 characters"):
        FieldSpec(type="int", constraints="x" * 20_001)
    assert Signature(inputs={"a": {}}, outputs={"b": {"constraints": ""}}).to_string() == "a -> b"
