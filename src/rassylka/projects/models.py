"""The project: the top of every CRM's data (clients, templates and mailings belong to one)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
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


def dkim_key_of(project: Project) -> DkimKey | None:
    """The key the project's email is signed with, or None when it sends unsigned."""
    if project.dkim_domain and project.dkim_selector and project.dkim_key_path:
        return DkimKey(project.dkim_domain, project.dkim_selector, project.dkim_key_path)
    return None
