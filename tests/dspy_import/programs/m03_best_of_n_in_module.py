# Source: stepbridge tests (BestOfN and Refine nested in a custom module, fed by an earlier predictor).
import dspy


def has_digit(args, pred):
    return float(any(ch.isdigit() for ch in pred.answer))


class Pipeline(dspy.Module):
    def __init__(self):
        self.rewrite = dspy.Predict("question -> query")
        self.best = dspy.BestOfN(dspy.ChainOfThought("query -> answer"), N=3, reward_fn=has_digit, threshold=1.0)
        self.refine = dspy.Refine(dspy.Predict("query, draft -> answer"), N=2, reward_fn=has_digit, threshold=1.0)

    def forward(self, question):
        query = self.rewrite(question=question).query
        draft = self.best(query=query).answer
        final = self.refine(query=query, draft=draft)
        return dspy.Prediction(draft=draft, answer=final.answer)


def build():
    return Pipeline()


SAMPLES = [{"question": "How many legs does a spider have?"}, {"question": "What year did WW2 end?"}]
HELD_OUT = [{"question": "How many planets are in the solar system?"}]
