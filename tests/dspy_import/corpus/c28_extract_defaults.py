# Source: stanfordnlp/dspy docs/docs/learn/programming/signatures.md (class Extract: output fields with
# defaults, "missing -> 'No note'", default_factory=list, Optional).
import dspy


class Extract(dspy.Signature):
    """Extract structured information from text."""
    text: str = dspy.InputField()
    title: str = dspy.OutputField()                                # required: missing -> AdapterParseError
    note: str | None = dspy.OutputField(default="No note")         # missing -> "No note"
    tags: list[str] = dspy.OutputField(default_factory=list)      # missing -> []
    subtitle: str | None = dspy.OutputField()                      # missing -> None


def build():
    return dspy.Predict(Extract)


SAMPLES = [{"text": "DSPy: programming, not prompting, language models."}, {"text": "A short note on BM25."}]
HELD_OUT = [{"text": "Retrieval-augmented generation, explained."}]
