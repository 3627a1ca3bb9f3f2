"""Suppressed addresses: a project's do-not-send list (bounces, complaints, requests)."""
