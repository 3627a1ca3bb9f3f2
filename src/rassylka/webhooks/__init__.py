"""Outgoing webhooks: message events POSTed to the CRM, signed, retried, in order per message."""
