# Source: stanfordnlp/dspy docs/docs/cheatsheet.md (class FactJudge, judge = dspy.ChainOfThought(FactJudge)).
import dspy


class FactJudge(dspy.Signature):
    """Judge if the answer is factually correct based on the context."""

    context = dspy.InputField(desc="Context for the prediction")
    question = dspy.InputField(desc="Question to be answered")
    answer = dspy.InputField(desc="Answer for the question")
    factually_correct: bool = dspy.OutputField(desc="Is the answer factually correct based on the context?")


def build():
    return dspy.ChainOfThought(FactJudge)


SAMPLES = [{"context": "Paris is the capital of France.", "question": "Capital of France?", "answer": "Paris"},
           {"context": "Rome is in Italy.", "question": "Where is Rome?", "answer": "Spain"}]
HELD_OUT = [{"context": "Water boils at 100 C.", "question": "Boiling point?", "answer": "100 C"}]
