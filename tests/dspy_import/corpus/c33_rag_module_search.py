# Source: stanfordnlp/dspy docs/docs/learn/programming/modules.md ("Retrieval-Augmented Generation":
# search(query) -> list[str] and dspy.ChainOfThought('context, question -> response')), written as the
# module the tutorials build. Adapted: search is an offline stand-in for the ColBERTv2 endpoint,
# registered as a tool by the test (TOOLS), as an operator registers the tools a program names.
import dspy

ABSTRACTS = ["David Gregory inherited Kinnairdy Castle in 1664.", "Kinnairdy Castle is a tower house in Scotland.",
             "The Eiffel Tower is in Paris."]


def search(query: str) -> list[str]:
    """Retrieves abstracts from Wikipedia."""
    words = set(query.lower().split())
    return sorted(ABSTRACTS, key=lambda a: -len(words & set(a.lower().split())))[:3]


class RAG(dspy.Module):
    def __init__(self):
        self.rag = dspy.ChainOfThought("context, question -> response")

    def forward(self, question):
        return self.rag(context=search(question), question=question)


def build():
    return RAG()


TOOLS = [search]
SAMPLES = [{"question": "What's the name of the castle that David Gregory inherited?"},
           {"question": "Where is the Eiffel Tower?"}]
HELD_OUT = [{"question": "Where is Kinnairdy Castle?"}]
