# Source: stepbridge tests (MultiChainComparison with M=2, a string signature and its own temperature).
import dspy


def build():
    return dspy.MultiChainComparison("question -> answer", M=2, temperature=0.3)


COMPLETIONS = [{"reasoning": "Water covers most of the planet.", "answer": "blue"},
               {"rationale": "Photos from space\nshow it.", "answer": "blue and white"}]
SAMPLES = [{"completions": COMPLETIONS, "question": "What colour is the Earth from space?"}]
HELD_OUT = [{"completions": COMPLETIONS[::-1], "question": "What colour is the sea?"}]
