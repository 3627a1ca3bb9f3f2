"""Request and response bodies of the client endpoints (manual §3.1.14) and of the import."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import (
    CASE_INSENSITIVE_MAILBOX_NAMES,
    DOT_ATOM_TEXT,
    EMAIL_MAX_LENGTH,
    LOCAL_PART_MAX_LENGTH,
)
from phonenumbers import PhoneMetadata
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from rassylka.clients.models import Consent
from rassylka.config import get_settings
from rassylka.errors import FieldError
from rassylka.scheduling.zones import number_zone
from rassylka.schemas import EntityId, Name, ReadModel, RequestModel, TimeZoneName, UpdateModel

MAX_TAGS = 100
MAX_ATTRIBUTES = 200
MAX_ATTRIBUTE_NAME = 255


def normalize_phone(value: str) -> str:
    """E.164 form of a phone number; numbers without ``+`` are read in the default region."""
    try:
        number = phonenumbers.parse(value, get_settings().default_phone_region)
    except phonenumbers.NumberParseException:
        raise ValueError(f"Некорректный номер телефона «{value}»") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"Некорректный номер телефона «{value}»")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_and_zone(value: str) -> tuple[str, str | None]:
    """``normalize_phone(value)`` and the ``phone_zone`` of that, from one parse and one
    check of the number's type (an import's rows: the two parses were half its CPU)."""
    number = _international(value) if _PLUS_DIGITS.fullmatch(value) else None
    if number is None:
        try:
            number = phonenumbers.parse(value, get_settings().default_phone_region)
        except phonenumbers.NumberParseException:
            raise ValueError(f"Некорректный номер телефона «{value}»") from None
    # is_valid_number(number) is exactly "its type is known": both look the type up in the
    # metadata of the region region_code_for_number() names.
    kind = phonenumbers.number_type(number)
    if kind == phonenumbers.PhoneNumberType.UNKNOWN:
        raise ValueError(f"Некорректный номер телефона «{value}»")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164, number_zone(number, kind, e164)


_PLUS_DIGITS = re.compile(r"\+[1-9][0-9]{3,16}")


def _international(value: str) -> phonenumbers.PhoneNumber | None:
    """What ``phonenumbers.parse`` makes of ``value``, a ``+`` and ASCII digits (the form a CRM
    mostly sends), in a few steps instead of its general ones; None when that form needs them.

    For such a string ``parse`` takes the leading digits that are a country code (1 to 3, the
    first that is one), strips nothing else, and then only a national prefix that the
    country's metadata matches at the start of the rest: those numbers go the general way. A
    test compares the two on every example number of the metadata and on random digits.
    """
    digits = value[1:]
    for size in (1, 2, 3):
        country_code = int(digits[:size])
        if country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    national = digits[size:]
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    if metadata is None or not 2 <= len(national) <= 17:
        return None
    prefix = metadata.national_prefix_for_parsing
    if prefix and re.match(prefix, national):
        return None
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(national))
    if len(national) > 1 and national[0] == "0":  # phonenumbers' "Italian leading zeros"
        number.italian_leading_zero = True
        zeros = 1
        while zeros < len(national) - 1 and national[zeros] == "0":
            zeros += 1
        if zeros != 1:
            number.number_of_leading_zeros = zeros
    return number


def normalize_email(value: str) -> str:
    """email-validator's normalised form; an address of the common shape (an ASCII dot-atom
    before the @, a domain already seen) takes a shortcut that gives the same answer at a
    fraction of the cost (a 100,000-row import spent a third of its time here)."""
    local, at, domain = value.partition("@")
    if (
        at
        and len(local) <= LOCAL_PART_MAX_LENGTH
        and DOT_ATOM_TEXT.match(local)
        and local.lower() not in CASE_INSENSITIVE_MAILBOX_NAMES
        and (checked := _checked_domain(domain)) is not None
        and len(local) + 1 + len(checked) <= EMAIL_MAX_LENGTH
    ):
        return f"{local}@{checked}"
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise ValueError(f"Некорректный email «{value}»: {error}") from None


@lru_cache(maxsize=4096)
def _checked_domain(domain: str) -> str | None:
    """The domain as email-validator normalises it, if it is valid and ASCII (else None: the
    address takes the full check, which says what is wrong)."""
    try:
        checked = validate_email(f"a@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    return checked.domain if checked.domain == checked.ascii_domain else None


def _clean_tags(tags: list[str]) -> list[str]:
    cleaned = list(dict.fromkeys(tag.strip() for tag in tags if tag.strip()))
    if len(cleaned) > MAX_TAGS:
        raise ValueError(f"Не больше {MAX_TAGS} тегов")
    return cleaned


_FLAGS = {"true": True, "false": False, "1": True, "0": False, "да": True, "нет": False}


def _parse_flag(value: Any) -> Any:
    """A yes/no as a CSV cell (or a JSON string) writes it: true/false, 1/0, да/нет."""
    if isinstance(value, str):
        flag = _FLAGS.get(value.strip().lower())
        if flag is None:
            raise ValueError(f"Ожидается true/false, 1/0 или да/нет, получено «{value}»")
        return flag
    return value


CONSENT_VALUES = tuple(consent.value for consent in Consent)
CLOCK_SKEW = timedelta(minutes=1)
"""How far ahead of ours a CRM's clock may be when it stamps a consent "now"."""


