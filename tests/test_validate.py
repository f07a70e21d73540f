"""Validation (DESIGN section 2): every problem at once, each with a JSON pointer, a line and a hint."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stepbridge.errors import InputValidationError, Issue, ProgramValidationError
from stepbridge.loader import load_program
from stepbridge.registry import tool_signature, tools
from stepbridge.validate import check_inputs, validate, validate_data

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RAG = (EXAMPLES / "rag_qa.yaml").read_text()


def raw(name: str = "rag_qa") -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


def issues_of(source: dict[str, Any] | str) -> list[Issue]:
    with pytest.raises(ProgramValidationError) as info:
        if isinstance(source, str):
            load_program(source)
        else:
            validate_data(source)
    return info.value.issues


def the(issues: list[Issue], pointer: str, severity: str = "error") -> Issue:
    found = [i for i in issues if i.pointer == pointer and i.severity == severity]
    assert len(found) == 1, [str(i) for i in issues]
    return found[0]


def line_of(text: str, needle: str) -> int:
    return next(n for n, t in enumerate(text.splitlines(), 1) if needle in t)


# -- references ------------------------------------------------------------------------------------


def test_unknown_reference_with_did_you_mean_pointer_and_line() -> None:
    text = RAG.replace("context: $found.passages", "context: $fond.passages")
    issue = the(issues_of(text), "/steps/1/with/context")
    assert issue.message == "unknown reference $fond.passages"
    assert issue.suggestion == "$found"
    assert issue.line == line_of(text, "$fond.passages")
    assert str(issue) == (f"/steps/1/with/context (line {issue.line}): unknown reference $fond.passages "
                          "(did you mean $found?)")


def test_field_the_producer_does_not_output() -> None:
    data = raw()
    data["steps"][1]["with"]["context"] = "$found.pasages"
    issue = the(issues_of(data), "/steps/1/with/context")
    assert "unknown field 'pasages'" in issue.message
    assert "passages, ids, scores" in issue.message
    assert issue.suggestion == "$found.passages"


def test_unknown_program_input_field() -> None:
    data = raw()
    data["steps"][0]["with"]["query"] = "$inputs.questoin"
    issue = the(issues_of(data), "/steps/0/with/query")
    assert "program inputs have question" in issue.message
    assert issue.suggestion == "$inputs.question"


def test_chain_of_thought_results_have_reasoning() -> None:
    data = raw()
    data["signature"] = "question -> answer, why"
    data["steps"][2]["return"]["why"] = "$result.reasoning"
    assert validate_data(data).signature.outputs.keys() == {"answer", "why"}
    data["modules"]["answer"]["type"] = "predict"
    assert "unknown field 'reasoning'" in the(issues_of(data), "/steps/2/return/why").message


def test_reference_without_field_and_malformed_reference() -> None:
    data = raw()
    data["steps"][1]["with"]["context"] = "$found"
    data["steps"][1]["with"]["question"] = "$inputs.question.text"
    issues = issues_of(data)
    assert "needs a field" in the(issues, "/steps/1/with/context").message
    assert "need 'stepbridge: 2'" in the(issues, "/steps/1/with/question").message  # a path: format 2 only


def test_use_before_produce() -> None:
    data = raw()
    data["steps"][0], data["steps"][1] = data["steps"][1], data["steps"][0]
    issue = the(issues_of(data), "/steps/0/with/context")
    assert issue.message == "$found.passages is used before step 1 produces it"


def test_references_nested_in_lists_are_checked() -> None:
    data = raw()
    data["steps"][1]["with"]["context"] = ["$found.passages", "$fuond.ids"]
    issue = the(issues_of(data), "/steps/1/with/context/1")
    assert issue.suggestion == "$found"


def test_escaped_dollar_is_a_literal_not_a_reference() -> None:
    data = raw()
    data["steps"][1]["with"]["question"] = "$$inputs.question"
    assert validate_data(data).steps[1].with_["question"] == "$$inputs.question"


# -- modules and inputs ----------------------------------------------------------------------------


def test_unknown_module_with_suggestion() -> None:
    data = raw()
    data["steps"][0]["call"] = "serch"
    issues = issues_of(data)
    issue = the(issues, "/steps/0/call")
    assert (issue.message, issue.suggestion) == ("unknown module 'serch'", "search")
    assert "never called" in the(issues, "/modules/search", "warning").message


def test_missing_required_input() -> None:
    data = raw()
    del data["steps"][1]["with"]["question"]
    assert the(issues_of(data), "/steps/1/with").message == "missing required input 'question'"


def test_optional_input_may_be_left_out() -> None:
    data = raw()
    data["modules"]["answer"]["signature"] = "context: list[str], question, hint: Optional[str] -> answer"
    assert validate_data(data).name == "rag_qa"


def test_argument_that_is_not_an_input_with_suggestion() -> None:
    data = raw()
    data["steps"][1]["with"]["qestion"] = data["steps"][1]["with"].pop("question")
    issues = issues_of(data)
    issue = the(issues, "/steps/1/with/qestion")
    assert issue.suggestion == "question"
    assert "not an input of this module" in issue.message
    assert the(issues, "/steps/1/with").message == "missing required input 'question'"


def test_demo_field_not_in_signature() -> None:
    data = raw()
    data["modules"]["answer"]["demos"] = [{"question": "q", "answer": "a", "reasoning": "r"}, {"questoin": "q"}]
    issue = the(issues_of(data), "/modules/answer/demos/1/questoin")
    assert issue.suggestion == "question"


def test_invalid_module_signature_points_at_it() -> None:
    data = raw()
    data["modules"]["answer"]["signature"] = "context: lits[str], question -> answer"
    issue = the(issues_of(data), "/modules/answer/signature")
    assert "unknown type 'lits'" in issue.message


def test_unknown_module_type_with_suggestion() -> None:
    data = raw()
    data["modules"]["answer"]["type"] = "chain_of_thougth"
    issue = the(issues_of(data), "/modules/answer/type")
    assert issue.suggestion == "chain_of_thought"
    assert "predict, chain_of_thought, retrieve, tool, dspy" in issue.message


@pytest.mark.parametrize("module", [{"signature": "a -> b"}, None, 5])
def test_module_without_type(module: Any) -> None:
    data = raw()
    data["modules"]["answer"] = module
    assert "needs a 'type'" in the(issues_of(data), "/modules/answer").message


def test_shape_errors_point_at_the_field_even_when_it_is_named_like_a_step_kind() -> None:
    data = raw()
    data["steps"][0]["call"] = ["search"]
    data["steps"][2] = {"return": "$result.answer"}
    data["modules"]["search"]["k"] = "three"
    data["modules"]["answer"]["signature"] = {"inputs": {"map": {"type": 5}}, "outputs": {"answer": {}}}
    issues = issues_of(data)
    # pointers, not pydantic's wording (which a patch release may change)
    assert the(issues, "/steps/0/call")
    assert the(issues, "/steps/2/return")
    assert the(issues, "/modules/search/k")
    assert the(issues, "/modules/answer/signature/inputs/map/type")
    # a malformed return step is still a return step
    assert not [i for i in issues if "missing 'return'" in i.message]


def test_a_broken_step_does_not_make_its_result_unknown_downstream() -> None:
    data = raw()
    data["steps"][0]["with"] = None
    issues = issues_of(data)
    assert the(issues, "/steps/0/with")
    assert not [i for i in issues if "unknown reference" in i.message], [str(i) for i in issues]


class CountOut(TypedDict):
    total: int
    words: list[str]


def count_words(text: str, limit: int | None = None) -> CountOut:
    """Count words."""
    return {"total": 0, "words": []}


def test_tool_modules_use_the_registered_signature() -> None:
    count = count_words
    sig = tool_signature(count)
    assert sig.instructions == "Count words."
    assert {k: f.type for k, f in sig.inputs.items()} == {"text": "str", "limit": "Optional[int]"}
    assert {k: f.type for k, f in sig.outputs.items()} == {"total": "int", "words": "list[str]"}

    data = {"stepbridge": 1, "name": "t", "signature": "text -> n: int",
            "modules": {"counter": {"type": "tool", "tool": "test_count_words"}},
            "steps": [{"call": "counter", "with": {"text": "$inputs.text"}, "as": "c"},
                      {"return": {"n": "$c.total"}}]}
    tools.register("test_count_words", count)
    try:
        assert validate_data(data).required_capabilities == {"tools"}
        data["steps"][1]["return"]["n"] = "$c.words"
        assert "type mismatch" in the(issues_of(data), "/steps/1/return/n").message
    finally:
        tools.unregister("test_count_words")
    data["modules"]["counter"]["tool"] = "os.system"
    issue = the(issues_of(data), "/modules/counter/tool")
    assert "never import paths" in issue.message


def test_unknown_dspy_module() -> None:
    data = raw()
    data["modules"]["answer"] = {"type": "dspy", "module": "my_thing",
                                 "signature": "context: list[str], question -> answer"}
    assert "register it by exact name" in the(issues_of(data), "/modules/answer/module").message


def test_unknown_retriever_with_suggestion() -> None:
    data = raw()
    data["modules"]["search"]["retriever"]["kind"] = "bm52"
    assert the(issues_of(data), "/modules/search/retriever/kind").suggestion == "bm25"


def test_corpus_must_be_a_relative_path_not_a_url() -> None:
    data = raw()
    data["modules"]["search"]["retriever"]["corpus"] = "https://evil.example/corpus.jsonl"
    assert "not a URL" in the(issues_of(data), "/modules/search/retriever/corpus").message


# -- types ---------------------------------------------------------------------------------------


def test_type_mismatch_between_producer_and_consumer() -> None:
    data = raw("multihop")
    data["steps"][4]["with"]["facts"] = "$hop.query"
    issue = the(issues_of(data), "/steps/4/with/facts")
    assert issue.message == "type mismatch: $hop.query is str but 'facts' expects list[str]"
    data = raw("multihop")
    data["steps"][2]["with"]["query"] = "$first.passages"  # a retriever's query is not a prompt: refused
    issue = the(issues_of(data), "/steps/2/with/query")
    assert issue.message == "type mismatch: $first.passages is list[str] but 'query' expects str"


def test_any_value_into_a_prompts_str_field_is_a_warning_not_an_error() -> None:
    """DSPy programs pass the retrieved passages to a ``context: str`` field; DSPy (and every backend here)
    shows them numbered. Reported, as a mismatch, but the program is valid."""
    data = raw()
    data["steps"][1]["with"]["question"] = "$found.scores"
    data["steps"][1]["with"]["context"] = "$found.passages"
    data["modules"]["answer"]["signature"] = "context, question -> answer"
    found = [i for i in validate_data(data)._warnings if i.severity == "warning"]  # type: ignore[attr-defined]
    by_pointer = {i.pointer: i.message for i in found}
    assert by_pointer["/steps/1/with/question"].startswith(
        "type mismatch: $found.scores is list[float] but 'question' expects str (the prompt shows it as DSPy does")
    assert by_pointer["/steps/1/with/context"].startswith("type mismatch: $found.passages is list[str] but 'context'")


def test_literal_argument_type_mismatch() -> None:
    data = raw()
    data["steps"][0]["with"]["query"] = 5
    assert the(issues_of(data), "/steps/0/with/query").message == "type mismatch: literal 5 is not a str"


def test_return_type_mismatch_and_missing_output() -> None:
    data = raw("classify")
    data["steps"][1]["return"] = {"team": "$routed.urgent"}
    issues = issues_of(data)
    assert "expects Literal['billing', 'technical', 'sales']" in the(issues, "/steps/1/return/team").message
    assert the(issues, "/steps/1/return").message == "missing program output 'urgent'"


def test_literal_output_is_assignable_to_str_input() -> None:
    data = raw("classify")
    data["signature"] = "ticket -> team, urgent: bool"
    assert validate_data(data).name == "classify"


# -- map -------------------------------------------------------------------------------------------


def test_map_over_a_non_list() -> None:
    data = raw("multihop")
    data["steps"][3]["over"] = "$hop.query"
    issue = the(issues_of(data), "/steps/3/over")
    assert issue.message == "$hop.query is str, not a list"


def test_map_over_a_literal_is_refused() -> None:
    data = raw("multihop")
    data["steps"][3]["over"] = "passages"
    assert "must be a reference to a list" in the(issues_of(data), "/steps/3/over").message


def test_map_item_type_and_result_list_type_are_checked() -> None:
    data = raw("multihop")
    data["steps"][3]["with"]["question"] = "$passage"  # a str element: fine
    validate_data(data)
    data = raw("multihop")
    data["steps"][3]["with"]["passage"] = "$passage.text"
    assert "has no field 'text'" in the(issues_of(data), "/steps/3/with/passage").message
    data = raw("multihop")
    data["steps"][4]["with"]["facts"] = "$extracted"  # a list of records into list[str]
    assert "but 'facts' expects list[str]" in the(issues_of(data), "/steps/4/with/facts").message


def test_map_item_name_must_not_shadow_and_must_be_an_identifier() -> None:
    data = raw("multihop")
    data["steps"][3]["item"] = "first"
    data["steps"][3]["with"]["passage"] = "$first"
    assert "shadows an earlier result" in the(issues_of(data), "/steps/3/item").message
    data = raw("multihop")
    data["steps"][3]["item"] = "inputs"
    assert "invalid item name" in the(issues_of(data), "/steps/3/item").message


# -- names and return ----------------------------------------------------------------------------


def test_duplicate_result_names() -> None:
    data = raw()
    data["steps"][1]["as"] = "found"
    issue = the(issues_of(data), "/steps/1/as")
    assert issue.message == "duplicate result name 'found' (first produced by step 0)"


@pytest.mark.parametrize(("name", "match"), [("inputs", "reserved"), ("1x", "invalid result name")])
def test_bad_result_names(name: str, match: str) -> None:
    data = raw()
    data["steps"][0]["as"] = name
    assert match in the(issues_of(data), "/steps/0/as").message


def test_invalid_module_name() -> None:
    data = raw()
    data["modules"]["bad-name"] = data["modules"].pop("search")
    assert "invalid module name" in the(issues_of(data), "/modules/bad-name").message


def test_missing_return() -> None:
    data = raw()
    data["steps"].pop()
    issues = issues_of(data)
    assert "missing 'return' step" in the(issues, "/steps").message
    assert the(issues, "/steps/1/as", "warning").message == "result 'result' is never used"


def test_misplaced_return() -> None:
    data = raw()
    data["steps"].insert(1, {"return": {"answer": "$found.ids"}})
    issues = issues_of(data)
    assert the(issues, "/steps/1").message == "the 'return' step must be the last step"


def test_multiple_returns() -> None:
    data = raw()
    data["steps"].append({"return": {"answer": "$result.answer"}})
    issues = issues_of(data)
    assert the(issues, "/steps/3").message == "a program has exactly one 'return' step"


def test_step_with_two_kinds_and_no_steps() -> None:
    data = raw()
    data["steps"][0]["map"] = "search"
    assert "exactly one of" in the(issues_of(data), "/steps/0").message
    data = raw()
    data["steps"] = []
    assert "non-empty list of steps" in the(issues_of(data), "/steps").message


def test_unused_result_is_only_a_warning() -> None:
    data = raw()
    data["steps"].insert(2, {"call": "search", "with": {"query": "$inputs.question"}, "as": "extra"})
    program = validate_data(data)
    warnings = program._warnings  # type: ignore[attr-defined]
    assert [(w.pointer, w.severity) for w in warnings] == [("/steps/2/as", "warning")]
    assert [i.message for i in validate(program)] == ["result 'extra' is never used"]


# -- top level and lm ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "pointer", "match"),
    [
        ("stepbridge", 3, "/stepbridge", "unsupported format version 3"),
        ("stepbridge", True, "/stepbridge", "unsupported format version True"),
        ("stepbridge", None, "/stepbridge", "missing format version"),
        ("name", None, "/name", "missing program name"),
        ("name", 5, "/name", "must be a string"),
        ("name", "has space", "/name", "should match pattern"),
        ("signature", "question, answer", "/signature", "exactly one '->'"),
        ("modules", [1], "/modules", "mapping of name -> module"),
        ("steps", {"a": 1}, "/steps", "non-empty list"),
        ("stepz", [], "/stepz", "unknown key 'stepz'"),
    ],
)
def test_top_level_problems(key: str, value: Any, pointer: str, match: str) -> None:
    data = raw()
    if value is None:
        data.pop(key)
    else:
        data[key] = value
    issues = [i for i in issues_of(data) if i.pointer == pointer]
    assert any(match in i.message for i in issues), [str(i) for i in issues]


def test_a_program_must_be_a_mapping() -> None:
    assert "a program is a mapping" in issues_of(["x"])[0].message  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["base_url", "api_key", "api_key_env", "api_base", "headers"])
@pytest.mark.parametrize("where", ["program", "module"])
def test_endpoint_keys_in_lm_are_refused_with_the_profile_hint(key: str, where: str) -> None:
    data = raw()
    target = data["lm"] if where == "program" else data["modules"]["answer"].setdefault("lm", {})
    target[key] = "http://attacker.example/v1" if key != "headers" else {"Authorization": "x"}
    pointer = f"/lm/{key}" if where == "program" else f"/modules/answer/lm/{key}"
    issue = the(issues_of(data), pointer)
    assert issue.message.startswith(f"unknown key '{key}'")
    assert "LM profiles" in issue.message and "never from a program file" in issue.message


def test_other_unknown_lm_keys_have_no_profile_hint() -> None:
    data = raw()
    data["lm"]["temprature"] = 0.1
    assert the(issues_of(data), "/lm/temprature").message == "unknown key 'temprature'"


def test_lm_values_are_range_checked() -> None:
    data = raw()
    data["lm"] = {"temperature": 3.0, "adapter": "yaml", "n": 0}
    issues = issues_of(data)
    assert the(issues, "/lm/temperature")
    assert the(issues, "/lm/adapter")
    assert the(issues, "/lm/n")


# -- every problem at once -------------------------------------------------------------------------

MANY = """\
stepbridge: 1
name: many
signature: "question -> answer"
lm: {temperature: 0.0, base_url: "http://x"}
modules:
  search:
    type: retrieve
    retriever: {kind: bm25}
  answer:
    type: chain_of_thougth
    signature: "context: list[str], question -> answer"
