# Source: stanfordnlp/dspy docs/docs/cheatsheet.md ("dspy_program = dspy.ChainOfThought('question -> answer')").
import dspy


def build():
    return dspy.ChainOfThought("question -> answer")


SAMPLES = [{"question": "What is DSPy?"}, {"question": "What is the color of the sky?"}]
HELD_OUT = [{"question": "Who designed the Eiffel Tower?"}]
