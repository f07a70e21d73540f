# Source: stanfordnlp/dspy docs/docs/learn/programming/adapters.md (NewsQA under dspy.JSONAdapter()).
import dspy
import pydantic


class ScienceNews(pydantic.BaseModel):
    text: str
    scientists_involved: list[str]


class NewsQA(dspy.Signature):
    """Get news about the given science field"""

    science_field: str = dspy.InputField()
    year: int = dspy.InputField()
    num_of_outputs: int = dspy.InputField()
    news: list[ScienceNews] = dspy.OutputField(desc="science news")


def build():
    return dspy.Predict(NewsQA)


ADAPTER = "json"
SAMPLES = [{"science_field": "Computer Theory", "year": 2022, "num_of_outputs": 1},
           {"science_field": "Biology", "year": 2021, "num_of_outputs": 2}]
HELD_OUT = [{"science_field": "Physics", "year": 2020, "num_of_outputs": 1}]
