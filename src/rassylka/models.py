"""Every table's model in one import, so the metadata knows them all (migrations, tests)."""

from rassylka.access.models import ApiKey
from rassylka.clients.models import Client
from rassylka.idempotency.models import IdempotencyRecord
from rassylka.mailings.models import Mailing
from rassylka.messages.models import Message, MessageEvent, MessagePart, Receipt, Run
from rassylka.projects.models import Project
from rassylka.suppressions.models import Suppression
from rassylka.templates.models import Template
from rassylka.unsubscribe.models import InstallationKey
from rassylka.webhooks.models import Webhook, WebhookDelivery

__all__ = [
    "ApiKey",
    "Client",
    "IdempotencyRecord",
    "InstallationKey",
    "Mailing",
    "Message",
    "MessageEvent",
    "MessagePart",
    "Project",
    "Receipt",
    "Run",
    "Suppression",
    "Template",
    "Webhook",
    "WebhookDelivery",
]
