# Source: stanfordnlp/dspy docs/docs/cheatsheet.md (class BasicQA, generate_answer = dspy.ChainOfThought(BasicQA)).
import dspy


class BasicQA(dspy.Signature):
    """Answer questions with short factoid answers."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField(desc="often between 1 and 5 words")


def build():
    return dspy.ChainOfThought(BasicQA)


SAMPLES = [{"question": "What is the color of the sky?"}, {"question": "What is 2+2?"}]
HELD_OUT = [{"question": "What is the capital of Belgium?"}]
