"""The Python builder makes exactly the programs a file makes."""

from __future__ import annotations

from pathlib import Path

import pytest
from stepbridge.builder import ProgramBuilder, Result
from stepbridge.errors import ProgramValidationError
from stepbridge.loader import load_program

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def rag_builder() -> ProgramBuilder:
    b = ProgramBuilder("rag_qa", "question -> answer", description="Answer a question from retrieved passages.",
                       lm={"temperature": 0.0})
    search = b.retrieve("search", corpus="data/wiki.jsonl", k=3)
    answer = b.chain_of_thought("answer", "context: list[str], question -> answer",
                                instructions="Answer using only the context.")
    found = b.call(search, as_="found", query=b.inputs.question)
    result = b.call(answer, as_="result", context=found.passages, question=b.inputs.question)
    return b.returns(answer=result.answer)


def test_builder_program_equals_the_file_program() -> None:
    built = rag_builder().build(base_dir=EXAMPLES)
    from_file = load_program(EXAMPLES / "rag_qa.yaml")
    assert built.content_hash == from_file.content_hash
    assert built.to_dict() == from_file.to_dict()
    assert built.base_dir == EXAMPLES


def test_builder_program_dumps_to_a_file_that_loads_back(tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to(EXAMPLES / "data")
    built = rag_builder().build()
    built.dump(tmp_path / "rag.yaml")
    assert load_program(tmp_path / "rag.yaml").content_hash == built.content_hash


def test_builder_multihop_with_map_equals_the_file() -> None:
    b = ProgramBuilder("multihop", "question -> answer, second_query",
                       description="Two retrieval hops, then one fact extracted per second-hop passage (a map step).",
                       lm={"temperature": 0.0})
    search = b.retrieve("search", corpus="data/wiki.jsonl", k=2)
    follow_up = b.predict("follow_up", "context: list[str], question -> query", instructions=(
        "Write a search query for the fact the context is missing to answer the question."))
    extract = b.predict("extract", "passage, question -> fact",
                        instructions="Quote the sentence of the passage that helps answer the question.")
    answer = b.chain_of_thought("answer", "context: list[str], facts: list[str], question -> answer",
                                instructions="Answer the question using only the context and the facts.")
    first = b.call(search, as_="first", query=b.inputs.question)
    hop = b.call(follow_up, as_="hop", context=first.passages, question=b.inputs.question)
    second = b.call(search, as_="second", query=hop.query)
    extracted = b.map(extract, second.passages, item="passage", as_="extracted",
                      passage=b.item("passage"), question=b.inputs.question)
    result = b.call(answer, as_="result", context=first.passages, facts=extracted.fact,
                    question=b.inputs.question)
    program = b.returns(answer=result.answer, second_query=hop.query).build()
    assert program.content_hash == load_program(EXAMPLES / "multihop.yaml").content_hash


def test_result_names_default_to_the_module_and_are_made_unique() -> None:
    b = ProgramBuilder("p", "question -> answer")
    search = b.retrieve("search", corpus="c.jsonl")
    first = b.call(search, query=b.inputs.question)
    second = b.call(search, query=b.inputs.question)
    assert (str(first), str(second)) == ("$search", "$search_2")
    assert first.passages == "$search.passages"
    assert [s["as"] for s in b.to_dict()["steps"]] == ["search", "search_2"]


def test_result_private_attributes_are_not_references() -> None:
    with pytest.raises(AttributeError):
        Result("x")._missing  # noqa: B018


def test_build_validates_like_a_file() -> None:
    b = ProgramBuilder("p", "question -> answer")
    answer = b.predict("answer", "question -> answer")
    b.call(answer, as_="r", question="$inputs.questoin")
    b.returns(answer="$r.answer")
    with pytest.raises(ProgramValidationError) as info:
        b.build()
    issue = info.value.issues[0]
    assert (issue.pointer, issue.suggestion) == ("/steps/0/with/question", "$inputs.question")


def test_duplicate_module_name_is_refused() -> None:
    b = ProgramBuilder("p", "question -> answer")
    b.predict("answer", "question -> answer")
    with pytest.raises(ValueError, match="already defined"):
        b.predict("answer", "question -> answer")


def test_tool_and_literals() -> None:
    b = ProgramBuilder("p", "question -> answer")
    b.tool("calc", "no_such_tool", signature="question -> answer", side_effects=True)
    data = b.to_dict()
    assert data["modules"]["calc"] == {"type": "tool", "tool": "no_such_tool", "signature": "question -> answer",
                                       "side_effects": True}
    answer = b.predict("answer", "question, n: int -> answer", demos=[{"question": "q", "n": 1, "answer": "a"}])
    r = b.call(answer, question=b.inputs.question, n=2)
    b.returns(answer=r.answer)
    assert b.to_dict()["steps"][0]["with"] == {"question": "$inputs.question", "n": 2}
    with pytest.raises(ProgramValidationError, match="unknown tool 'no_such_tool'"):
        b.build()


# -- format 2 ----------------------------------------------------------------------------------------


def test_builder_multihop_loop_equals_the_file() -> None:
    from stepbridge.builder import ops

    b = ProgramBuilder("multihop_loop", "question -> answer, hops: int, context: list[str]", description=(
        "Multi-hop search that loops until it has enough context: each pass names the next lead from what it "
        "has found so far, retrieves, and merges the new passages into the context; it stops when it holds four "
        "passages or a pass finds nothing new (at most four passes)."), lm={"temperature": 0.0})
    next_hop = b.chain_of_thought("next_hop", "context: list[str], question -> lead", instructions=(
        "Name the lead to look up next: the sentence of the context (or the question, when the context is empty) "
        "that says the most about what the question is still missing."))
    search = b.retrieve("search", corpus="data/wiki.jsonl", k=2)
    answer = b.chain_of_thought("answer", "context: list[str], question -> answer",
                                instructions="Answer the question using only the context.")
    v = b.set(context=[], hops=0)
    with b.loop(max=4) as loop:
        hop = b.call(next_hop, as_="hop", context=v.context, question=b.inputs.question)
        found = b.call(search, as_="found", query=hop.lead)
        merged = b.set(merged=ops.dedupe(ops.concat(v.context, found.passages))).merged
        grew = b.set(grew=ops.gt(ops.len(merged), ops.len(v.context)), context=merged,
                     hops=ops.add(v.hops, 1)).grew
        loop.until(ops.or_(ops.not_(grew), ops.ge(ops.len(v.context), 4)))
    result = b.call(answer, as_="result", context=v.context, question=b.inputs.question)
    program = b.returns(answer=result.answer, hops=v.hops, context=v.context).build(base_dir=EXAMPLES)
    from_file = load_program(EXAMPLES / "multihop_loop.yaml")
    assert program.stepbridge == 2
    assert program.to_dict() == from_file.to_dict()
    assert program.content_hash == from_file.content_hash


def test_builder_router_equals_the_file() -> None:
    from stepbridge.builder import ops

    routes = "Literal['other', 'place', 'person']"
    b = ProgramBuilder("router", f"question -> answer, route: {routes}", description=(
        "Route a question by an LM classification (a Literal output) to different modules: questions about a "
        "place get retrieval and a chain of thought, questions about a person get a lookup and an extraction, "
        "anything else a direct answer."), lm={"temperature": 0.0})
    classify = b.predict("classify", f"question -> kind: {routes}",
                         instructions="Say whether the question asks about a place, a person, or something else.")
    search = b.retrieve("search", corpus="data/wiki.jsonl", k=2)
    place = b.chain_of_thought("place_answer", "context: list[str], question -> answer",
                               instructions="Answer the question about a place using only the context.")
    person = b.predict("person_fact", "passage, question -> answer",
                       instructions="Quote what the passage says about the person the question asks about.")
    direct = b.predict("direct", "question -> answer")
    route = b.call(classify, as_="route", question=b.inputs.question)
    with b.switch(route.kind) as sw:
        with sw.case("place"):
            found = b.call(search, as_="found", query=b.inputs.question)
            b.call(place, as_="result", context=found.passages, question=b.inputs.question)
        with sw.case("person"):
            found = b.call(search, as_="found", query=b.inputs.question)
            b.call(person, as_="result", passage=ops.index(found.passages, 0), question=b.inputs.question)
        with sw.default():
            b.call(direct, as_="result", question=b.inputs.question)
    program = b.returns(answer=b.ref("result", "answer"), route=route.kind).build(base_dir=EXAMPLES)
    assert program.content_hash == load_program(EXAMPLES / "router.yaml").content_hash


def test_builder_if_else_parallel_and_paths() -> None:
    from stepbridge.builder import ops

    b = ProgramBuilder("p", "question -> answer")
    pred = b.predict("pred", "question -> answer")
    with b.parallel():
        a = b.call(pred, as_="a", question=b.inputs.question)
        c = b.call(pred, as_="c", question=ops.template("again: {q}", q=b.inputs.question))
    state = b.set(both={"first": a.answer, "second": c.answer})
    assert state.both.first == "$both.first"
    with b.if_(ops.eq(state.both.first, state.both.second)):
        b.returns(answer=state.both.first)
    with b.else_():
        b.returns(answer=ops.join([a.answer, c.answer], " / "))
    data = b.to_dict()
    assert data["stepbridge"] == 2
    assert data["steps"][2] == {"if": {"$eq": ["$both.first", "$both.second"]},
                                "then": [{"return": {"answer": "$both.first"}}],
                                "else": [{"return": {"answer": {"$join": [["$a.answer", "$c.answer"], " / "]}}}]}
    program = b.build()
    assert program.required_capabilities == {"control_flow", "parallel"}
    with pytest.raises(ValueError, match="only call steps"), b.parallel():
        b.set(x=1)
    with pytest.raises(ValueError, match="must follow an if_"), b.else_():
        pass


def test_builder_stays_format_1_without_format_2_constructs() -> None:
    assert rag_builder().to_dict()["stepbridge"] == 1
