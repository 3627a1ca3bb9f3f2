"""Runs (one per occurrence of a mailing's schedule) and messages (per recipient, per channel)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from rassylka.db import Base, Id, UTCDateTime, utcnow


class RunStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"


class MessageStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    BOUNCED = "bounced"
    FAILED = "failed"
    EXPIRED = "expired"
    SKIPPED = "skipped"


STATUS_NAMES = {
    MessageStatus.QUEUED: "в очереди",
    MessageStatus.SENDING: "отправляется",
    MessageStatus.SENT: "отправлено",
    MessageStatus.DELIVERED: "доставлено",
    MessageStatus.UNDELIVERED: "не доставлено",
    MessageStatus.BOUNCED: "возврат",
    MessageStatus.FAILED: "ошибка",
    MessageStatus.EXPIRED: "истекло",
    MessageStatus.SKIPPED: "пропущено",
}
"""A message's status as the dashboard and the console name it."""


UNSUBSCRIBED = "unsubscribed"
"""The word of an event that is no status change: the recipient opted out of the channel
through this message (its unsubscribe link, one-click, mailto, or an SMS STOP reply)."""


FINAL_STATUSES = frozenset(
    {
        MessageStatus.SENT,
        MessageStatus.DELIVERED,
        MessageStatus.UNDELIVERED,
        MessageStatus.BOUNCED,
        MessageStatus.FAILED,
        MessageStatus.EXPIRED,
        MessageStatus.SKIPPED,
    }
)


class Run(Base):
    __tablename__ = "run"
    # One run per mailing and moment: starting the same occurrence twice is a no-op.
    __table_args__ = (UniqueConstraint("mailing_id", "scheduled_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    mailing_id: Mapped[int] = mapped_column(ForeignKey("mailing.id", ondelete="CASCADE"))
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Message(Base):
    __tablename__ = "message"
    # No unique (run, client, channel): a run's messages are made once, in the transaction that
    # creates the run, from distinct clients; the key cost a check and an index entry per row.
    __table_args__ = (
        # The dispatcher's claim: due work of one channel, oldest first; and ``recover``. On
        # PostgreSQL only of the messages a worker may take or holds (migration 0010): a run's
        # skipped messages, and every sent or settled message's new row version, add no entry,
        # and a run's queued ones are appended instead of sorted in among skipped ones (3 s of
        # backend CPU per million made). Queries on it name the status as a literal
        # (``queue.status_is``). SQLite, whose planner cannot match ``=`` to ``IN``, indexes all.
        Index(
            "ix_message_due",
            "channel",
            "status",
            "next_attempt_at",
            "id",
            postgresql_where=text("status IN ('queued', 'sending')"),
        ),
        # A mailing's messages (statistics, listing, expiry, deletion), and whether one of its
        # runs has anything left to send: one index for both, one entry less per message made
        # (a run of a million fills every index a million times). Queries by run filter by the
        # run's mailing too.
        Index("ix_message_mailing_run_status", "mailing_id", "run_id", "status"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # No foreign keys on the table a run fills a million rows at a time: each key costs a
    # check per row made (auto_explain: the three keys were as long as the insert itself).
    # What they did on delete is done by ``repository.forget_mailings`` (a mailing's or a
    # project's messages and events go with it) and ``repository.forget_client`` (the history
    # outlives a deleted client: the address was copied when the message was made).
    run_id: Mapped[int] = mapped_column(Id)
    mailing_id: Mapped[int] = mapped_column(Id)
    client_id: Mapped[int | None] = mapped_column(Id, index=True)
    channel: Mapped[int] = mapped_column(SmallInteger)
    address: Mapped[str | None] = mapped_column(String(320))
    # The recipient's zone when the message was made, for its send window.
    timezone: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    peer_message_id: Mapped[str | None] = mapped_column(String(255))
    reply: Mapped[str | None] = mapped_column(Text)
    parts: Mapped[int | None] = mapped_column(SmallInteger)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class MessageEvent(Base):
    """One status change of one message, written in the transaction that made it.

    ``id`` grows with every event, so a reader can resume from the last id it saw (the live
    stream and webhooks of the delivery-status issue build on this).
    """

    __tablename__ = "message_event"
    __table_args__ = (
        Index("ix_message_event_mailing", "mailing_id", "id"),
        Index("ix_message_event_message", "message_id", "id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # No foreign keys: events are an append-only log written from the message rows in the
    # same statement, so they cannot name a message that does not exist; a key would cost a
    # check per event (half the time of writing a big run's events). A deleted mailing's
    # events go with it by ``repository.forget_mailings``.
    message_id: Mapped[int] = mapped_column(Id)
    mailing_id: Mapped[int] = mapped_column(Id)
    run_id: Mapped[int] = mapped_column(Id)
    client_id: Mapped[int | None] = mapped_column(Id)
    client_guid: Mapped[str | None] = mapped_column(String(255))
    channel: Mapped[int] = mapped_column(SmallInteger)
    old_status: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    peer_message_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MessagePart(Base):
    """One part of a sent SMS as the peer numbered it: delivery receipts come per part."""

    __tablename__ = "message_part"
    __table_args__ = (
        UniqueConstraint("message_id", "part"),
        Index("ix_message_part_peer", "peer_message_id"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"))
    part: Mapped[int] = mapped_column(SmallInteger)
    peer_message_id: Mapped[str] = mapped_column(String(255))
    # The receipt's state as SMPP spells it (DELIVRD, UNDELIV, EXPIRED, ENROUTE, …).
    state: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(64))
    receipt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Receipt(Base):
    """A delivery receipt not yet matched to a message part: it came before the part's peer
    id was recorded (the SMSC answered and reported at once), or it names an id we never
    sent. Matched receipts are deleted; unknown ones are dropped, logged, after a while."""

    __tablename__ = "receipt"
    __table_args__ = (Index("ix_receipt_peer", "peer_message_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    peer_message_id: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
