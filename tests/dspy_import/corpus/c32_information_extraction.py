# Source: stanfordnlp/dspy docs/docs/learn/programming/modules.md ("Information Extraction":
# dspy.Predict("text -> title, headings: list[str], entities_and_metadata: list[dict[str, str]]")).
import dspy


def build():
    return dspy.Predict("text -> title, headings: list[str], entities_and_metadata: list[dict[str, str]]")


SAMPLES = [{"text": "Apple Inc. announced its latest iPhone 14 today. The CEO, Tim Cook, highlighted its new features "
                    "in a press release."},
           {"text": "The Louvre reopened on Monday after renovation works led by the city of Paris."}]
HELD_OUT = [{"text": "NASA launched a new telescope; its director praised the engineering team."}]