def _parse_consent(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in CONSENT_VALUES:
        return value.strip().lower()
    raise ValueError("Согласие: granted (дано), denied (отозвано) или unknown (неизвестно)")


def _check_consent_at(value: datetime) -> datetime:
    """A moment in UTC (one without an offset is read as UTC), not in the future."""
    try:
        moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00: before the first moment there is
        raise ValueError("Момент согласия вне допустимого диапазона") from None
    if moment > datetime.now(UTC) + CLOCK_SKEW:
        raise ValueError("Момент согласия не может быть в будущем")
    return moment


def consent_stamps(fields: dict[str, Any], given: Any, now: datetime) -> None:
    """A consent given without its moment gets ``now`` (the moment it is recorded)."""
    for channel in ("email", "sms"):
        if f"{channel}_consent" in given and f"{channel}_consent_at" not in given:
            fields[f"{channel}_consent_at"] = now


def contact_problems(*, email: str | None, phone: str | None) -> list[FieldError]:
    """Why a client cannot be reached, if it has neither an email nor a phone."""
    if email or phone:
        return []
    message = "Укажите email или phone: без контакта сообщение отправить некуда"
    return [FieldError(field="email", message=message), FieldError(field="phone", message=message)]


Guid = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
PersonName = Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)]
Email = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=320), AfterValidator(normalize_email)
]
Phone = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=32), AfterValidator(normalize_phone)
]
Tag = Annotated[str, StringConstraints(max_length=64)]
Tags = Annotated[list[Tag], AfterValidator(_clean_tags)]
Flag = Annotated[bool, BeforeValidator(_parse_flag)]
ConsentValue = Annotated[
    str,
    BeforeValidator(_parse_consent),
    WithJsonSchema({"type": "string", "enum": list(CONSENT_VALUES)}),
]
ConsentMoment = Annotated[datetime, AfterValidator(_check_consent_at)]
ConsentSource = Annotated[str, StringConstraints(strip_whitespace=True, max_length=255)]


def _check_attributes(attributes: Any) -> Any:
    """Not more names than a CRM card has fields, each no longer than a column name; their
    values are free (the body's size bounds them)."""
    if isinstance(attributes, dict):
        if len(attributes) > MAX_ATTRIBUTES:
            raise ValueError(f"Не больше {MAX_ATTRIBUTES} атрибутов")
        for name in attributes:
            if isinstance(name, str) and len(name) > MAX_ATTRIBUTE_NAME:
                raise ValueError(f"Имя атрибута не длиннее {MAX_ATTRIBUTE_NAME} символов")
    return attributes


Attributes = Annotated[dict[str, Any], BeforeValidator(_check_attributes)]


