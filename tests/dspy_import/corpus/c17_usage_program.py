# Source: stanfordnlp/dspy docs/docs/learn/programming/modules.md (MyProgram: predict1 answer, predict2 score,
# overriding __call__ as written there).
import dspy


class MyProgram(dspy.Module):
    def __init__(self):
        self.predict1 = dspy.ChainOfThought("question -> answer")
        self.predict2 = dspy.ChainOfThought("question, answer -> score")

    def __call__(self, question: str) -> str:
        answer = self.predict1(question=question)
        score = self.predict2(question=question, answer=answer)
        return score


def build():
    return MyProgram()


SAMPLES = [{"question": "What is the capital of France?"}, {"question": "What is 2+2?"}]
HELD_OUT = [{"question": "Who painted the Mona Lisa?"}]
