# Source: stepbridge tests (BestOfN, a lambda reward returning a bool, N=2, an explicit fail_count).
import dspy

reward = lambda args, pred: "Paris" in pred.answer or len(args["question"]) > 40  # noqa: E731


def build():
    return dspy.BestOfN(module=dspy.Predict("question -> answer"), N=2, reward_fn=reward, threshold=1,
                        fail_count=1)


SAMPLES = [{"question": "What is the capital of France?"}, {"question": "Name a prime number bigger than 10."}]
HELD_OUT = [{"question": "Which ocean is the largest one on planet Earth, by area?"}]
