# Source: stanfordnlp/dspy docs/docs/tutorials/email_extraction/index.md (EmailProcessor: four ChainOfThought
# stages over enums and a pydantic entity model). Adapted: enums/model as in the tutorial, trimmed fields.
from enum import Enum
from typing import Optional

import dspy
from pydantic import BaseModel


class EmailType(str, Enum):
    ORDER_CONFIRMATION = "order_confirmation"
    SUPPORT_REQUEST = "support_request"
    MEETING_INVITATION = "meeting_invitation"
    OTHER = "other"


class UrgencyLevel(str, Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class ExtractedEntity(BaseModel):
    entity_type: str
    value: str
    confidence: float


class ClassifyEmail(dspy.Signature):
    """Classify the type and urgency of an email based on its content."""

    email_subject: str = dspy.InputField(desc="The subject line of the email")
    email_body: str = dspy.InputField(desc="The main content of the email")
    sender: str = dspy.InputField(desc="Email sender information")

    email_type: EmailType = dspy.OutputField(desc="The classified type of email")
    urgency: UrgencyLevel = dspy.OutputField(desc="The urgency level of the email")
    reasoning: str = dspy.OutputField(desc="Brief explanation of the classification")


class ExtractEntities(dspy.Signature):
    """Extract key entities and information from email content."""

    email_content: str = dspy.InputField(desc="The full email content including subject and body")
    email_type: EmailType = dspy.InputField(desc="The classified type of email")

    key_entities: list[ExtractedEntity] = dspy.OutputField(desc="List of extracted entities with type, value, and confidence")
    financial_amount: Optional[float] = dspy.OutputField(desc="Any monetary amounts found (e.g., '$99.99')")


class SummarizeEmail(dspy.Signature):
    """Create a concise summary of the email content."""

    email_subject: str = dspy.InputField()
    email_body: str = dspy.InputField()
    key_entities: list[ExtractedEntity] = dspy.InputField()

    summary: str = dspy.OutputField(desc="A 2-3 sentence summary of the email's main points")


class EmailProcessor(dspy.Module):
    """A comprehensive email processing system using DSPy."""

    def __init__(self):
        super().__init__()
        self.classifier = dspy.ChainOfThought(ClassifyEmail)
        self.entity_extractor = dspy.ChainOfThought(ExtractEntities)
        self.summarizer = dspy.ChainOfThought(SummarizeEmail)

    def forward(self, email_subject: str, email_body: str, sender: str = ""):
        classification = self.classifier(email_subject=email_subject, email_body=email_body, sender=sender)
        full_content = f"Subject: {email_subject}\n\nFrom: {sender}\n\n{email_body}"
        entities = self.entity_extractor(email_content=full_content, email_type=classification.email_type)
        summary = self.summarizer(email_subject=email_subject, email_body=email_body,
                                  key_entities=entities.key_entities)
        return dspy.Prediction(email_type=classification.email_type, urgency=classification.urgency,
                               summary=summary.summary, financial_amount=entities.financial_amount)


def build():
    return EmailProcessor()


SAMPLES = [{"email_subject": "Order #123 confirmed", "email_body": "Your order of $99.99 ships tomorrow.",
            "sender": "shop@example.com"},
           {"email_subject": "Help needed", "email_body": "My login fails since Monday.", "sender": "ann@example.com"}]
HELD_OUT = [{"email_subject": "Meeting on Friday", "email_body": "Can we meet at 10am?", "sender": "bob@example.com"}]
