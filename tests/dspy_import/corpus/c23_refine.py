# Source: stanfordnlp/dspy docs/docs/tutorials/output_refinement/best-of-n-and-refine.md (dspy.Refine).
import dspy


def one_word_answer(args, pred: dspy.Prediction) -> float:
    return 1.0 if len(pred.answer.split()) == 1 else 0.0


def build():
    return dspy.Refine(module=dspy.ChainOfThought("question -> answer"), N=3, reward_fn=one_word_answer,
                       threshold=1.0)


SAMPLES = [{"question": "What is the capital of Belgium?"}, {"question": "What is 2+2?"}]
HELD_OUT = [{"question": "What is the capital of Peru?"}]
