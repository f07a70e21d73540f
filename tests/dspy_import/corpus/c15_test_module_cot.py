# Source: stanfordnlp/dspy tests/primitives/test_base_module.py (class MyModule: self.cot = ChainOfThought("q -> a")).
import dspy


class MyModule(dspy.Module):
    def __init__(self):
        self.cot = dspy.ChainOfThought(dspy.Signature("q -> a"))

    def forward(self, q):
        return self.cot(q=q)


def build():
    return MyModule()


SAMPLES = [{"q": "What is 1+1?"}, {"q": "Name a color."}]
HELD_OUT = [{"q": "Capital of Peru?"}]
