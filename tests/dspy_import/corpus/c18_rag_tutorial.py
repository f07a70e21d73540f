# Source: stanfordnlp/dspy docs/docs/tutorials/rag/index.ipynb (class RAG: context = search(question).passages).
# Adapted: search is an offline stand-in over a three-passage corpus instead of a remote embedder.
import dspy

CORPUS = ["The Eiffel Tower was designed by Gustave Eiffel's company.", "Mount Everest is in Nepal.",
          "The Louvre houses the Mona Lisa."]


def search(query):
    words = set(query.lower().split())
    ranked = sorted(CORPUS, key=lambda p: -len(words & set(p.lower().split())))
    return dspy.Prediction(passages=ranked[:2])


class RAG(dspy.Module):
    def __init__(self):
        self.respond = dspy.ChainOfThought("context, question -> response")

    def forward(self, question):
        context = search(question).passages
        return self.respond(context=context, question=question)


def build():
    return RAG()


SAMPLES = [{"question": "Who designed the Eiffel Tower?"}, {"question": "Where is Mount Everest?"}]
HELD_OUT = [{"question": "What does the Louvre house?"}]
