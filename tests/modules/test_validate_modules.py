"""Static validation of the format-2 module types: every problem at once, each with its JSON pointer and
a suggestion where one helps; hostile values refused before anything runs."""

from __future__ import annotations

from typing import Any

import pytest
from stepbridge.errors import ProgramValidationError
from stepbridge.validate import validate_data


def prog(modules: dict[str, Any], call: str = "m", *, version: int = 2, inputs: str = "question",
         outputs: str = "answer") -> dict[str, Any]:
    return {
        "stepbridge": version, "name": "p", "signature": f"{inputs} -> {outputs}", "modules": modules,
        "steps": [{"call": call, "with": {"question": "$inputs.question"}, "as": "r"},
                  {"return": {"answer": "$r.answer"}}],
    }


def all_errors(data: dict[str, Any]) -> list[Any]:
    with pytest.raises(ProgramValidationError) as info:
        validate_data(data)
    return [i for i in info.value.issues if i.severity == "error"]


def errors(data: dict[str, Any]) -> dict[str, Any]:
    return {i.pointer: i for i in all_errors(data)}


COT = {"type": "chain_of_thought", "signature": "question -> answer"}
REACT = {"type": "react", "signature": "question -> answer", "tools": ["country_facts", "calculate"]}


def test_valid_agent_and_ensembles() -> None:
    validate_data(prog({"m": REACT}))
    validate_data(prog({"qa": COT, "m": {"type": "best_of_n", "module": "qa", "n": 3,
                                         "reward": {"metric": "exact_match"}, "threshold": 1.0}}))
    judge = {"type": "predict", "signature": "question, answer -> score: float"}
    validate_data(prog({"qa": COT, "judge": judge, "m": {"type": "refine", "module": "qa", "n": 2,
                                                         "reward": {"module": "judge", "field": "score"},
                                                         "threshold": 0.5}}))


def test_unknown_tools_with_suggestions() -> None:
    found = errors(prog({"m": {**REACT, "tools": ["country_fact", "finish", "calculate", "calculate",
                                                  "os.system"]}}))
    assert found["/modules/m/tools/0"].suggestion == "country_facts"
    assert "react's own tool" in found["/modules/m/tools/1"].message
    assert "listed twice" in found["/modules/m/tools/3"].message
    assert "/modules/m/tools/4" in found  # an import path is just an unknown name


def test_reserved_names_of_react() -> None:
    found = all_errors(prog({"m": {**REACT, "signature": "question, trajectory -> answer, reasoning"}},
                            inputs="question, trajectory", outputs="answer"))
    messages = " ".join(i.message for i in found)
    assert "'trajectory' is reserved" in messages and "'reasoning' is react's own" in messages


@pytest.mark.parametrize(("module", "pointer"), [
    ({**REACT, "max_iters": 101}, "/modules/m/max_iters"),
    ({**REACT, "max_iters": 0}, "/modules/m/max_iters"),
    ({"type": "multi_chain_comparison", "signature": "question -> answer", "m": 10**9}, "/modules/m/m"),
    ({"type": "best_of_n", "module": "qa", "n": 10**12, "reward": {"metric": "exact_match"}, "threshold": 1},
     "/modules/m/n"),
    ({"type": "refine", "module": "qa", "n": 3, "reward": {"metric": "exact_match"}, "threshold": 1,
      "fail_count": 0}, "/modules/m/fail_count"),
    ({"type": "best_of_n", "module": "qa", "n": 3, "reward": {"metric": "exact_match"}}, "/modules/m/threshold"),
    ({"type": "best_of_n", "module": "qa", "n": 3, "reward": {}, "threshold": 1}, "/modules/m/reward"),
    ({"type": "best_of_n", "module": "qa", "n": 3, "reward": {"metric": "exact_match", "module": "qa"},
      "threshold": 1}, "/modules/m/reward"),
    ({"type": "best_of_n", "module": "qa", "n": 3, "reward": {"module": "qa"}, "threshold": 1},
     "/modules/m/reward"),
])
def test_bounds_and_shapes(module: dict[str, Any], pointer: str) -> None:
    found = errors(prog({"qa": COT, "m": module}))
    assert pointer in found, found


