# Source: stanfordnlp/dspy docs/docs/tutorials/deployment/index.md (class MyProgram: forward(self, messages)
# answers messages[0]["content"] with dspy.ChainOfThought("question -> answer")).
import dspy


class MyProgram(dspy.Module):
    def __init__(self):
        super().__init__()
        self.cot = dspy.ChainOfThought("question -> answer")

    def forward(self, messages):
        return self.cot(question=messages[0]["content"])


def build():
    return MyProgram()


SAMPLES = [{"messages": [{"role": "user", "content": "What is the capital of France?"}]},
           {"messages": [{"role": "user", "content": "What is 2+2?"}]}]
HELD_OUT = [{"messages": [{"role": "user", "content": "Who painted the Mona Lisa?"}]}]
