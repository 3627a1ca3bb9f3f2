"""The one shape of a message event outside the database: the live stream's ``data`` and the
body of a webhook delivery."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class StatusEvent(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="Номер события; растёт с каждым событием, по нему возобновляют")
    message_id: int
    mailing_id: int
    run_id: int
    project_id: int
    client_id: int | None
    client_guid: str | None
    channel: str = Field(description="email или sms")
    old_status: str | None
    status: str
    reason: str | None
    peer_message_id: str | None
    created_at: datetime
