# Source: stanfordnlp/dspy docs/docs/tutorials/entity_extraction/index.ipynb (PeopleExtraction).
import dspy


class PeopleExtraction(dspy.Signature):
    """
    Extract contiguous tokens referring to specific people, if any, from a list of string tokens.
    Output a list of tokens. In other words, do not combine multiple tokens into a single value.
    """

    tokens: list[str] = dspy.InputField(desc="tokenized text")
    extracted_people: list[str] = dspy.OutputField(
        desc="all tokens referring to specific people extracted from the tokenized text")


def build():
    return dspy.ChainOfThought(PeopleExtraction)


SAMPLES = [{"tokens": ["Alice", "met", "Bob", "in", "Paris"]}, {"tokens": ["The", "cat", "sat"]}]
HELD_OUT = [{"tokens": ["Marie", "Curie", "won", "twice"]}]
