# Source: stanfordnlp/dspy docs/docs/learn/programming/signatures.md (toxicity = dspy.Predict(dspy.Signature(...))).
import dspy


def build():
    return dspy.Predict(
        dspy.Signature(
            "comment -> toxic: bool",
            instructions="Mark as 'toxic' if the comment includes insults, harassment, or sarcastic derogatory remarks.",
        )
    )


SAMPLES = [{"comment": "you are beautiful."}, {"comment": "what a stupid idea, you fool"}]
HELD_OUT = [{"comment": "thanks for the help"}]
