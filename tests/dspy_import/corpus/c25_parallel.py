# Source: stanfordnlp/dspy docs/docs/cheatsheet.md (parallel = dspy.Parallel(num_threads=2) over a predictor),
# wrapped in a module as a program would.
import dspy


class TwoQuestions(dspy.Module):
    def __init__(self):
        self.predict = dspy.Predict("question -> answer")
        self.parallel = dspy.Parallel(num_threads=2)

    def forward(self, first, second):
        results = self.parallel([
            (self.predict, dspy.Example(question=first).with_inputs("question")),
            (self.predict, dspy.Example(question=second).with_inputs("question")),
        ])
        return dspy.Prediction(first_answer=results[0].answer, second_answer=results[1].answer)


def build():
    return TwoQuestions()


SAMPLES = [{"first": "1+1", "second": "2+2"}, {"first": "Capital of France?", "second": "Capital of Spain?"}]
HELD_OUT = [{"first": "Who wrote Hamlet?", "second": "Who wrote Faust?"}]
