# Source: stepbridge tests (a predictor called directly and also wrapped by a Refine: DSPy's
# named_sub_modules sees it once; the program keeps two modules with the same content).
import dspy


def short(args, pred):
    return 1.0 if len(pred.answer.split()) <= 3 else 0.0


class Twice(dspy.Module):
    def __init__(self):
        self.qa = dspy.Predict("question -> answer")
        self.refined = dspy.Refine(self.qa, N=2, reward_fn=short, threshold=1.0)

    def forward(self, question):
        draft = self.qa(question=question).answer
        final = self.refined(question=question)
        return dspy.Prediction(draft=draft, answer=final.answer)


def build():
    return Twice()


SAMPLES = [{"question": "Who painted the Mona Lisa?"}, {"question": "Explain photosynthesis in detail."}]
HELD_OUT = [{"question": "What is the boiling point of water?"}]
