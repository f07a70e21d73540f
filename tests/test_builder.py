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
