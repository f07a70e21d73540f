# Source: stanfordnlp/dspy tests/examples/test_baleen.py (SimplifiedBaleen: a list of query generators,
# dspy.Retrieve, a loop over hops). Adapted: deduplicate inlined; the RM is an offline stand-in (RM below).
import dspy
from dspy.dsp.utils import dotdict


class GenerateAnswer(dspy.Signature):
    """Answer questions with short factoid answers."""

    context = dspy.InputField(desc="may contain relevant facts")
    question = dspy.InputField()
    answer = dspy.OutputField(desc="often between 1 and 5 words")


class GenerateSearchQuery(dspy.Signature):
    """Write a simple search query that will help answer a complex question."""

    context = dspy.InputField(desc="may contain relevant facts")
    question = dspy.InputField()
    query = dspy.OutputField()


def deduplicate(seq):
    return list(dict.fromkeys(seq))


class SimplifiedBaleen(dspy.Module):
    def __init__(self, passages_per_hop=3, max_hops=2):
        super().__init__()

        self.generate_query = [dspy.ChainOfThought(GenerateSearchQuery) for _ in range(max_hops)]
        self.retrieve = dspy.Retrieve(k=passages_per_hop)
        self.generate_answer = dspy.ChainOfThought(GenerateAnswer)
        self.max_hops = max_hops

    def forward(self, question):
        context = []

        for hop in range(self.max_hops):
            query = self.generate_query[hop](context=context, question=question).query
            passages = self.retrieve(query).passages
            context = deduplicate(context + passages)

        pred = self.generate_answer(context=context, question=question)
        return dspy.Prediction(context=context, answer=pred.answer)


def RM(query, k=3, **kwargs):
    return [dotdict(long_text=f"{query} (passage {i})") for i in range(k)]


def build():
    return SimplifiedBaleen()


SAMPLES = [{"question": "Who designed the Eiffel Tower?"}, {"question": "Where is Mount Everest?"}]
HELD_OUT = [{"question": "What does the Louvre house?"}]
