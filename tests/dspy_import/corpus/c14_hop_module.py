# Source: stanfordnlp/dspy tests/primitives/test_base_module.py-style two-hop module (HopModule:
# predict1 "question -> query", predict2 "query -> answer"), as used in DSPy's own module tests.
import dspy


class HopModule(dspy.Module):
    def __init__(self):
        super().__init__()
        self.predict1 = dspy.Predict("question -> query")
        self.predict2 = dspy.Predict("query -> answer")

    def forward(self, question):
        query = self.predict1(question=question).query
        return self.predict2(query=query)


def build():
    return HopModule()


SAMPLES = [{"question": "Who designed the Eiffel Tower?"}, {"question": "Where is Mount Everest?"}]
HELD_OUT = [{"question": "What does the Louvre house?"}]
