# Source: stanfordnlp/dspy docs/docs/tutorials/multihop_search/index.ipynb (class Hop). Adapted: search is
# an offline stand-in (registered as a tool by the test, TOOLS, as an operator registers the tools a program
# names); num_docs/num_hops small.
import dspy


def search(query, k):
    return [f"{query} -- passage {i}" for i in range(k)]


class Hop(dspy.Module):
    def __init__(self, num_docs=2, num_hops=2):
        self.num_docs, self.num_hops = num_docs, num_hops
        self.generate_query = dspy.ChainOfThought("claim, notes -> query")
        self.append_notes = dspy.ChainOfThought("claim, notes, context -> new_notes: list[str], titles: list[str]")

    def forward(self, claim: str) -> list[str]:
        notes = []
        titles = []

        for _ in range(self.num_hops):
            query = self.generate_query(claim=claim, notes=notes).query
            context = search(query, k=self.num_docs)
            prediction = self.append_notes(claim=claim, notes=notes, context=context)
            notes.extend(prediction.new_notes)
            titles.extend(prediction.titles)

        return dspy.Prediction(notes=notes, titles=list(set(titles)))


def build():
    return Hop()


SAMPLES = [{"claim": "The Eiffel Tower is in Paris."}, {"claim": "Everest is the tallest mountain."}]
TOOLS = [search]
HELD_OUT = [{"claim": "The Louvre houses the Mona Lisa."}]
