# Source: stepbridge tests (Refine with an integer threshold and a callable object as reward: Refine shows
# the LM the class's source and the threshold as written).
import dspy


class ShortAnswer:
    """Rewards answers of at most `limit` words."""

    def __init__(self, limit):
        self.limit = limit

    def __call__(self, args, pred):
        return 1 if len(pred.answer.split()) <= self.limit else 0


def build():
    qa = dspy.ChainOfThought("question, context -> answer")
    return dspy.Refine(module=qa, N=2, reward_fn=ShortAnswer(1), threshold=1)


SAMPLES = [{"question": "Who wrote Hamlet?", "context": "Plays of the 1600s."}]
HELD_OUT = [{"question": "What is 3*7?", "context": "Arithmetic."}]
