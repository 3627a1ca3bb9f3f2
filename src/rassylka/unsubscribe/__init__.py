"""Unsubscribing: signed per-message links and addresses, and the page and one-click POST."""
