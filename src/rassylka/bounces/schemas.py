"""The body and answer of ``POST /webhook/bounce``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from rassylka.schemas import EntityId, RequestModel

STATUS_PATTERN = r"^[245]\.\d{1,3}\.\d{1,3}$"
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=320)]


class BounceReport(RequestModel):
    """Which message (exactly one of: ``message_id``; ``token``; ``project`` with ``email``)
    and what happened to it."""

    message_id: EntityId | None = Field(default=None, description="Id сообщения Rassylka")
    token: Text | None = Field(
        default=None,
        description="VERP-токен (ENVID) или весь адрес bounce+…@домен из обратного адреса",
        examples=["1234-9f86d081e8"],
    )
    project: str | EntityId | None = Field(
        default=None, description="Код или id проекта (вместе с email)"
    )
    email: Text | None = Field(
        default=None, description="Адрес получателя: берётся последнее письмо ему в проекте"
    )
    type: Literal["hard", "soft", "complaint"] = Field(
        description="hard — адрес не принимает почту (статус bounced, адрес в список "
        "подавления); soft — временная ошибка (заметка, статус остаётся sent); complaint — "
        "получатель пожаловался на спам (отписка от писем проекта, адрес в список подавления, "
        "статус не меняется)"
    )
    status: (
        Annotated[str, StringConstraints(strip_whitespace=True, pattern=STATUS_PATTERN)] | None
    ) = Field(default=None, description="Расширенный код SMTP (RFC 3463)", examples=["5.1.1"])
    diagnostic: Annotated[str, StringConstraints(strip_whitespace=True, max_length=900)] | None = (
        Field(default=None, description="Ответ сервера получателя", examples=["550 User unknown"])
    )

    @model_validator(mode="after")
    def _one_reference(self) -> BounceReport:
        by_address = self.project is not None or self.email is not None
        given = [self.message_id is not None, self.token is not None, by_address]
        if sum(given) != 1:
            raise ValueError(
                "Укажите сообщение одним способом: message_id, token или project с email"
            )
        if by_address and (self.project is None or self.email is None):
            raise ValueError("project и email указываются вместе")
        if self.type == "complaint" and self.status is not None:
            raise ValueError("У жалобы нет статуса SMTP: укажите status только для hard и soft")
        if self.status is not None and self.status[0] != ("5" if self.type == "hard" else "4"):
            raise ValueError(f"Статус {self.status} не соответствует типу {self.type}")
        return self


class BounceRead(BaseModel):
    message_id: int
    status: str = Field(description="Статус сообщения после возврата")
    changed: bool = Field(description="false, если сообщение уже не было в статусе sent")
    suppressed: str | None = Field(description="Адрес, добавленный в список подавления")
