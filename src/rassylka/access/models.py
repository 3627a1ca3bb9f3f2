"""An API key. Only a hash of the secret is kept: the secret is shown once, at creation."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from rassylka.db import Base, Id, UTCDateTime, utcnow


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    """The one project the key sees and changes; None: a global key (every project)."""
    name: Mapped[str | None] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(String(32))
    """The secret's first characters, kept to tell keys apart in lists and logs."""
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """SHA-256 of the secret (hex). The secret is random (256 bits), so a fast hash is enough."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
