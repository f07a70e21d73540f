# Source: stepbridge tests (dspy.Parallel over a comprehension of (predictor, example) pairs, as DSPy's
# docs batch a predictor; its results read back by a comprehension of fields).
import dspy


class Batch(dspy.Module):
    def __init__(self):
        self.qa = dspy.ChainOfThought("question -> answer")
        self.parallel = dspy.Parallel(num_threads=3)

    def forward(self, questions):
        results = self.parallel([(self.qa, dspy.Example(question=q).with_inputs("question")) for q in questions])
        return dspy.Prediction(first=results[0].answer, last=results[-1].answer)


def build():
    return Batch()


SAMPLES = [{"questions": ["1+1?", "Capital of Peru?", "Who wrote Faust?"]},
           {"questions": ["2+2?", "Largest ocean?"]}]
HELD_OUT = [{"questions": ["Colour of the sky?", "3*3?", "Capital of Chile?", "Author of Hamlet?"]}]
