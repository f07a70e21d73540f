# Source: stanfordnlp/dspy docs/docs/learn/programming/signatures.md (summarize = dspy.ChainOfThought('document -> summary')).
import dspy


def build():
    return dspy.ChainOfThought("document -> summary")


DOC = ("The 21-year-old made seven appearances for the Hammers and netted his only goal for them in a Europa "
       "League qualification round match against Andorran side FC Lustrains last season.")
SAMPLES = [{"document": DOC}, {"document": "Lee had two loan spells in League One last term."}]
HELD_OUT = [{"document": "The length of Lee's contract with the promoted Tykes has not been revealed."}]
