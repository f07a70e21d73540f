# Source: stanfordnlp/dspy docs/docs/tutorials/async/index.md (MyModule with aforward: predict1 then predict2).
import dspy


class MyModule(dspy.Module):
    def __init__(self):
        self.predict1 = dspy.ChainOfThought("question->answer")
        self.predict2 = dspy.ChainOfThought("answer->simplified_answer")

    async def aforward(self, question, **kwargs):
        # Execute predictions sequentially but asynchronously
        answer = await self.predict1.acall(question=question)
        return await self.predict2.acall(answer=answer)


def build():
    return MyModule()


SAMPLES = [{"question": "Why did a chicken cross the kitchen?"}, {"question": "Why is the sky blue?"}]
HELD_OUT = [{"question": "Why do cats purr?"}]
