# Source: stanfordnlp/dspy docs/docs/learn/programming/signatures.md (classify = dspy.Predict('sentence -> sentiment: bool')).
import dspy


def build():
    return dspy.Predict("sentence -> sentiment: bool")


SAMPLES = [{"sentence": "it's a charming and often affecting journey."}, {"sentence": "a dull, lifeless film."}]
HELD_OUT = [{"sentence": "I loved every minute of it."}]
