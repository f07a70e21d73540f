# Source: stanfordnlp/dspy docs/docs/learn/programming/signatures.md (class QueryResult(pydantic.BaseModel),
# dspy.Signature("query: str -> result: QueryResult")), used with dspy.Predict.
import dspy
import pydantic


class QueryResult(pydantic.BaseModel):
    text: str
    score: float


def build():
    signature = dspy.Signature("query: str -> result: QueryResult")
    return dspy.Predict(signature)


SAMPLES = [{"query": "capital of France"}, {"query": "tallest mountain"}]
HELD_OUT = [{"query": "longest river"}]
