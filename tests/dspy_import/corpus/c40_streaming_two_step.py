# Source: stanfordnlp/dspy docs/docs/tutorials/streaming/index.md (class MyModule: predict1 "question->answer",
# then predict2 "answer->simplified_answer" called with predict1's whole prediction).
import dspy


class MyModule(dspy.Module):
    def __init__(self):
        super().__init__()

        self.predict1 = dspy.Predict("question->answer")
        self.predict2 = dspy.Predict("answer->simplified_answer")

    def forward(self, question: str, **kwargs):
        answer = self.predict1(question=question)
        simplified_answer = self.predict2(answer=answer)
        return simplified_answer


def build():
    return MyModule()


SAMPLES = [{"question": "Why did a chicken cross the kitchen?"}, {"question": "Why is the sky blue?"}]
HELD_OUT = [{"question": "Why do cats purr? (it's \"complicated\")"}]
