"""The mailing: a template sent over chosen channels to a project's clients at a moment."""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import JSON, ForeignKey, Index, Integer, SmallInteger, String, Text
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


class MailingKind(StrEnum):
    """``advertising`` goes only to clients whose consent for the channel is granted (38-ФЗ
    art. 18); ``service`` (transactional) to every client not opted out."""

    ADVERTISING = "advertising"
    SERVICE = "service"


class Mailing(Base):
    __tablename__ = "mailing"
    # The scheduler's question: which active mailings have an occurrence due.
    __table_args__ = (Index("ix_mailing_due", "status", "next_run_at"),)

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
    kind: Mapped[str] = mapped_column(
        String(16), default=MailingKind.SERVICE, server_default=MailingKind.SERVICE.value
    )
    event_at: Mapped[datetime] = mapped_column(UTCDateTime)
    timezone: Mapped[str] = mapped_column(String(64))
    # The schedule: one-off at event_at, or recurring from event_at by a cron expression or an
    # RRULE (in ``timezone``'s wall time), up to until_at / max_runs occurrences.
    cron: Mapped[str | None] = mapped_column(String(255))
    rrule: Mapped[str | None] = mapped_column(Text)
    until_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    max_runs: Mapped[int | None] = mapped_column(Integer)
    catch_up: Mapped[str] = mapped_column(String(8), default="once", server_default="once")
    """After downtime: ``once`` starts the newest missed occurrence, ``skip`` none."""
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """Nothing is sent after it; what is still queued then expires."""
    send_window: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """``{"start": "09:00", "end": "21:00", "days": [1, …]}`` in each recipient's own time."""
    audience: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """``{"tags_any": […], "tags_all": […], "attributes": {…}}``; None: every client."""
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    runs_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def schedule(self) -> dict[str, Any] | None:
        """The recurring schedule as the API shows it; None for a one-off mailing."""
        if not (self.cron or self.rrule):
            return None
        until = (
            self.until_at.astimezone(ZoneInfo(self.timezone)).isoformat() if self.until_at else None
        )
        return {
            "cron": self.cron,
            "rrule": self.rrule,
            "until": until,
            "max_runs": self.max_runs,
            "catch_up": self.catch_up,
        }

    @property
    def event(self) -> str:
        """The moment of sending, as ISO 8601 in the mailing's own time zone."""
        return self.event_at.astimezone(ZoneInfo(self.timezone)).isoformat()
