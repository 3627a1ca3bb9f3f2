"""A create request made with an ``Idempotency-Key`` header, and the answer it got."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from rassylka.db import Base, Id, UTCDateTime, utcnow


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_key"
    __table_args__ = (
        # One answer per key per caller (an API key's id, or "" when keys are off).
        UniqueConstraint("scope", "key"),
        Index("ix_idempotency_key_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    scope: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(2048))
    request_hash: Mapped[str] = mapped_column(String(64))
    """SHA-256 (hex) of the method, path, query and body: the same key with another is 409."""
    status_code: Mapped[int | None] = mapped_column(Integer)
    """None while the first request is still being answered."""
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
