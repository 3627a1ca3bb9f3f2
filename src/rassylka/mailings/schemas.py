"""Request and response bodies of the mailing endpoints (manual §3.1.17)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from rassylka.mailings.audience import Audience
from rassylka.mailings.models import Channel, MailingKind, MailingStatus
from rassylka.schemas import EntityId, Name, ReadModel, RequestModel, TimeZoneName, UpdateModel

_CHANNEL_NAMES = {"email": Channel.EMAIL, "sms": Channel.SMS}
MAX_RRULE = 2000
MAX_CHANNEL_ITEMS = 10


def _parse_channels(value: Any) -> list[int]:
    """Channel ids or names, as a list or (the manual's example ``"1"``) a single value."""
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_CHANNEL_ITEMS:
        raise ValueError(f"Не больше {MAX_CHANNEL_ITEMS} каналов")
    channels: list[int] = []
    for item in items:
        channel: Channel | None = None
        if (
            isinstance(item, int)
            and not isinstance(item, bool)
            and item in Channel._value2member_map_
        ):
            channel = Channel(item)
        elif isinstance(item, str):
            text = item.strip().lower()
            channel = _CHANNEL_NAMES.get(text)
            if channel is None and text.isdigit() and int(text) in Channel._value2member_map_:
                channel = Channel(int(text))
        if channel is None:
            raise ValueError(f'Неизвестный канал {item!r}: допустимы 1 или "email", 2 или "sms"')
        if channel not in channels:
            channels.append(channel)
    if not channels:
        raise ValueError("Укажите хотя бы один канал: 1 (email) или 2 (sms)")
    return channels


def _parse_channel(value: Any) -> int:
    [channel] = _parse_channels(value)
    return channel


# One channel in a query string, by id or name: ``?channel=2`` or ``?channel=sms``.
ChannelParam = Annotated[int, BeforeValidator(_parse_channel)]


def parse_event(value: str) -> date | datetime:
    """A date (``2020-08-02``) or an ISO 8601 date-time, with or without an offset."""
    text = value.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"Ожидается дата ГГГГ-ММ-ДД или дата-время ISO 8601, получено «{value}»"
        ) from None


def _check_event(value: str) -> str:
    parse_event(value)
    return value


def _check_status(value: int) -> int:
    if value not in MailingStatus._value2member_map_:
        raise ValueError(
            "Допустимые статусы: 0 — черновик, 1 — активна, 2 — приостановлена,"
            " 3 — завершена, 4 — отменена"
        )
    return value


Channels = Annotated[
    list[int],
    BeforeValidator(_parse_channels),
    WithJsonSchema(
        {
            "type": "array",
            "description": 'Каналы: 1 или "email", 2 или "sms"; одно значение тоже принимается',
            "items": {"anyOf": [{"type": "integer", "enum": [1, 2]}, {"type": "string"}]},
            "examples": [[1], ["email", "sms"]],
        }
    ),
]
Event = Annotated[
    str,
    StringConstraints(max_length=64),
    AfterValidator(_check_event),
    WithJsonSchema(
        {
            "type": "string",
            "description": "Дата (в часовом поясе рассылки) или дата-время ISO 8601",
            "examples": ["2020-08-02", "2020-08-02T10:00:00+03:00"],
        }
    ),
]
Status = Annotated[int, AfterValidator(_check_status)]


def _check_kind(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in MailingKind._value2member_map_:
        return value.strip().lower()
    raise ValueError(
        "Допустимые виды: advertising — реклама (только с согласием),"
        " service — сервисная (всем, кто не отписался)"
    )


Kind = Annotated[
    Literal["advertising", "service"],
    BeforeValidator(_check_kind),
    WithJsonSchema(
        {
            "type": "string",
            "enum": ["advertising", "service"],
            "description": "advertising — реклама (38-ФЗ ст. 18: только клиентам с согласием);"
            " service — сервисная (всем, кто не отписался от канала)",
        }
    ),
]


class ScheduleIn(RequestModel):
    """A recurring schedule: exactly one of ``cron`` and ``rrule``, in the mailing's zone."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"cron": "0 10 * * 1-5", "max_runs": 20, "catch_up": "once"},
                {"rrule": "FREQ=WEEKLY;BYDAY=MO;BYHOUR=10;BYMINUTE=0", "until": "2027-06-01"},
            ]
        }
    )

    cron: Annotated[str, StringConstraints(max_length=255)] | None = Field(
        default=None, description="Cron-выражение из 5 полей"
    )
    rrule: Annotated[str, StringConstraints(max_length=MAX_RRULE)] | None = Field(
        default=None, description="Правило RRULE (RFC 5545)"
    )
    until: Event | None = Field(default=None, description="Не запускать после этого момента")
    max_runs: int | None = Field(default=None, ge=1, le=1_000_000, description="Не больше запусков")
    catch_up: Literal["once", "skip"] = Field(
        default="once",
        description="После простоя: once — один пропущенный запуск сразу, skip — ни одного",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> ScheduleIn:
        if (self.cron is None) == (self.rrule is None):
            raise ValueError("Укажите ровно одно из cron и rrule")
        return self


class WindowIn(RequestModel):
    """Hours when a recipient may get messages, in the recipient's own time zone."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"start": "09:00", "end": "21:00", "days": [1, 2, 3, 4, 5]}]
        }
    )

    start: Annotated[str, StringConstraints(max_length=8)] = Field(
        description="Начало окна, ЧЧ:ММ (время получателя)"
    )
    end: Annotated[str, StringConstraints(max_length=8)] = Field(
        description="Конец окна, ЧЧ:ММ; меньше начала — окно через полночь"
    )
    days: list[int] | None = Field(
        default=None,
        max_length=7,
        description="Дни недели, когда окно открывается: 1 — пн … 7 — вс",
    )


