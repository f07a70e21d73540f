# Source: stepbridge tests (dspy.Parallel over two different predictors, with an Example and a dict).
import dspy


class Both(dspy.Module):
    def __init__(self):
        self.summarize = dspy.Predict("text -> summary")
        self.classify = dspy.ChainOfThought("text -> label")
        self.parallel = dspy.Parallel(num_threads=2)

    def forward(self, text):
        results = self.parallel([
            (self.summarize, dspy.Example(text=text, note="unused").with_inputs("text")),
            (self.classify, {"text": text}),
        ])
        return dspy.Prediction(summary=results[0].summary, label=results[1].label)


def build():
    return Both()


SAMPLES = [{"text": "The stock market rose today."}, {"text": "A new species of frog was found."}]
HELD_OUT = [{"text": "Rain is expected tomorrow."}]
