"""Rassylka: a self-hosted email and SMS mailing service driven over a JSON HTTP API."""

__version__ = "0.1.0"
