"""A suppressed address: nothing is sent to it in its project, whichever client carries it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from rassylka.db import Base, Id, UTCDateTime, utcnow


class Suppression(Base):
    __tablename__ = "suppression"
    __table_args__ = (UniqueConstraint("project_id", "address"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    address: Mapped[str] = mapped_column(String(320))
    """An email (lower-cased domain, as clients store it) or a phone in E.164."""
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