class MailingCreate(RequestModel):
    name: Name = Field(description="Наименование рассылки", examples=["SMSMailing"])
    project_id: EntityId = Field(description="Идентификатор проекта", examples=[236])
    template_id: EntityId = Field(description="Идентификатор шаблона", examples=[156])
    status: Status = Field(
        description="Статус рассылки: 0 черновик, 1 активна, 2 пауза, 3 завершена, 4 отменена",
        examples=[1],
    )
    channels: Channels
    kind: Kind = Field(
        default="service",
        description="Вид: advertising — реклама, только клиентам с согласием на канал;"
        " service — сервисная (по умолчанию)",
    )
    event: Event | None = Field(
        default=None,
        description="Момент разовой рассылки или начало повторений; по умолчанию — сейчас",
    )
    timezone: TimeZoneName | None = Field(
        default=None, description="Часовой пояс рассылки (IANA); по умолчанию — настройка сервера"
    )
    schedule: ScheduleIn | None = Field(default=None, description="Повторения; нет — разовая")
    ends_at: Event | None = Field(
        default=None, description="Жёсткий конец: позже ничего не отправляется"
    )
    send_window: WindowIn | None = Field(
        default=None, description="Окно отправки во времени каждого получателя"
    )
    audience: Audience | None = Field(default=None, description="Кому: фильтр клиентов")


class MailingUpdate(UpdateModel):
    """Only the fields present change."""

    name: Name | None = None
    template_id: EntityId | None = None
    status: Status | None = None
    channels: Channels | None = None
    kind: Kind | None = None
    event: Event | None = None
    timezone: TimeZoneName | None = None
    schedule: ScheduleIn | None = None
    ends_at: Event | None = None
    send_window: WindowIn | None = None
    audience: Audience | None = None


class MailingRead(ReadModel):
    id: int
    project_id: int
    template_id: int
    name: str
    status: int
    status_reason: str | None = Field(
        default=None, description="Почему сервис сам сменил статус (например, пауза из-за ошибок)"
    )
    channels: list[int]
    kind: str = Field(default="service", description="advertising или service")
    event: str
    timezone: str
    schedule: dict[str, Any] | None = Field(
        default=None, description="cron или rrule, until, max_runs, catch_up; null — разовая"
    )
    ends_at: datetime | None = None
    send_window: dict[str, Any] | None = None
    audience: dict[str, Any] | None = None
    next_run_at: datetime | None = Field(default=None, description="Следующий запуск (UTC)")
    runs_count: int = Field(default=0, description="Сколько запусков уже было")
    created_at: datetime
    updated_at: datetime


class RunRead(BaseModel):
    id: int
    scheduled_at: datetime = Field(description="Момент запуска по расписанию (UTC)")
    status: str = Field(description="running — идёт, finished — завершён")
    started_at: datetime
    finished_at: datetime | None
    total: int = Field(description="Сообщений в запуске")
    counts: dict[str, int] = Field(
        description="Сообщений по статусам", examples=[{"sent": 980, "failed": 3, "skipped": 17}]
    )


class SchedulePreview(BaseModel):
    timezone: str
    runs: list[str] = Field(description="Ближайшие запуски, ISO 8601 в часовом поясе рассылки")


class EventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int | None = Field(
        description=(
            "Номер события; растёт с каждым событием. null у создания в статусе queued: "
            "оно не хранится и не приходит в поток событий и вебхуки, а читается из сообщения"
        )
    )
    old_status: str | None
    status: str
    reason: str | None
    peer_message_id: str | None
    created_at: datetime


class MessageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    run_id: int
    client_id: int | None
    channel: int
    address: str | None
    status: str = Field(
        description="queued, sending, sent, delivered, undelivered, bounced, failed, expired, "
        "skipped"
    )
    reason: str | None
    attempts: int
    next_attempt_at: datetime | None
    peer_message_id: str | None
    reply: str | None = Field(description="Последний ответ сервера-получателя, как есть")
    parts: int | None = Field(description="Частей SMS")
    sent_at: datetime | None
    created_at: datetime
    updated_at: datetime
    history: list[EventRead] = Field(default_factory=list, description="Все смены статуса")


class Counts(BaseModel):
    messages: int = Field(description="Всего сообщений")
    by_status: dict[str, int]
    by_channel: dict[str, dict[str, int]] = Field(description="email / sms → по статусам")
    accepted_rate: float | None = Field(
        description="Доля принятых сервером (sent + delivered) среди завершённых попыток"
    )
    delivery_rate: float | None = Field(
        description="Доля доставленных среди тех, о ком пришёл отчёт; null — отчётов нет"
    )
    sms_parts: int = Field(description="Использовано SMS-сегментов")
    first_sent_at: datetime | None
    last_sent_at: datetime | None


class RunStats(Counts):
    run_id: int
    scheduled_at: datetime


class MailingStats(BaseModel):
    total: Counts
    runs: list[RunStats]
    send_rate: float = Field(description="Отправок в секунду за последнюю минуту")


class RetryResult(BaseModel):
    requeued: int = Field(description="Сколько сообщений снова в очереди")
    runs: list[int] = Field(description="Запуски, которые снова идут")
