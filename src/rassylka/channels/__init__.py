"""Transports that carry one message envelope to a peer; no database, no HTTP here."""
