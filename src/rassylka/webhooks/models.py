"""A webhook (a CRM's URL that hears a project's message events) and its deliveries (the
outbox: one row per event to send, with its attempts)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from rassylka.db import Base, Id, UTCDateTime, utcnow

URL_LENGTH = 2048


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Webhook(Base):
    __tablename__ = "webhook"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(URL_LENGTH))
    events: Mapped[list[str] | None] = mapped_column(JSON)
    """Message statuses whose events it hears; None: every event."""
    # Kept as given: the sender signs with it, so it cannot be a one-way hash.
    secret: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    last_event_id: Mapped[int] = mapped_column(BigInteger, default=0)
    """The cursor: every event up to this id has its delivery row (or did not match)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    """One event to one webhook. ``body`` is the exact JSON sent (byte for byte on every
    attempt); the event row itself may go with its mailing, the delivery stays."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        # The outbox insert is idempotent: one delivery per event per webhook.
        UniqueConstraint("webhook_id", "event_id"),
        # The sender's claim: due pending deliveries, oldest first.
        Index("ix_webhook_delivery_due", "status", "next_attempt_at", "id"),
        # Order per message: is an earlier event of this message still pending?
        Index("ix_webhook_delivery_message", "webhook_id", "message_id", "event_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhook.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    body: Mapped[str] = mapped_column(Text)
    last_http_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
