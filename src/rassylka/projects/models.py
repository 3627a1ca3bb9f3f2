"""The project: the top of every CRM's data (clients, templates and mailings belong to one)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from rassylka.channels.dkim import DkimKey
from rassylka.db import Base, Id, UTCDateTime, utcnow


class Project(Base):
    __tablename__ = "project"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # DKIM signing (docs/deliverability.md): all three set, or none.
    dkim_domain: Mapped[str | None] = mapped_column(String(253), default=None)
    dkim_selector: Mapped[str | None] = mapped_column(String(63), default=None)
    dkim_key_path: Mapped[str | None] = mapped_column(String(1024), default=None)
    # Senders of the project's messages; None: the service's own (RASSYLKA_EMAIL_FROM, …).
    sms_sender: Mapped[str | None] = mapped_column(String(21), default=None)
    """``+`` and digits, digits (a short code) or up to 11 letters (alphanumeric)."""
    email_from: Mapped[str | None] = mapped_column(String(512), default=None)
    """``Name <address>`` or an address; its domain should be the DKIM domain (DMARC)."""
    email_reply_to: Mapped[str | None] = mapped_column(String(320), default=None)
    # Frequency caps: at most this many messages per client per channel in 24 hours.
    email_frequency_cap: Mapped[int | None] = mapped_column(Integer, default=None)
    sms_frequency_cap: Mapped[int | None] = mapped_column(Integer, default=None)

    @property
    def frequency_cap(self) -> dict[str, int | None]:
        return {"email": self.email_frequency_cap, "sms": self.sms_frequency_cap}


def dkim_key_of(project: Project) -> DkimKey | None:
    """The key the project's email is signed with, or None when it sends unsigned."""
    if project.dkim_domain and project.dkim_selector and project.dkim_key_path:
        return DkimKey(project.dkim_domain, project.dkim_selector, project.dkim_key_path)
    return None
