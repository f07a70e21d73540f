# Source: stanfordnlp/dspy docs/docs/tutorials/rl_multihop/index.ipynb (class ResearchHop: a loop over hops
# with a conditional expression, search(query, k), a break on the last hop). Adapted: search is an offline
# stand-in for the tutorial's BM25 search (same signature), registered as a tool by the test (TOOLS), as an
# operator registers the tools a program names; num_docs/num_hops small.
import dspy

instr1 = """
Given a claim and some key facts, generate a follow-up search query to find the next most essential clue towards verifying or refuting the claim. The goal ultimately is to find all documents implicated by the claim.
""".strip()

instr2 = """
Given a claim, some key facts, and new search results, identify any new learnings from the new search results, which will extend the key facts known so far about the whether the claim is true or false. The goal is to ultimately collect all facts that would help us find all documents implicated by the claim.
"""


def search(query: str, k: int) -> list[str]:
    return [f"{query} | document {i}" for i in range(k)]


class ResearchHop(dspy.Module):
    def __init__(self, num_docs, num_hops):
        self.num_docs, self.num_hops = num_docs, num_hops
        self.generate_query = dspy.ChainOfThought(dspy.Signature("claim, key_facts -> followup_search_query", instr1))
        self.append_notes = dspy.ChainOfThought(dspy.Signature("claim, key_facts, new_search_results -> new_key_facts", instr2))

    def forward(self, claim: str) -> list[str]:
        key_facts = []
        retrieved_docs = []

        for hop_idx in range(self.num_hops):
            query = self.generate_query(claim=claim, key_facts=key_facts).followup_search_query if hop_idx else claim
            search_results = search(query, k=self.num_docs)
            retrieved_docs.extend(search_results)

            if hop_idx == self.num_hops - 1:
                break

            prediction = self.append_notes(claim=claim, key_facts=key_facts, new_search_results=search_results)
            key_facts.append(prediction.new_key_facts)

        return dspy.Prediction(key_facts=key_facts, retrieved_docs=retrieved_docs)


def build():
    return ResearchHop(num_docs=2, num_hops=3)


TOOLS = [search]
SAMPLES = [{"claim": "The Eiffel Tower is in Paris."}, {"claim": "Everest is the tallest mountain."}]
HELD_OUT = [{"claim": "The Louvre houses the Mona Lisa."}]
