"""An existing DSPy program, as a DSPy user would have written it: two predictors, a custom forward.

Import it into stepbridge (the forward is traced on the sample inputs, converted to steps, and the
conversion verified by running both and comparing outputs and LM messages):

    PYTHONPATH=examples/dspy_program stepbridge import-dspy qa_module:program \\
        --sample-inputs examples/dspy_program/samples.jsonl -o qa.yaml
    stepbridge run qa.yaml -i question="Who created Python?" -i 'context=["Python was created by Guido van Rossum."]'
"""

from __future__ import annotations

from typing import Any

import dspy


class RewriteThenAnswer(dspy.Module):
    """Rewrite the question into a search query, then answer from the context."""

    def __init__(self) -> None:
        super().__init__()
        self.rewrite = dspy.Predict("question -> search_query")
        self.answer = dspy.ChainOfThought("context: list[str], question, search_query -> answer")

    def forward(self, question: str, context: list[str]) -> Any:
        query = self.rewrite(question=question)
        result = self.answer(context=context, question=question, search_query=query.search_query)
        return dspy.Prediction(answer=result.answer, query=query.search_query)


program = RewriteThenAnswer()
