"""Keys an installation makes once and keeps, so every process and restart signs alike."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from rassylka.db import Base, UTCDateTime, utcnow


class InstallationKey(Base):
    __tablename__ = "installation_key"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    """What the key is for (``unsubscribe``)."""
    value: Mapped[str] = mapped_column(String(128))
    """Random, hex; never shown by the API."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
