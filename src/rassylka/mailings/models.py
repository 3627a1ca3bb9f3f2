"""The mailing: a template sent over chosen channels to a project's clients at a moment."""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum
from zoneinfo import ZoneInfo

from sqlalchemy import JSON, ForeignKey, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from rassylka.db import Base, Id, UTCDateTime, utcnow


class MailingStatus(IntEnum):
    DRAFT = 0
    ACTIVE = 1
    PAUSED = 2
    COMPLETED = 3
    CANCELLED = 4


class Channel(IntEnum):
    EMAIL = 1
    SMS = 2


class Mailing(Base):
    __tablename__ = "mailing"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    # RESTRICT: a template in use must not vanish from under its mailings.
    template_id: Mapped[int] = mapped_column(
        ForeignKey("template.id", ondelete="RESTRICT"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[int] = mapped_column(SmallInteger, default=MailingStatus.DRAFT)
    # Why the service changed the status itself (e.g. paused on too many errors).
    status_reason: Mapped[str | None] = mapped_column(Text)
    channels: Mapped[list[int]] = mapped_column(JSON)
    event_at: Mapped[datetime] = mapped_column(UTCDateTime)
    timezone: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def event(self) -> str:
        """The moment of sending, as ISO 8601 in the mailing's own time zone."""
        return self.event_at.astimezone(ZoneInfo(self.timezone)).isoformat()
