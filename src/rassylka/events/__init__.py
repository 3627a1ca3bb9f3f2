"""Message events read back: the payload every reader sends (live stream, webhooks) and the
query that resumes after the last event id a reader saw."""
