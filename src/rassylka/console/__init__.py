"""The friendly half of the ``rassylka`` command: what a person at a terminal runs against a
running service (client import, mailing list and watch), plus send-test and demo.

Kept apart from ``rassylka.cli`` (the server's own commands) because these talk to the API over
HTTP as any client would, and import nothing of the server but what they reuse on purpose.
"""
