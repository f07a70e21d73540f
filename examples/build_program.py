"""Build the RAG program in Python, check it equals examples/rag_qa.yaml, and run it.

    python examples/build_program.py
"""

from __future__ import annotations

from pathlib import Path

import stepbridge as sb

HERE = Path(__file__).resolve().parent


def build() -> sb.Program:
    b = sb.ProgramBuilder("rag_qa", "question -> answer", description="Answer a question from retrieved passages.",
                          lm={"temperature": 0.0})
    search = b.retrieve("search", corpus="data/wiki.jsonl", k=3)
    answer = b.chain_of_thought("answer", "context: list[str], question -> answer",
                                instructions="Answer using only the context.")
    found = b.call(search, query=b.inputs.question, as_="found")
    result = b.call(answer, context=found.passages, question=b.inputs.question, as_="result")
    return b.returns(answer=result.answer).build(base_dir=HERE)


if __name__ == "__main__":
    program = build()
    from_file = sb.load_program(HERE / "rag_qa.yaml")
    print("same program as examples/rag_qa.yaml:", program.content_hash == from_file.content_hash)
    print(sb.run(program, {"question": "Who created Python?"}).outputs["answer"])
