# Source: stanfordnlp/dspy docs/docs/cheatsheet.md (best_of_3 = dspy.BestOfN(module=qa, N=3, ...)).
import dspy


def one_word_answer(args, pred):
    return 1.0 if len(pred.answer) == 1 else 0.0


def build():
    qa = dspy.ChainOfThought("question -> answer")
    return dspy.BestOfN(module=qa, N=3, reward_fn=one_word_answer, threshold=1.0)


SAMPLES = [{"question": "What is the capital of Belgium?"}, {"question": "What is 2+2?"}]
HELD_OUT = [{"question": "What is the capital of Peru?"}]
