# Source: stepbridge tests (a router whose one branch is a BestOfN over a ChainOfThought with a reward
# reading the inputs; both paths reached by the samples).
import dspy


def mentions_question(args, pred):
    return 1.0 if args["question"].split()[0].lower() in pred.answer.lower() else 0.25


class Router(dspy.Module):
    def __init__(self):
        self.quick = dspy.Predict("question -> answer")
        self.careful = dspy.BestOfN(dspy.ChainOfThought("question -> answer"), N=2, reward_fn=mentions_question,
                                    threshold=1.0)

    def forward(self, question):
        if len(question) < 20:
            return self.quick(question=question)
        result = self.careful(question=question)
        return dspy.Prediction(answer=result.answer)


def build():
    return Router()


SAMPLES = [{"question": "2+2?"}, {"question": "Why is the sky blue during the day?"}]
HELD_OUT = [{"question": "Capital?"}, {"question": "How do tides relate to the moon's orbit?"}]
