# Source: stanfordnlp/dspy docs/docs/learn/programming/modules.md ("Classification": class Classify with
# sentiment: Literal[...] and confidence: float, dspy.Predict(Classify)).
from typing import Literal

import dspy


class Classify(dspy.Signature):
    """Classify sentiment of a given sentence."""

    sentence: str = dspy.InputField()
    sentiment: Literal['positive', 'negative', 'neutral'] = dspy.OutputField()
    confidence: float = dspy.OutputField()


def build():
    return dspy.Predict(Classify)


SAMPLES = [{"sentence": "This book was super fun to read, though not the last chapter."},
           {"sentence": "The service was slow and rude."}]
HELD_OUT = [{"sentence": "It is a book."}]
