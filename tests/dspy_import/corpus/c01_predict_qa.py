# Source: stanfordnlp/dspy docs/docs/learn/programming/adapters.md ("predict = dspy.Predict('question -> answer')").
# Adapted: no dspy.configure (the test supplies the LM).
import dspy


def build():
    return dspy.Predict("question -> answer")


SAMPLES = [{"question": "What is the capital of France?"}, {"question": "Who wrote Hamlet?"}]
HELD_OUT = [{"question": "Where is Mount Everest?"}]
