"""The builder writes the format-2 module types as a file would, and validates them the same way."""

from __future__ import annotations

import pytest
from stepbridge.builder import ProgramBuilder
from stepbridge.errors import ProgramValidationError
from stepbridge.loader import load_program


def test_ensembles_built_match_the_file_form() -> None:
    b = ProgramBuilder("ens", "question -> answer", lm={"temperature": 0.0})
    qa = b.chain_of_thought("qa", "question -> answer")
    judge = b.predict("judge", "question, answer -> score: float")
    best = b.refine("best", qa, n=3, threshold=1.0, judge=judge, field="score", fail_count=2)
    r = b.call(best, question=b.inputs.question)
    program = b.returns(answer=r.answer).build()
    data = program.to_dict()
    assert data["stepbridge"] == 2
    assert data["modules"]["best"] == {"type": "refine", "module": "qa", "n": 3,
                                       "reward": {"module": "judge", "field": "score"}, "threshold": 1.0,
                                       "fail_count": 2}
    assert load_program(data).content_hash == program.content_hash


def test_a_bad_ensemble_is_refused_with_pointers() -> None:
    b = ProgramBuilder("ens", "question -> answer")
    b.chain_of_thought("qa", "question -> answer")
    b.best_of_n("best", "qaa", n=3, threshold=1.0, metric="exact_matc")
    r = b.call("best", question=b.inputs.question)
    with pytest.raises(ProgramValidationError) as info:
        b.returns(answer=r.answer).build()
    issues = {i.pointer: i for i in info.value.issues if i.severity == "error"}
    assert issues["/modules/best/module"].suggestion == "qa"
