# Source: stanfordnlp/dspy docs/docs/tutorials/custom_module/index.ipynb (RAG with QueryGenerator and
# search_wikipedia). Adapted: search_wikipedia is an offline stand-in for the ColBERTv2 endpoint, registered
# as a tool by the test (TOOLS), as an operator registers the tools a program names.
import dspy


class QueryGenerator(dspy.Signature):
    """Generate a query based on question to fetch relevant context"""

    question: str = dspy.InputField()
    query: str = dspy.OutputField()


def search_wikipedia(query: str) -> list[str]:
    """Query ColBERT endpoint, which is a knowledge source based on wikipedia data"""
    return [f"Wikipedia abstract about {query}"]


class RAG(dspy.Module):
    def __init__(self):
        self.query_generator = dspy.Predict(QueryGenerator)
        self.answer_generator = dspy.ChainOfThought("question,context->answer")

    def forward(self, question, **kwargs):
        query = self.query_generator(question=question).query
        context = search_wikipedia(query)[0]
        return self.answer_generator(question=question, context=context).answer


def build():
    return RAG()


TOOLS = [search_wikipedia]
SAMPLES = [{"question": "Who created Python?"}, {"question": "What is the tallest mountain?"}]
HELD_OUT = [{"question": "Who wrote Faust?"}]
