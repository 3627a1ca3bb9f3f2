"""Request and response bodies of the project endpoints (manual §3.1.1, §3.1.7)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from rassylka.channels.base import ChannelError
from rassylka.channels.email_message import parse_sender
from rassylka.channels.smpp import source_address
from rassylka.schemas import Name, ReadModel, RequestModel, UpdateModel

Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DkimDomain = Annotated[
    str, StringConstraints(max_length=253, pattern=rf"^{_LABEL}(?:\.{_LABEL})+$")
]
DkimSelector = Annotated[
    str, StringConstraints(max_length=63, pattern=rf"^{_LABEL}(?:\.{_LABEL})*$")
]
KeyPath = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
MAX_FREQUENCY_CAP = 1000


def _sms_sender(value: str) -> str:
    try:
        source_address(value)
    except ValueError:
        raise ValueError(
            "Отправитель SMS: +цифры (номер), цифры (короткий номер) или до 11 латинских"
            " букв и цифр (буквенное имя)"
        ) from None
    return value


def _mailbox(value: str) -> str:
    try:
        parse_sender(value)
    except (ValueError, ChannelError):
        raise ValueError(
            f"Некорректный адрес «{value}»: ожидается «Имя <адрес>» или адрес"
        ) from None
    return value


SmsSender = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=21),
    AfterValidator(_sms_sender),
]
EmailFrom = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=512),
    AfterValidator(_mailbox),
]
ReplyTo = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=320),
    AfterValidator(_mailbox),
]
Cap = Annotated[int, Field(ge=1, le=MAX_FREQUENCY_CAP)]


class FrequencyCap(RequestModel):
    """At most this many messages to one client per channel in any 24 hours; null: no cap."""

    email: Cap | None = Field(default=None, description="Писем клиенту за 24 часа, не больше")
    sms: Cap | None = Field(default=None, description="SMS клиенту за 24 часа, не больше")


class FrequencyCapRead(ReadModel):
    email: int | None = None
    sms: int | None = None


DKIM_FIELDS = ("dkim_domain", "dkim_selector", "dkim_key_path")
_DKIM_TOGETHER = "Укажите dkim_domain, dkim_selector и dkim_key_path вместе"


class _Dkim(RequestModel):
    """DKIM signing of the project's email (docs/deliverability.md): the three fields together,
    or none of them."""

    dkim_domain: DkimDomain | None = Field(
        default=None, description="Домен подписи DKIM (d=)", examples=["shop.example.ru"]
    )
    dkim_selector: DkimSelector | None = Field(
        default=None, description="Селектор DKIM (s=)", examples=["rassylka"]
    )
    dkim_key_path: KeyPath | None = Field(
        default=None,
        description="Путь к закрытому ключу RSA (PEM) на сервере отправки",
        examples=["/etc/rassylka/dkim/shop.pem"],
    )

    @model_validator(mode="after")
    def _dkim_together(self) -> _Dkim:
        given = {name for name in DKIM_FIELDS if getattr(self, name) is not None}
        if given and len(given) != len(DKIM_FIELDS):
            raise ValueError(_DKIM_TOGETHER)
        return self


class _Senders(RequestModel):
    """Who the project's messages come from (docs/deliverability.md); each null: the
    service's own (RASSYLKA_EMAIL_FROM, RASSYLKA_EMAIL_REPLY_TO, the SMS source)."""

    sms_sender: SmsSender | None = Field(
        default=None,
        description="Отправитель SMS: +номер, короткий номер или буквенное имя до 11 символов",
        examples=["SHOP"],
    )
    email_from: EmailFrom | None = Field(
        default=None,
        description="Отправитель писем (From); домен — тот же, что домен DKIM",
        examples=["Магазин <news@shop.example.ru>"],
    )
    email_reply_to: ReplyTo | None = Field(
        default=None, description="Адрес для ответов (Reply-To)", examples=["help@shop.example.ru"]
    )
    frequency_cap: FrequencyCap | None = Field(
        default=None,
        description="Не больше стольких сообщений одному клиенту по каналу за 24 часа",
        examples=[{"email": 3, "sms": 1}],
    )


SENDER_FIELDS = ("sms_sender", "email_from", "email_reply_to", "frequency_cap")


class ProjectCreate(_Dkim, _Senders):
    name: Name = Field(description="The project name", examples=["OCM"])
    code: Code = Field(description="The project code", examples=["010"])


class ProjectUpdate(UpdateModel, _Dkim, _Senders):
    name: Name | None = Field(default=None, description="Наименование проекта", examples=["ОСМ"])
    code: Code | None = Field(default=None, description="Код проекта (уникальный)")

    @model_validator(mode="after")
    def _something_to_change(self) -> ProjectUpdate:
        named = {name for name in DKIM_FIELDS if name in self.model_fields_set}
        if named and len(named) != len(DKIM_FIELDS):
            # null in all three turns signing off; one of them alone means nothing
            raise ValueError(_DKIM_TOGETHER)
        senders = any(name in self.model_fields_set for name in SENDER_FIELDS)
        if self.name is None and self.code is None and not named and not senders:
            raise ValueError("Укажите name (или code), чтобы было что обновить")
        return self


class ProjectRead(ReadModel):
    id: int
    name: str
    code: str
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_key_path: str | None = None
    sms_sender: str | None = None
    email_from: str | None = None
    email_reply_to: str | None = None
    frequency_cap: FrequencyCapRead
    created_at: datetime
    updated_at: datetime