class ClientFields(RequestModel):
    """A client as the CRM sends it, without the project (a row of an import)."""

    guid: Guid = Field(description="guid клиента", examples=["lisjrfengghb^&Tgfb4*Tasdf"])
    first_name: Name = Field(description="Имя клиента", examples=["Иван"])
    last_name: Name = Field(description="Фамилия клиента", examples=["Иванов"])
    middle_name: PersonName = Field(
        default="", description="Отчество клиента", examples=["Иванович"]
    )
    email: Email | None = Field(default=None, description="Email; нужен email или phone")
    phone: Phone | None = Field(
        default=None, description="Телефон; приводится к E.164", examples=["+79161234567"]
    )
    timezone: TimeZoneName | None = Field(
        default=None, description="Часовой пояс клиента (IANA)", examples=["Europe/Moscow"]
    )
    tags: Tags = Field(default_factory=list, description="Теги для выбора аудитории")
    attributes: Attributes = Field(
        default_factory=dict, description="Произвольные данные, доступные в шаблонах"
    )
    opted_out: Flag = Field(
        default=False,
        description="Клиент отказался от рассылок: его сообщения пропускаются (skipped)",
        examples=[False],
    )
    email_opted_out: Flag = Field(
        default=False, description="Клиент отписался от писем проекта (и сервисных тоже)"
    )
    sms_opted_out: Flag = Field(
        default=False, description="Клиент отписался от SMS проекта (и сервисных тоже)"
    )
    email_consent: ConsentValue = Field(
        default=Consent.UNKNOWN.value,
        description="Согласие на рекламу по email (38-ФЗ ст. 18): granted, denied или unknown",
    )
    email_consent_at: ConsentMoment | None = Field(
        default=None, description="Когда согласие дано или отозвано; по умолчанию — сейчас"
    )
    email_consent_source: ConsentSource | None = Field(
        default=None, description="Откуда согласие (форма на сайте, договор…)"
    )
    sms_consent: ConsentValue = Field(
        default=Consent.UNKNOWN.value,
        description="Согласие на рекламу по SMS (38-ФЗ ст. 18): granted, denied или unknown",
    )
    sms_consent_at: ConsentMoment | None = Field(
        default=None, description="Когда согласие дано или отозвано; по умолчанию — сейчас"
    )
    sms_consent_source: ConsentSource | None = Field(
        default=None, description="Откуда согласие (форма на сайте, договор…)"
    )


class ImportFields(ClientFields):
    """A row of an import as ``ClientFields`` checks it, but for the phone's normalisation,
    which the import does itself with the number's zone from the same parse
    (``phone_and_zone``); a row this passes and whose phone normalises passes ``ClientFields``
    too, with that phone."""

    phone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=32)] | None = None


class ClientCreate(ClientFields):
    project: str | EntityId = Field(
        description="Код проекта (или его числовой id)", examples=["ОСМ"]
    )


class ClientUpdate(UpdateModel):
    """Only the fields present change; ``null`` clears an optional field."""

    guid: Guid | None = None
    first_name: Name | None = None
    last_name: Name | None = None
    middle_name: PersonName | None = None
    email: Email | None = None
    phone: Phone | None = None
    timezone: TimeZoneName | None = None
    tags: Tags | None = None
    attributes: Attributes | None = None
    opted_out: Flag | None = None
    email_opted_out: Flag | None = None
    sms_opted_out: Flag | None = None
    email_consent: ConsentValue | None = None
    email_consent_at: ConsentMoment | None = None
    email_consent_source: ConsentSource | None = None
    sms_consent: ConsentValue | None = None
    sms_consent_at: ConsentMoment | None = None
    sms_consent_source: ConsentSource | None = None


class ClientRead(ReadModel):
    id: int
    project_id: int
    guid: str
    first_name: str
    last_name: str
    middle_name: str
    email: str | None
    phone: str | None
    timezone: str | None
    tags: list[str]
    attributes: dict[str, Any]
    opted_out: bool
    email_opted_out: bool
    sms_opted_out: bool
    email_consent: str
    email_consent_at: datetime | None
    email_consent_source: str | None
    sms_consent: str
    sms_consent_at: datetime | None
    sms_consent_source: str | None
    created_at: datetime
    updated_at: datetime


class ImportRowError(BaseModel):
    row: int = Field(
        description="CSV: номер строки файла (заголовок — строка 1); JSON: индекс в clients"
    )
    field: str
    message: str


class ImportResult(BaseModel):
    created: int
    updated: int
    rejected: int
    errors: list[ImportRowError]
    errors_truncated: bool = Field(
        default=False, description="true, если ошибок больше, чем показано в errors"
    )


class ClientImport(RequestModel):
    """JSON body of ``POST /client/import``; rows are checked one by one, not here."""

    nul_checked_elsewhere = frozenset({"clients"})

    project: str | EntityId = Field(description="Код проекта (или его числовой id)")
    clients: list[Any] = Field(description="Клиенты, как в /client/create, без project")
