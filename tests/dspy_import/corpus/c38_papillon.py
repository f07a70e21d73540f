# Source: stanfordnlp/dspy docs/docs/tutorials/gepa_papillon/index.ipynb (class PAPILLON: a redacted request,
# an untrusted LM called directly, try/except). Adapted: the untrusted model is the ambient LM (the
# tutorial's large_lm is a remote model), looked up when called.
import dspy


class CraftRedactedRequest(dspy.Signature):
    """
    Given a private user query, create a privacy-preserving request for a powerful external LLM.
    The LLM may assist without learning private information about the user.
    """

    user_query = dspy.InputField()
    llm_request = dspy.OutputField()


class RespondToQuery(dspy.Signature):
    """
    Respond to a user query.
    For inspiration, we found a potentially related request to a powerful external LLM and its response.
    """

    related_llm_request = dspy.InputField()
    related_llm_response = dspy.InputField(desc="information from a powerful LLM responding to a related request")
    user_query = dspy.InputField(desc="the user's request you need to fulfill")
    response = dspy.OutputField(desc="your final response to the user's request")


class PAPILLON(dspy.Module):
    def __init__(self, untrusted_model):
        self.craft_redacted_request = dspy.ChainOfThought(CraftRedactedRequest)
        self.respond_to_query = dspy.Predict(RespondToQuery)
        self.untrusted_model = untrusted_model

    def forward(self, user_query):
        try:
            llm_request = self.craft_redacted_request(user_query=user_query).llm_request
            llm_response = self.untrusted_model(llm_request)[0]
            response = self.respond_to_query(
                related_llm_request=llm_request, related_llm_response=llm_response, user_query=user_query
            ).response
        except Exception:
            return dspy.Prediction(llm_request="", llm_response="", response="")

        return dspy.Prediction(llm_request=llm_request, llm_response=llm_response, response=response)


def build():
    return PAPILLON(untrusted_model=lambda prompt: dspy.settings.lm(prompt))


SAMPLES = [{"user_query": "My name is Ana Lopez; write a note to my landlord about the broken heater."},
           {"user_query": "I live at 12 Rue Cler; what museums are near me?"}]
HELD_OUT = [{"user_query": "My doctor Dr. Smith said my blood pressure is high; what should I eat?"}]
