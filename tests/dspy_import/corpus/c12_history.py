# Source: stanfordnlp/dspy docs/docs/tutorials/conversation_history/index.md (QA with dspy.History, a demo).
import dspy


class QA(dspy.Signature):
    question: str = dspy.InputField()
    history: dspy.History = dspy.InputField()
    answer: str = dspy.OutputField()


def build():
    predict = dspy.Predict(QA)
    predict.demos.append(
        dspy.Example(
            question="What is the capital of France?",
            history=dspy.History(
                messages=[{"question": "What is the capital of Germany?", "answer": "The capital of Germany is Berlin."}]
            ),
            answer="The capital of France is Paris.",
        )
    )
    return predict


SAMPLES = [{"question": "What is the capital of America?", "history": {"messages": []}},
           {"question": "And of Spain?", "history": {"messages": [{"question": "Capital of Italy?",
                                                                    "answer": "Rome."}]}}]
HELD_OUT = [{"question": "What about Japan?", "history": {"messages": []}}]


def to_dspy(inputs):
    return {**inputs, "history": dspy.History(**inputs["history"])}
