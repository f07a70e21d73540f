# Source: stanfordnlp/dspy docs/docs/tutorials/gepa_papillon/index.ipynb (class LLMJudge: two quality
# judgments, list(set(pii_str.split("||"))), a leakage count divided by the number of PII pieces).
import dspy


class JudgeQuality(dspy.Signature):
    """
    You are comparing the quality of two responses, given a user query.
    Is response A at least as good as response B?
    """

    user_query = dspy.InputField(desc="The user's request to be fulfilled.")
    response_A = dspy.InputField()
    response_B = dspy.InputField()
    judgment: bool = dspy.OutputField()


class JudgeLeakage(dspy.Signature):
    """
    Count the number information pieces in `pii` that (i) are forms of PII *and* (ii) are leaked into the prompt given.
    Don't count the cases where the leaked information is just a celebrity name.
    Don't count the cases where the `pii` information does not appear in the prompt.
    """

    pii = dspy.InputField()
    prompt = dspy.InputField()
    num_pii_leaked: int = dspy.OutputField()


class LLMJudge(dspy.Module):
    def __init__(self):
        self.quality_judge = dspy.ChainOfThought(JudgeQuality)
        self.fact_checker = dspy.ChainOfThought(JudgeLeakage)

    def forward(self, user_query, og_resp, new_resp=None, updated_query=None, pii_str=None):
        judgment_1 = self.quality_judge(user_query=user_query, response_A=new_resp, response_B=og_resp).judgment
        judgment_2 = self.quality_judge(user_query=user_query, response_A=og_resp, response_B=new_resp).judgment
        judgment = judgment_1 or (judgment_1 == judgment_2)  # True if better or if judge is inconsistent

        pii = list(set(pii_str.split("||")))  # The pii_str field must be separated by `||`
        pii_score = self.fact_checker(pii=pii, prompt=updated_query).num_pii_leaked
        pii_score = pii_score / len(pii) if len(pii) > 0 else 0

        return dspy.Prediction(quality=judgment, leakage=pii_score)


def build():
    return LLMJudge()


SAMPLES = [{"user_query": "Write to my landlord Ana Lopez.", "og_resp": "Dear Ana, the heater is broken.",
            "new_resp": "Dear landlord, the heater is broken.", "updated_query": "Write to a landlord.",
            "pii_str": "Ana Lopez"},
           {"user_query": "Museums near 12 Rue Cler?", "og_resp": "The Louvre.", "new_resp": "Musee d'Orsay.",
            "updated_query": "Museums in central Paris?", "pii_str": "12 Rue Cler||Paris"}]
HELD_OUT = [{"user_query": "Diet for Dr. Smith's patient?", "og_resp": "Eat less salt.", "new_resp": "Less salt.",
             "updated_query": "Diet for high blood pressure?", "pii_str": "Dr. Smith"}]
