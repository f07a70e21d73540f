"""The program IR: content hash, canonical form, dump -> load round trips, JSON Schema."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from stepbridge.loader import load_program, parse_document
from stepbridge.program import Program, canonical_json
from stepbridge.validate import validate_data

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def raw(name: str = "rag_qa") -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


def h(data: dict[str, Any]) -> str:
    return validate_data(data).content_hash


def shuffled(value: Any, rnd: random.Random, *, keep: bool = False) -> Any:
    """The same data with every mapping's keys in a random order, except a signature's fields (their
    order is the prompt's order, so it is meaningful); lists keep their order."""
    if isinstance(value, dict):
        items = list(value.items())
        if not keep:
            rnd.shuffle(items)
        return {k: shuffled(v, rnd, keep=k in ("inputs", "outputs")) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


# -- hash stability ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rag_qa", "multihop", "classify"])
@given(rnd=st.randoms(use_true_random=False))
@settings(max_examples=25)
def test_hash_is_stable_across_key_order(name: str, rnd: random.Random) -> None:
    data = raw(name)
    data["lm"] = {"temperature": 0.3, "max_tokens": 5, "adapter": "chat", "model": "openai/x"}
    data["steps"][-1]["return"] = dict(reversed(data["steps"][-1]["return"].items()))
    assert h(shuffled(data, rnd)) == h(data)


@given(st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1))
def test_integral_floats_hash_like_ints(n: int) -> None:
    a, b = raw(), raw()
    a["modules"]["search"]["retriever"]["opt"] = {"n": n, "list": [n]}  # retriever options are free JSON
    b["modules"]["search"]["retriever"]["opt"] = {"n": float(n), "list": [float(n)]}
    assert h(a) == h(b)
    c = raw()
    c["modules"]["search"]["retriever"]["opt"] = {"n": n + 0.5, "list": [n]}
    if abs(n) < 2**51:
        assert h(c) != h(a)


def test_numeric_spellings_hash_alike() -> None:
    base = h(raw())
    for path, value in ((("lm", "temperature"), 0), (("lm", "temperature"), 0.0),
                        (("modules", "search", "k"), 3.0), (("stepbridge",), 1.0)):
        data = raw()
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert h(data) == base, path


def test_defaults_spelled_out_hash_like_defaults_left_out() -> None:
    base = h(raw())
    data = raw()
    data["modules"]["answer"]["demos"] = []
    data["modules"]["search"]["k"] = 3  # the default
    data["lm"] = {"temperature": 0.0, "model": None}
    assert h(data) == base
    data = raw()
    data["modules"]["answer"]["lm"] = {}  # sets nothing
    assert h(data) == base


def test_short_and_long_signature_forms_hash_alike() -> None:
    data = raw()
    data["signature"] = {"inputs": {"question": {}}, "outputs": {"answer": {"type": "str"}}}
    data["modules"]["answer"]["signature"] = {
        "inputs": {"context": {"type": "List[str]"}, "question": {"type": "str", "desc": None}},
        "outputs": {"answer": {}},
    }
    assert h(data) == h(raw())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(name="rag_qa2"),
        lambda d: d.update(description="Answer a question."),
        lambda d: d.pop("description"),
        lambda d: d.update(signature={"inputs": {"question": {"desc": "a question"}}, "outputs": {"answer": {}}}),
        lambda d: d["lm"].update(temperature=0.5),
        lambda d: d["lm"].update(adapter="json"),
        lambda d: d["modules"]["search"].update(k=4),
        lambda d: d["modules"]["search"]["retriever"].update(corpus="data/other.jsonl"),
        lambda d: d["modules"]["answer"].update(type="predict"),
        lambda d: d["modules"]["answer"].update(instructions="Answer briefly."),
        lambda d: d["modules"]["answer"].update(signature={
            "inputs": {"context": {"type": "list[str]", "desc": "passages"}, "question": {}},
            "outputs": {"answer": {}}}),
        lambda d: d["modules"]["answer"].update(signature="question, context: list[str] -> answer"),  # field order
        lambda d: d["modules"]["answer"].update(demos=[{"question": "q", "answer": "1"}]),
        lambda d: d["modules"]["answer"].update(lm={"max_tokens": 10}),
        lambda d: d["steps"][1]["with"].update(question="$$inputs.question"),
        lambda d: d["steps"][1].update({"as": "res"}) or d["steps"][2]["return"].update(answer="$res.answer"),
    ],
)
def test_hash_changes_when_anything_meaningful_changes(mutate: Any) -> None:
    data = raw()
    mutate(data)
    assert h(data) != h(raw())


def test_string_and_number_and_bool_literals_hash_differently() -> None:
    hashes = set()
    for value in ("1", 1, True, 1.5, None):
        data = raw()
        data["modules"]["search"]["retriever"]["opt"] = value
        hashes.add(h(data))
    assert len(hashes) == 5


def test_unicode_is_not_normalised() -> None:
    # NFC "é" and NFD "e\u0301" are different bytes sent to an LM, so they are different programs
    a, b = raw(), raw()
    a["description"], b["description"] = "caf\u00e9", "cafe\u0301"
    assert h(a) != h(b)


def test_hash_is_sha256_of_canonical_json_and_64_hex() -> None:
    program = load_program(EXAMPLES / "rag_qa.yaml")
    assert len(program.content_hash) == 64
    int(program.content_hash, 16)
    canon = program.canonical()
    assert canon["signature"] == {"instructions": None, "inputs": {"question": {"type": "str", "desc": None}},
                                  "outputs": {"answer": {"type": "str", "desc": None}}}
    assert canon["modules"]["answer"]["type"] == "chain_of_thought"
    # canonical() is itself a loadable program with the same identity
    assert Program.model_validate(canon).content_hash == program.content_hash


