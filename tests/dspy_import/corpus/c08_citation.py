# Source: stanfordnlp/dspy docs/docs/learn/programming/signatures.md (class CheckCitationFaithfulness).
import dspy


class CheckCitationFaithfulness(dspy.Signature):
    """Verify that the text is based on the provided context."""

    context: str = dspy.InputField(desc="facts here are assumed to be true")
    text: str = dspy.InputField()
    faithfulness: bool = dspy.OutputField()
    evidence: dict[str, list[str]] = dspy.OutputField(desc="Supporting evidence for claims")


def build():
    return dspy.ChainOfThought(CheckCitationFaithfulness)


CONTEXT = "Lee had two loan spells in League One last term, with Blackpool and then Colchester United."
SAMPLES = [{"context": CONTEXT, "text": "Lee scored 3 goals for Colchester United."},
           {"context": CONTEXT, "text": "Lee played for Blackpool."}]
HELD_OUT = [{"context": CONTEXT, "text": "Lee never left the Hammers."}]
