"""The client: one CRM contact of a project, addressed by the CRM's own guid."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from rassylka.db import Base, Id, UTCDateTime, utcnow


class Consent(StrEnum):
    GRANTED = "granted"
    DENIED = "denied"
    UNKNOWN = "unknown"


class Client(Base):
    __tablename__ = "client"
    __table_args__ = (UniqueConstraint("project_id", "guid"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    guid: Mapped[str] = mapped_column(String(255))
    first_name: Mapped[str] = mapped_column(String(255))
    last_name: Mapped[str] = mapped_column(String(255))
    middle_name: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(32))
    timezone: Mapped[str | None] = mapped_column(String(64))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """The client asked for no mailings: every message to them is skipped with the reason."""
    email_opted_out: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """The client unsubscribed from this project's email (a link, one-click, a mailto)."""
    sms_opted_out: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """The client opted out of this project's SMS (a STOP reply)."""
    # Consent to advertising (38-ФЗ art. 18) per channel: granted, denied or unknown; when and
    # where it was given or withdrawn. Advertising mailings go only where it is granted.
    email_consent: Mapped[str] = mapped_column(
        String(8), default=Consent.UNKNOWN, server_default=Consent.UNKNOWN.value
    )
    email_consent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    email_consent_source: Mapped[str | None] = mapped_column(String(255))
    sms_consent: Mapped[str] = mapped_column(
        String(8), default=Consent.UNKNOWN, server_default=Consent.UNKNOWN.value
    )
    sms_consent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sms_consent_source: Mapped[str | None] = mapped_column(String(255))
    phone_timezone: Mapped[str | None] = mapped_column(String(64))
    """The zone the phone number names, when it names exactly one (for send windows)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
