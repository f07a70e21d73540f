# Source: stanfordnlp/dspy docs/docs/learn/programming/signatures.md (class MathSignature: number: int ->
# result: str, "Perform a mathematical operation.").
import dspy


class MathSignature(dspy.Signature):
    """Perform a mathematical operation."""
    number: int = dspy.InputField()
    result: str = dspy.OutputField()


def build():
    return dspy.Predict(MathSignature)


SAMPLES = [{"number": 42}, {"number": 7}]
HELD_OUT = [{"number": 100}]
