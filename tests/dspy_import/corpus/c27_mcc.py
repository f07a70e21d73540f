# Source: stanfordnlp/dspy tests/predict/test_multi_chain_comparison.py (dspy.MultiChainComparison over
# BasicQA with M=3 given completions).
import dspy


class BasicQA(dspy.Signature):
    """Answer questions with short factoid answers."""

    question = dspy.InputField()
    answer = dspy.OutputField(desc="often between 1 and 5 words")


def build():
    return dspy.MultiChainComparison(BasicQA, M=3)


COMPLETIONS = [
    {"rationale": "I recall that during clear days, the sky often appears this color.", "answer": "blue"},
    {"rationale": "Based on common knowledge, I believe the sky is typically seen as this color.", "answer": "green"},
    {"rationale": "From images and depictions in media, the sky is frequently represented with this hue.",
     "answer": "blue"},
]
SAMPLES = [{"completions": COMPLETIONS, "question": "What is the color of the sky?"}]
HELD_OUT = [{"completions": COMPLETIONS, "question": "What color is the ocean?"}]


def to_dspy(inputs):
    return {**inputs, "completions": [dspy.Example(**c) for c in inputs["completions"]]}
