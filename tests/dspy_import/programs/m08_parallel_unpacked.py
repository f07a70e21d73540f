# Source: stepbridge tests (dspy.Parallel over one predictor, results unpacked into names).
import dspy


class Two(dspy.Module):
    def __init__(self):
        self.answer = dspy.Predict("question -> answer")
        self.parallel = dspy.Parallel()

    def forward(self, first, second):
        a, b = self.parallel([(self.answer, dspy.Example(question=first).with_inputs("question")),
                              (self.answer, dspy.Example(question=second).with_inputs("question"))])
        return dspy.Prediction(first_answer=a.answer, second_answer=b.answer)


def build():
    return Two()


SAMPLES = [{"first": "Capital of Peru?", "second": "Capital of Chile?"}]
HELD_OUT = [{"first": "2+3?", "second": "Author of Faust?"}]