def test_ensembles_cannot_wrap_themselves_or_each_other() -> None:
    reward = {"metric": "exact_match"}
    found = errors(prog({
        "qa": COT,
        "m": {"type": "best_of_n", "module": "m", "n": 2, "reward": reward, "threshold": 1},
        "a": {"type": "refine", "module": "b", "n": 2, "reward": reward, "threshold": 1},
        "b": {"type": "refine", "module": "a", "n": 2, "reward": reward, "threshold": 1},
        "t": {"type": "best_of_n", "module": "tool_m", "n": 2, "reward": reward, "threshold": 1},
        "tool_m": {"type": "retrieve", "retriever": {"kind": "bm25"}},
    }))
    assert "cannot wrap itself" in found["/modules/m/module"].message
    assert "ensembles do not nest" in found["/modules/a/module"].message
    assert "ensembles do not nest" in found["/modules/b/module"].message
    assert "a 'retrieve' module" in found["/modules/t/module"].message


def test_unknown_wrapped_module_and_metric_with_suggestions() -> None:
    found = errors(prog({"qa": COT, "m": {"type": "best_of_n", "module": "qaa", "n": 2,
                                          "reward": {"metric": "exact_mach"}, "threshold": 1}}))
    assert found["/modules/m/module"].suggestion == "qa"
    found = errors(prog({"qa": COT, "m": {"type": "best_of_n", "module": "qa", "n": 2,
                                          "reward": {"metric": "exact_mach"}, "threshold": 1}}))
    assert found["/modules/m/reward/metric"].suggestion == "exact_match"
    found = errors(prog({"qa": COT, "m": {"type": "best_of_n", "module": "qa", "n": 2,
                                          "reward": {"metric": "stepbridge.builtin_metrics:exact_match"},
                                          "threshold": 1}}))
    assert "/modules/m/reward/metric" in found  # never an import path


def test_judge_checks() -> None:
    base = {"qa": COT}
    ens = {"type": "refine", "module": "qa", "n": 2, "threshold": 1}
    found = errors(prog({**base, "judge": {"type": "predict", "signature": "question, answer -> verdict"},
                         "m": {**ens, "reward": {"module": "judge", "field": "verdict"}}}))
    assert "a reward is a number" in found["/modules/m/reward/field"].message
    found = errors(prog({**base, "judge": {"type": "predict", "signature": "question, answer -> score: float"},
                         "m": {**ens, "reward": {"module": "judge", "field": "scor"}}}))
    assert found["/modules/m/reward/field"].suggestion == "score"
    found = errors(prog({**base, "judge": {"type": "predict", "signature": "question, style -> score: int"},
                         "m": {**ens, "reward": {"module": "judge", "field": "score"}}}))
    assert "'style' is neither an input nor an output" in found["/modules/m/reward/module"].message
    found = errors(prog({**base, "m": {**ens, "reward": {"module": "m", "field": "score"}}}))
    assert "its own reward" in found["/modules/m/reward/module"].message


def test_completions_and_rationale_are_the_comparisons_own() -> None:
    found = all_errors(prog({"m": {"type": "multi_chain_comparison",
                                   "signature": "question, completions -> answer, rationale"}},
                            inputs="question, completions"))
    messages = " ".join(i.message for i in found)
    assert "'completions' is the module's own" in messages and "'rationale' is the module's own" in messages


def test_format_1_refuses_format_2_modules() -> None:
    found = errors(prog({"qa": COT, "m": {"type": "best_of_n", "module": "qa", "n": 2,
                                          "reward": {"metric": "exact_match"}, "threshold": 1}}, version=1))
    assert "needs 'stepbridge: 2'" in found["/modules/m/type"].message


def test_program_of_thought_is_refused_with_the_reason() -> None:
    found = errors(prog({"m": {"type": "program_of_thought", "signature": "question -> answer"}}))
    assert "sandboxed interpreter" in found["/modules/m/type"].message


def test_a_wrapper_has_the_interface_of_what_it_wraps() -> None:
    data = prog({"qa": COT, "m": {"type": "best_of_n", "module": "qa", "n": 2, "reward": {"metric": "exact_match"},
                                  "threshold": 1}})
    data["steps"][1]["return"] = {"answer": "$r.reasoning"}
    validate_data(data)  # reasoning comes from the chain of thought inside
    data["steps"][1]["return"] = {"answer": "$r.rationale"}
    found = errors(data)
    assert any("rationale" in i.message for i in found.values())
