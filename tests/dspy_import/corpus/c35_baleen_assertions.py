# Source: stanfordnlp/dspy docs/docs/learn/programming/7-assertions.md (class SimplifiedBaleen, the version
# without assertions: prev_queries kept, dspy.Retrieve, deduplicate). Adapted: the RM is an offline stand-in
# (RM below, registered by the test as an operator would); signatures as in the page's linked tutorial.
import dspy
from dspy.dsp.utils import deduplicate, dotdict


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


class SimplifiedBaleen(dspy.Module):
    def __init__(self, passages_per_hop=2, max_hops=2):
        super().__init__()

        self.generate_query = [dspy.ChainOfThought(GenerateSearchQuery) for _ in range(max_hops)]
        self.retrieve = dspy.Retrieve(k=passages_per_hop)
        self.generate_answer = dspy.ChainOfThought(GenerateAnswer)
        self.max_hops = max_hops

    def forward(self, question):
        context = []
        prev_queries = [question]

        for hop in range(self.max_hops):
            query = self.generate_query[hop](context=context, question=question).query
            prev_queries.append(query)
            passages = self.retrieve(query).passages
            context = deduplicate(context + passages)

        pred = self.generate_answer(context=context, question=question)
        pred = dspy.Prediction(context=context, answer=pred.answer)
        return pred


def RM(query, k=3, **kwargs):
    return [dotdict(long_text=f"{query} (passage {i % 2})") for i in range(k)]


def build():
    return SimplifiedBaleen()


SAMPLES = [{"question": "Who designed the Eiffel Tower?"}, {"question": "Where is Mount Everest?"}]
HELD_OUT = [{"question": "What does the Louvre house?"}]