steps:
  - call: search
    with: {query: $inputs.questoin}
    as: found
  - call: answr
    with: {context: $fond.passages, question: $inputs.question}
    as: result
  - return: {answer: $result.answer}
  - call: search
    with: {query: 5}
    as: found
"""


def test_every_problem_is_reported_at_once_with_pointer_and_line() -> None:
    issues = issues_of(MANY)
    got = {(i.pointer, i.line, i.suggestion) for i in issues if i.severity == "error"}
    expected = {
        ("/lm/base_url", 4, None),
        ("/modules/answer/type", 10, "chain_of_thought"),
        ("/steps/0/with/query", 14, "$inputs.question"),
        ("/steps/1/call", 16, "answer"),
        ("/steps/1/with/context", 17, "$found"),
        ("/steps/2", 19, None),                # return is not last
        ("/steps/3/with/query", 21, None),     # literal 5 is not a str
        ("/steps/3/as", 22, None),             # duplicate result name
    }
    assert expected <= got, sorted(got - expected, key=str)
    with pytest.raises(ProgramValidationError) as info:
        load_program(MANY)
    text = str(info.value)
    assert text.startswith(f"invalid program: {len([i for i in issues if i.severity == 'error'])} problems")
    assert "/steps/1/with/context (line 17): unknown reference $fond.passages (did you mean $found?)" in text


def test_validate_returns_issues_and_never_raises() -> None:
    assert validate(yaml.safe_load(MANY))
    assert validate(load_program(EXAMPLES / "rag_qa.yaml")) == []
    assert validate({"nonsense": True})[0].pointer == "/nonsense"


# -- random mutations never crash the validator ----------------------------------------------------

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-5, max_value=5), st.floats(allow_nan=True),
    st.sampled_from(["", "$", "$$", "$inputs.question", "$found.passages", "$found", "$item", "$result.answer",
                     "search", "answer", "predict", "chain_of_thought", "retrieve", "tool", "dspy", "call", "map",
                     "return", "list[str]", "q -> a", "a: int -> b", "Literal['x']", "inputs", "reasoning", "~/"]),
    st.text(max_size=6),
)
json_any = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=4), st.sampled_from(
        ["type", "call", "map", "return", "with", "as", "over", "item", "signature", "lm", "k"])), inner, max_size=3)),
    max_leaves=6)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


@st.composite
def mutated_programs(draw: st.DrawFn) -> Any:
    data = copy.deepcopy(draw(st.sampled_from([raw("rag_qa"), raw("multihop"), raw("classify")])))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = list(_paths(data))
        path = draw(st.sampled_from(paths))
        if not path:
            if draw(st.booleans()):
                data = draw(json_any)
            continue
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "insert", "duplicate"]))
        if action == "replace":
            parent[last] = draw(json_any)
        elif action == "delete":
            del parent[last]
        elif action == "insert" and isinstance(parent, dict):
            parent[draw(st.text(max_size=5))] = draw(json_any)
        elif action == "insert":
            parent.insert(last, draw(json_any))
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
        else:
            parent[f"{last}_copy"] = copy.deepcopy(parent[last])
    return data


@given(mutated_programs())
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_mutations_never_crash_the_validator(data: Any) -> None:
    try:
        program = validate_data(copy.deepcopy(data))
    except ProgramValidationError as exc:
        assert exc.issues and all(i.pointer == "" or i.pointer.startswith("/") for i in exc.issues)
        assert any(i.severity == "error" for i in exc.issues)
        json.dumps(exc.to_dict())  # reportable
    else:
        # a valid program has an identity and survives a round trip through its own file form
        assert validate_data(program.to_dict()).content_hash == program.content_hash
    issues = validate(data)
    assert all(isinstance(i, Issue) for i in issues)


# -- check_inputs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def typed_program() -> Any:
    data = raw()
    data["signature"] = "question, k: int, tags: Optional[list[str]] -> answer"
    data["steps"][0]["with"]["query"] = "$inputs.question"
    return validate_data(data)


def test_check_inputs_accepts_valid_inputs(typed_program: Any) -> None:
    inputs = {"question": "q", "k": 3}
    assert check_inputs(typed_program, inputs) is inputs
    assert check_inputs(typed_program, {"question": "q", "k": 3, "tags": None})
    assert check_inputs(typed_program, {"question": "q", "k": 3, "tags": ["a"]})


@pytest.mark.parametrize(
    ("inputs", "field", "match"),
    [
        ({"question": "q"}, "k", "missing input 'k' (int)"),
        ({"question": "q", "k": "3"}, "k", "input 'k' must be int, got '3'"),
        ({"question": "q", "k": True}, "k", "must be int"),
        ({"question": "q", "k": 1, "tags": "a"}, "tags", "must be Optional[list[str]]"),
        ({"question": "q", "k": 1, "qestion": "x"}, "qestion", "did you mean 'question'?"),
        ({"question": "x" * 500, "k": 1.5}, "k", "got 1.5"),
        ({"question": ["x" * 500], "k": 1}, "question", "..."),
    ],
)
def test_check_inputs_errors(typed_program: Any, inputs: dict[str, Any], field: str, match: str) -> None:
    with pytest.raises(InputValidationError) as info:
        check_inputs(typed_program, inputs)
    assert info.value.field == field
    assert match in str(info.value)
    assert len(str(info.value)) < 300  # long values are cut


def test_check_inputs_needs_a_mapping(typed_program: Any) -> None:
    with pytest.raises(InputValidationError, match="JSON object of field -> value, got list"):
        check_inputs(typed_program, ["q"])


def retrieval_program(corpus: str) -> dict[str, Any]:
    return {"stepbridge": 1, "name": "r", "signature": "question -> passages: list[str]",
            "modules": {"s": {"type": "retrieve", "retriever": {"kind": "bm25", "corpus": corpus}}},
            "steps": [{"call": "s", "with": {"query": "$inputs.question"}, "as": "f"},
                      {"return": {"passages": "$f.passages"}}]}


@pytest.mark.parametrize("corpus", ["/etc/passwd", "../../../../etc/passwd", "data/../../x.jsonl", "C:/x.txt"])
def test_a_program_cannot_name_a_corpus_outside_its_folder(corpus: str) -> None:
    with pytest.raises(ProgramValidationError) as info:
        load_program(retrieval_program(corpus))
    assert info.value.issues[0].pointer == "/modules/s/retriever/corpus"
