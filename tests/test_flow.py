"""Static checks of format-2 steps (stepbridge.flow): names bound on every path, types through
branches and loops, returns on every path, bounds, unreachable branches, hostile files."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from stepbridge.errors import Issue, ProgramValidationError
from stepbridge.loader import load_program
from stepbridge.validate import validate_data

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

MODULES = {
    "gen": {"type": "predict", "signature": "context: list[str], question -> query"},
    "search": {"type": "retrieve", "retriever": {"kind": "bm25", "corpus": "data/wiki.jsonl"}, "k": 2},
    "cls": {"type": "predict", "signature": "question -> kind: Literal['a', 'b']"},
    "cot": {"type": "chain_of_thought", "signature": "question -> answer"},
    "pred": {"type": "predict", "signature": "question -> answer"},
    "count": {"type": "predict", "signature": "question -> n: int"},
}


def program(steps: list[Any], signature: str = "question -> answer", **extra: Any) -> dict[str, Any]:
    return {"stepbridge": 2, "name": "t", "signature": signature, "modules": copy.deepcopy(MODULES),
            "steps": steps, **extra}


def issues(data: dict[str, Any] | str) -> list[Issue]:
    with pytest.raises(ProgramValidationError) as info:
        load_program(data) if isinstance(data, str) else validate_data(data)
    return info.value.issues


def warnings(data: dict[str, Any]) -> list[Issue]:
    return [i for i in validate_data(data)._warnings if i.severity == "warning"]  # type: ignore[attr-defined]


def the(found: list[Issue], pointer: str, severity: str = "error") -> Issue:
    hits = [i for i in found if i.pointer == pointer and i.severity == severity]
    assert len(hits) == 1, [str(i) for i in found]
    return hits[0]


RET = {"return": {"answer": "$r.answer"}}


# -- the examples and a valid program of every construct -------------------------------------------


@pytest.mark.parametrize("name", ["multihop_loop", "router"])
def test_examples_are_valid_format_2(name: str) -> None:
    prog = load_program(EXAMPLES / f"{name}.yaml")
    assert prog.stepbridge == 2
    assert "control_flow" in prog.required_capabilities


def test_every_construct_validates() -> None:
    data = program([
        {"set": {"ctx": [], "n": 0}},
        {"parallel": [{"call": "cls", "with": {"question": "$inputs.question"}, "as": "c"},
                      {"call": "pred", "with": {"question": "$inputs.question"}, "as": "p"}]},
        {"if": {"$eq": ["$c.kind", "a"]},
         "then": [{"set": {"n": 1}}],
         "else": [{"set": {"n": 2}}]},
        {"switch": "$c.kind", "cases": [{"when": "a", "steps": [{"call": "cot", "with": {"question": "$p.answer"},
                                                                  "as": "r"}]}],
         "default": [{"call": "pred", "with": {"question": "$p.answer"}, "as": "r"}]},
        {"loop": {"max": 3, "over": ["x", "y"], "item": "word", "index": "i",
                  "steps": [{"set": {"ctx": {"$concat": ["$ctx", ["$word"]]}, "n": {"$add": ["$n", "$i"]}}}],
                  "until": {"$ge": [{"$len": "$ctx"}, 2]}}},
        {"return": {"answer": {"$template": ["{a} ({n})", {"a": "$r.answer", "n": "$n"}]}}},
    ])
    prog = validate_data(data)
    assert prog.required_capabilities >= {"control_flow", "parallel"}
    assert "reasoning" not in str(prog.content_hash)


# -- names bound on every path ---------------------------------------------------------------------


def test_a_name_bound_in_one_branch_only_is_not_bound_after() -> None:
    data = program([
        {"call": "cls", "with": {"question": "$inputs.question"}, "as": "c"},
        {"if": {"$eq": ["$c.kind", "a"]}, "then": [{"call": "pred", "with": {"question": "x"}, "as": "r"}]},
        RET,
    ])
    issue = the(issues(data), "/steps/2/return/answer")
    assert "not bound on every path" in issue.message and "/steps/1/then/0/as" in issue.message


def test_a_name_bound_in_both_branches_is_bound_after() -> None:
    data = program([
        {"if": True, "then": [{"call": "pred", "with": {"question": "x"}, "as": "r"}],
         "else": [{"call": "cot", "with": {"question": "y"}, "as": "r"}]},
        RET,
    ])
    validate_data(data)


def test_switch_without_default_binds_nothing_and_with_default_binds_the_common_names() -> None:
    case = {"when": "a", "steps": [{"call": "pred", "with": {"question": "x"}, "as": "r"}]}
    no_default = program([{"call": "cls", "with": {"question": "q"}, "as": "c"},
                          {"switch": "$c.kind", "cases": [case]}, RET])
    assert "not bound on every path" in the(issues(no_default), "/steps/2/return/answer").message
    with_default = program([{"call": "cls", "with": {"question": "q"}, "as": "c"},
                            {"switch": "$c.kind", "cases": [case],
                             "default": [{"call": "cot", "with": {"question": "q"}, "as": "r"}]}, RET])
    validate_data(with_default)


def test_loop_over_may_make_no_pass_but_a_plain_loop_makes_one() -> None:
    body = [{"call": "pred", "with": {"question": "x"}, "as": "r"}]
    over = program([{"loop": {"max": 3, "over": "$inputs.items", "item": "it", "steps": body}}, RET],
                   signature="question, items: list[str] -> answer")
    assert "not bound on every path" in the(issues(over), "/steps/1/return/answer").message
    plain = program([{"loop": {"max": 3, "steps": body}}, RET])
    validate_data(plain)


def test_loop_item_and_index_are_bound_only_inside() -> None:
    data = program([
        {"loop": {"max": 2, "over": ["a"], "item": "w", "index": "i",
                  "steps": [{"call": "pred", "with": {"question": "$w"}, "as": "r"}]}},
        {"return": {"answer": {"$template": ["{w}", {"w": "$w"}]}}},
    ])
    assert "unknown reference $w" in the(issues(data), "/steps/1/return/answer/$template/1/w").message


def test_a_result_of_a_parallel_sibling_is_not_bound_inside_the_parallel_step() -> None:
    data = program([
        {"parallel": [{"call": "pred", "with": {"question": "x"}, "as": "a"},
                      {"call": "pred", "with": {"question": "$a.answer"}, "as": "r"}]},
        RET,
    ])
    assert "not bound on every path" in the(issues(data), "/steps/0/parallel/1/with/question").message


def test_unknown_reference_inside_an_operation_has_its_pointer_and_a_suggestion() -> None:
    data = program([
        {"set": {"context": []}},
        {"call": "gen", "with": {"context": {"$concat": ["$contxt", ["x"]]}, "question": "q"}, "as": "r"},
        {"return": {"answer": "$r.query"}},
    ])
    issue = the(issues(data), "/steps/1/with/context/$concat/0")
    assert issue.message == "unknown reference $contxt" and issue.suggestion == "$context"


# -- types -----------------------------------------------------------------------------------------


def test_rebinding_keeps_the_type() -> None:
    data = program([{"set": {"x": "text"}}, {"set": {"x": 3}}, {"return": {"answer": "$x"}}])
    issue = the(issues(data), "/steps/1/set/x")
    assert "a name keeps one type" in issue.message and "str" in issue.message


def test_empty_list_takes_the_element_type_of_later_bindings() -> None:
    data = program([
        {"set": {"ctx": []}},
        {"loop": {"max": 2, "steps": [
            {"call": "search", "with": {"query": "$inputs.question"}, "as": "found"},
            {"set": {"ctx": {"$concat": ["$ctx", "$found.passages"]}}}]}},
        {"set": {"bad": {"$add": ["$ctx", 1]}}},
        {"return": {"answer": "$bad"}},
    ])
    issue = the(issues(data), "/steps/2/set/bad")
    assert "$add" in issue.message and "list[str]" in issue.message


def test_types_flow_through_operations_into_module_inputs() -> None:
    data = program([
        {"call": "count", "with": {"question": "q"}, "as": "c"},
        {"call": "gen", "with": {"context": {"$len": "$inputs.question"}, "question": "$c.n"}, "as": "r"},
        {"return": {"answer": "$r.query"}},
    ])
    issue = the(issues(data), "/steps/1/with/context")
    assert issue.message == "type mismatch: the value is int but 'context' expects list[str]"


def test_fields_common_to_every_binding_survive_a_branch() -> None:
    # cot gives {reasoning, answer}, pred gives {answer}: after the branch only answer is known
    data = program([
        {"if": True, "then": [{"call": "cot", "with": {"question": "x"}, "as": "r"}],
         "else": [{"call": "pred", "with": {"question": "y"}, "as": "r"}]},
        {"return": {"answer": "$r.reasoning"}},
    ])
    assert "unknown field 'reasoning'" in the(issues(data), "/steps/1/return/answer").message


def test_paths_reach_into_objects_and_broadcast_over_map_results() -> None:
    data = program([
        {"call": "search", "with": {"query": "q"}, "as": "found"},
        {"map": "pred", "over": "$found.passages", "item": "p", "with": {"question": "$p"}, "as": "each"},
        {"set": {"answers": "$each.answer", "nested": {"a": {"b": "$found.ids"}}}},
        {"call": "gen", "with": {"context": "$nested.a.b", "question": {"$join": ["$answers", " "]}}, "as": "r"},
        {"return": {"answer": "$r.query"}},
    ])
    validate_data(data)
    bad = copy.deepcopy(data)
    bad["steps"][3]["with"]["context"] = "$nested.a.c"
    issue = the(issues(bad), "/steps/3/with/context")
    assert issue.message.startswith("unknown field 'c': $nested.a has b") and issue.suggestion is None


def test_operation_argument_types_are_checked() -> None:
    data = program([{"set": {"x": {"$lt": ["a", 1]}, "y": {"$join": [[1, 2], ","]}, "z": {"$len": 3}}},
                    {"return": {"answer": {"$template": ["{x}{y}{z}", {"x": "$x", "y": "$y", "z": "$z"}]}}}])
    found = issues(data)
    assert "compares two numbers or two strings" in the(found, "/steps/0/set/x").message
    assert "joins strings" in the(found, "/steps/0/set/y").message
    assert "must be list or object or str" in the(found, "/steps/0/set/z").message


def test_text_operations_are_typed() -> None:
    """The str-method operations take strings and give str (``$strip`` ... ``$replace``) or bool: a module
    input fed from them is checked, a non-string argument is an error at its pointer."""
    data = program([
        {"call": "count", "with": {"question": {"$lower": {"$strip": "$inputs.question"}}}, "as": "c"},
        {"set": {"bad": {"$strip": "$c.n"}, "worse": {"$replace": ["$inputs.question", "a", 1]},
                 "ok": {"$startswith": [{"$upper": "$inputs.question"}, "A"]}}},
        {"call": "gen", "with": {"context": {"$replace": ["$inputs.question", "", "-"]}, "question": "$ok"},
         "as": "r"},
        {"return": {"answer": "$r.query"}},
    ])
    found = issues(data)
    assert the(found, "/steps/1/set/bad").message == "$strip: the text must be str, not int"
    assert the(found, "/steps/1/set/worse").message == "$replace: argument 2 must be str, not int"
    assert the(found, "/steps/2/with/context").message == ("type mismatch: the value is str but 'context' expects "
                                                           "list[str]")
    assert len([i for i in found if i.severity == "error"]) == 3, [str(i) for i in found]  # the rest is typed


# -- returns -------------------------------------------------------------------------------------


def test_every_path_must_return_and_nothing_may_follow_a_return() -> None:
    falls_through = program([{"if": True, "then": [{"return": {"answer": "a"}}]}])
    assert "without a 'return'" in the(issues(falls_through), "/steps/0").message
    after = program([{"if": True, "then": [{"return": {"answer": "a"}}], "else": [{"return": {"answer": "b"}}]},
                     {"return": {"answer": "c"}}])
    assert "never runs" in the(issues(after), "/steps/1").message
    inner = program([{"loop": {"max": 2, "steps": [{"return": {"answer": "a"}}, {"set": {"x": 1}}]}}])
    assert "never runs" in the(issues(inner), "/steps/0/loop/steps/1").message


def test_each_return_gives_every_output() -> None:
    data = program([{"if": True, "then": [{"return": {"answer": "a"}}], "else": [{"return": {}}]}])
    assert the(issues(data), "/steps/0/else/0/return").message == "missing program output 'answer'"


def test_a_return_in_every_case_and_the_default_ends_the_program() -> None:
    data = program([
        {"call": "cls", "with": {"question": "q"}, "as": "c"},
        {"switch": "$c.kind", "cases": [{"when": "a", "steps": [{"return": {"answer": "A"}}]},
                                        {"when": "b", "steps": [{"return": {"answer": "B"}}]}],
         "default": [{"return": {"answer": "?"}}]},
    ])
    found = warnings(data)
    assert any(i.pointer == "/steps/1/default" and "cover every value" in i.message for i in found)


# -- format 1 may not use format-2 constructs -------------------------------------------------------


@pytest.mark.parametrize("step, pointer", [
    ({"set": {"x": 1}}, "/steps/0/set"),
    ({"if": True, "then": [{"return": {"answer": "a"}}]}, "/steps/0/if"),
    ({"loop": {"max": 1, "steps": [{"set": {"x": 1}}]}}, "/steps/0/loop"),
    ({"parallel": [{"call": "pred", "with": {"question": "x"}}]}, "/steps/0/parallel"),
])
def test_format_1_files_may_not_use_format_2_steps(step: dict[str, Any], pointer: str) -> None:
    data = program([step, {"return": {"answer": "x"}}])
    data["stepbridge"] = 1
    assert "need 'stepbridge: 2'" in the(issues(data), pointer).message


def test_format_1_files_may_not_use_operations_or_paths() -> None:
    data = program([{"call": "pred", "with": {"question": {"$len": "x"}}, "as": "r"},
                    {"return": {"answer": "$r.answer.x"}}])
    data["stepbridge"] = 1
    found = issues(data)
    assert "need 'stepbridge: 2'" in the(found, "/steps/0/with/question").message
    assert "need 'stepbridge: 2'" in the(found, "/steps/1/return/answer").message


# -- bounds and hostile files ----------------------------------------------------------------------


def test_loop_max_is_required_and_bounded() -> None:
    body = [{"call": "pred", "with": {"question": "x"}, "as": "r"}]
    found = issues(program([{"loop": {"steps": body}}, RET]))
    assert "needs 'max'" in the(found, "/steps/0/loop").message
    huge = issues(program([{"loop": {"max": 10**12, "steps": body}}, RET]))
    assert "1 to 10,000" in the(huge, "/steps/0/loop/max").message
    for bad in (0, -1, True, "3", 2.5):
        assert the(issues(program([{"loop": {"max": bad, "steps": body}}, RET])), "/steps/0/loop/max")


def test_worst_case_module_calls_are_bounded() -> None:
    body: list[Any] = [{"call": "pred", "with": {"question": "x"}, "as": "r"}]
    inner = {"loop": {"max": 1000, "steps": body}}
    data = program([{"loop": {"max": 1001, "steps": [inner]}}, RET])
    issue = the(issues(data), "/steps/0/loop/max")
    assert "1,001,000 module calls" in issue.message
    ok = program([{"loop": {"max": 990, "steps": [inner]}}, RET])
    validate_data(ok)


def test_steps_nested_deeper_than_64_levels_are_refused_fast() -> None:
    steps: list[Any] = [RET]
    for _ in range(10_000):
        steps = [{"if": True, "then": steps}]
    found = issues(program(steps))  # no RecursionError: the walk stops at the limit
    assert any("deeper than 64" in i.message for i in found)  # the data bound or the step walk


def test_ten_thousand_deep_branches_in_a_file_stop_at_the_loader() -> None:
    text = "stepbridge: 2\nname: t\nsignature: 'q -> a'\nsteps:\n" + "".join(
        "  " * i + "- if: true\n" + "  " * i + "  then:\n" for i in range(1, 400))
    found = issues(text)
    assert any("nesting deeper than 64" in i.message for i in found)


def test_operations_nested_deeper_than_32_are_refused() -> None:
    value: Any = "$inputs.question"
    for _ in range(40):
        value = {"$len": value} if isinstance(value, str) else {"$not": value}
    found = issues(program([{"set": {"x": value}}, {"return": {"answer": "a"}}]))
    assert any("operations nested deeper than 32" in i.message for i in found)


def test_unknown_operation_malformed_operation_and_switch_values() -> None:
    data = program([
        {"set": {"a": {"$concatt": [[1], [2]]}, "b": {"$join": ["x"]}, "c": {"$len": "x", "other": 1}}},
        {"call": "cls", "with": {"question": "q"}, "as": "k"},
        {"switch": "$k.kind", "cases": [{"when": "$k.kind", "steps": [{"return": {"answer": "x"}}]},
                                        {"when": "zzz", "steps": [{"return": {"answer": "y"}}]},
                                        {"when": ["a", "a"], "steps": [{"return": {"answer": "z"}}]}],
         "default": [{"return": {"answer": "d"}}]},
    ])
    found = issues(data)
    assert the(found, "/steps/0/set/a/$concatt").suggestion == "$concat"
    assert "takes 2 arguments" in the(found, "/steps/0/set/b/$join").message
    assert "exactly one key" in the(found, "/steps/0/set/c").message
    assert "literals only" in the(found, "/steps/2/cases/0/when").message
    assert the(found, "/steps/2/cases/1/when", "warning").message.startswith("unreachable")
    assert "already matched" in the(found, "/steps/2/cases/2/when/1", "warning").message


def test_literal_conditions_warn_about_the_branch_that_never_runs() -> None:
    data = program([{"if": False, "then": [{"return": {"answer": "a"}}], "else": [{"return": {"answer": "b"}}]}])
    assert any(i.pointer == "/steps/0/then" and "always false" in i.message for i in warnings(data))


def test_parallel_holds_only_calls_with_distinct_names() -> None:
    data = program([
        {"parallel": [{"call": "pred", "with": {"question": "x"}, "as": "r"},
                      {"call": "pred", "with": {"question": "y"}, "as": "r"},
                      {"set": {"x": 1}}]},
        RET,
    ])
    found = issues(data)
    assert "duplicate result name 'r'" in the(found, "/steps/0/parallel/1/as").message
    assert "only 'call' steps" in the(found, "/steps/0/parallel/2").message


def test_many_problems_are_reported_at_once_with_lines() -> None:
    text = yaml.safe_dump(program([
        {"set": {"x": "$nope"}},
        {"loop": {"max": 0, "steps": [{"set": {"y": {"$bogus": 1}}}]}},
        {"if": "$x", "then": [{"call": "nomod"}]},
    ]), sort_keys=False)
    found = [i for i in issues(text) if i.severity == "error"]
    pointers = {i.pointer for i in found}
    assert {"/steps/0/set/x", "/steps/1/loop/max", "/steps/1/loop/steps/0/set/y/$bogus",
            "/steps/2/then/0/call"} <= pointers
    assert all(i.line is not None for i in found)


def test_a_value_that_contains_itself_is_refused_statically() -> None:
    data = program([{"set": {"x": [[]]}}, {"loop": {"max": 50, "steps": [{"set": {"x": ["$x", "$x"]}}]}},
                    {"return": {"answer": "a"}}])
    assert "does not settle" in the(issues(data), "/steps/0/set/x").message
