"""Email bounces: signed VERP envelope senders, the inbound SMTP listener that takes DSNs
back, their parsing, and ``POST /webhook/bounce`` for providers."""
