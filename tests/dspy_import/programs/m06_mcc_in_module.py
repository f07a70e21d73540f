# Source: stepbridge tests (MultiChainComparison with M=4 inside a module: the completions come from forward's
# input, the question from an earlier predictor).
import dspy


class Compare(dspy.Module):
    def __init__(self):
        self.clarify = dspy.Predict("topic -> question")
        self.compare = dspy.MultiChainComparison("question -> answer", M=4)

    def forward(self, topic, completions):
        question = self.clarify(topic=topic).question
        return self.compare(completions=completions, question=question)


def build():
    return Compare()


ATTEMPTS = [{"reasoning": f"Attempt {i} thinks so.", "answer": a} for i, a in enumerate(["4", "5", "4", "four"])]
SAMPLES = [{"topic": "two plus two", "completions": ATTEMPTS}]
HELD_OUT = [{"topic": "sums", "completions": ATTEMPTS[1:] + ATTEMPTS[:1]}]
