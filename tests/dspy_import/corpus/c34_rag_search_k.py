# Source: stanfordnlp/dspy docs/docs/learn/optimization/optimizers.md ("Optimizing prompts for a RAG system":
# class RAG, context = search(question, k=self.num_docs)). Adapted: search is an offline stand-in for the
# tutorial's retriever (same signature, search(query: str, k: int) -> list[str]), registered as a tool by
# the test (TOOLS), as an operator registers the tools a program names; num_docs small.
import dspy

PASSAGES = ["The Eiffel Tower was designed by Gustave Eiffel's company.", "Mount Everest is in Nepal.",
            "The Louvre houses the Mona Lisa.", "Python was created by Guido van Rossum."]


def search(query: str, k: int) -> list[str]:
    words = set(query.lower().split())
    return sorted(PASSAGES, key=lambda p: -len(words & set(p.lower().split())))[:k]


class RAG(dspy.Module):
    def __init__(self, num_docs=2):
        self.num_docs = num_docs
        self.respond = dspy.ChainOfThought('context, question -> response')

    def forward(self, question):
        context = search(question, k=self.num_docs)   # not defined in this snippet, see link above
        return self.respond(context=context, question=question)


def build():
    return RAG()


TOOLS = [search]
SAMPLES = [{"question": "Who designed the Eiffel Tower?"}, {"question": "Where is Mount Everest?"}]
HELD_OUT = [{"question": "What does the Louvre house?"}]