def test_model_copy_with_update_does_not_keep_a_stale_hash() -> None:
    program = load_program(EXAMPLES / "rag_qa.yaml")
    before = program.content_hash
    renamed = program.model_copy(update={"name": "other"})
    assert renamed.name == "other"
    assert renamed.content_hash != before
    assert renamed.content_hash == h({**raw(), "name": "other"})
    assert program.model_copy().content_hash == before


def test_canonical_json_rules() -> None:
    assert canonical_json({"b": 1.0, "a": [2.5, "é"]}) == '{"a":[2.5,"é"],"b":1}'
    assert canonical_json({"x": 2.0**60}) == '{"x":1.152921504606847e+18}'  # beyond 2**53 stays a float
    with pytest.raises(ValueError, match="NaN"):
        canonical_json({"x": float("nan")})


# -- dump -> load ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("suffix", [".yaml", ".json", ".yml"])
def test_dump_load_round_trip(path: Path, suffix: str, tmp_path: Path) -> None:
    program = load_program(path)
    out = tmp_path / f"copy{suffix}"
    (tmp_path / "data").symlink_to(EXAMPLES / "data")
    program.dump(out)
    again = load_program(out)
    assert again.content_hash == program.content_hash
    assert again.to_dict() == program.to_dict()
    if suffix == ".json":
        json.loads(out.read_text())  # really JSON


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_to_yaml_and_to_json_parse_back(path: Path) -> None:
    program = load_program(path)
    for text in (program.to_yaml(), program.to_json(), program.to_json(indent=None)):
        data, _ = parse_document(text)
        assert validate_data(data).content_hash == program.content_hash


def test_to_dict_keeps_short_signatures_and_drops_empty_defaults() -> None:
    program = load_program(EXAMPLES / "multihop.yaml")
    data = program.to_dict()
    assert data["signature"] == "question -> answer, second_query"
    assert data["modules"]["answer"]["signature"] == "context: list[str], facts: list[str], question -> answer"
    assert "demos" not in data["modules"]["answer"]
    assert data["steps"][3]["item"] == "passage"  # non-default item kept
    classify = load_program(EXAMPLES / "classify.yaml").to_dict()
    assert classify["modules"]["route"]["signature"]["inputs"]["ticket"]["desc"] == "the customer's message"


tricky_text = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufeff"), max_size=5),
        st.sampled_from(["\n", "\t", " ", "yes", "null", "~", "1.0", "0x1F", "2024-01-01", "- ", "#", ": ", "'", '"',
                         "&a", "*a", "!!python/object:os.system", "%", "@", "---", "$$x", "\\"]),
    ),
    max_size=8,
).map("".join)


@given(description=tricky_text, literal=tricky_text)
@settings(max_examples=60, deadline=None)
def test_yaml_round_trip_keeps_arbitrary_strings_as_strings(description: str, literal: str) -> None:
    data = raw()
    data["description"] = description
    data["modules"]["answer"]["instructions"] = literal
    program = validate_data(data)
    loaded, _ = parse_document(program.to_yaml())
    assert loaded["description"] == description
    assert loaded["modules"]["answer"]["instructions"] == literal
    assert validate_data(loaded).content_hash == program.content_hash


# -- JSON Schema -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return Program.model_json_schema(by_alias=True)


def test_schema_is_a_valid_json_schema(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["required"]) >= {"stepbridge", "name", "signature", "steps"}
    assert "with" in schema["$defs"]["CallStep"]["properties"]  # aliases, not python names
    assert "return" in schema["$defs"]["ReturnStep"]["properties"]


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_schema_accepts_every_example(schema: dict[str, Any], path: Path) -> None:
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_schema_accepts_the_long_signature_form_and_rejects_junk(schema: dict[str, Any]) -> None:
    data = raw()
    data["signature"] = {"inputs": {"question": {"type": "str"}}, "outputs": {"answer": {}}}
    jsonschema.validate(data, schema)
    for bad in ({**raw(), "extra": 1}, {**raw(), "signature": 5},
                {**raw(), "lm": {"base_url": "http://evil.example"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    bad_module = raw()
    bad_module["modules"]["answer"]["type"] = "eval"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad_module, schema)


def test_required_capabilities() -> None:
    assert load_program(EXAMPLES / "rag_qa.yaml").required_capabilities == {"retrieve"}
    assert load_program(EXAMPLES / "multihop.yaml").required_capabilities == {"retrieve", "map"}
    data = raw("classify")
    data["lm"] = {"adapter": "json"}
    assert validate_data(data).required_capabilities == {"json_adapter"}


def test_line_of_falls_back_to_the_nearest_ancestor() -> None:
    lines = (EXAMPLES / "rag_qa.yaml").read_text().splitlines()

    def line(text: str) -> int:
        return next(i for i, t in enumerate(lines, 1) if text in t)

    program = load_program(EXAMPLES / "rag_qa.yaml")
    assert program.line_of("/steps/1/with/context") == line("with: {context: $found.passages")
    assert program.line_of("/steps/1/with/nope/deeper") == line("with: {context: $found.passages")
    assert program.line_of("/steps/1") == line("- call: answer")
    assert program.line_of("/modules/search/k") == line("k: 3")
    assert program.line_of("/modules/search") == line("  search:")
    assert program.base_dir == EXAMPLES
