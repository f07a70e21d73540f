# Source: stanfordnlp/dspy docs/docs/learn/programming/signatures.md (class Emotion, dspy.Predict(Emotion)).
from typing import Literal

import dspy


class Emotion(dspy.Signature):
    """Classify emotion."""

    sentence: str = dspy.InputField()
    sentiment: Literal["sadness", "joy", "love", "anger", "fear", "surprise"] = dspy.OutputField()


def build():
    return dspy.Predict(Emotion)


SAMPLES = [{"sentence": "i started feeling a little vulnerable when the giant spotlight started blinding me"},
           {"sentence": "what a joy to see you"}]
HELD_OUT = [{"sentence": "i am so angry right now"}]
