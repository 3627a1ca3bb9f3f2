"""The email shortcut gives email-validator's own answer, and the import's one-parse phone
check gives normalize_phone's and phone_zone's, for any input."""

from __future__ import annotations

import phonenumbers
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from rassylka.clients.schemas import (
    _PLUS_DIGITS,
    _international,
    normalize_email,
    normalize_phone,
    phone_and_zone,
)
from rassylka.scheduling import phone_zone


def full_check(value: str) -> str | None:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


def shortcut(value: str) -> str | None:
    try:
        return normalize_email(value)
    except ValueError:
        return None


PIECES = st.sampled_from(
    [
        "a",
        "Z",
        "9",
        ".",
        "..",
        "@",
        "-",
        "_",
        "+",
        "!",
        "~",
        '"',
        " ",
        "<",
        ">",
        "[",
        "]",
        "é",
        "ß",
        "я",
        "xn--",
        "Postmaster",
        "ABUSE",
        "example",
        "com",
        "ru",
        "local",
        "localhost",
        "test",
        "invalid",
        "1",
        "a" * 63,
        "b" * 70,
        "ё.рф",
        "ＡＢ",
    ]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(PIECES, max_size=12).map("".join))
def test_the_shortcut_agrees_with_email_validator(value: str) -> None:
    assert shortcut(value) == full_check(value)


@settings(max_examples=1000, deadline=None)
@given(st.emails())
def test_valid_addresses_too(value: str) -> None:
    assert shortcut(value) == full_check(value)


@pytest.mark.parametrize(
    "value",
    [
        "user@example.com",
        "User.Name+tag@Example.COM",
        "postmaster@example.com",
        "PostMaster@example.com",
        "a..b@example.com",
        "user@localhost",
        "user@example.local",
        "user@пример.рф",
        "user@xn--e1afmkfd.xn--p1ai",
        "пользователь@example.com",
        f"{'a' * 64}@example.com",
        f"{'a' * 65}@example.com",
        f"{'a' * 60}@{'b' * 63}.{'c' * 63}.{'d' * 63}.com",
        "user@@example.com",
        "user@exa_mple.com",
        "user@123.123",
        '"quoted"@example.com',
        "Name <user@example.com>",
    ],
)
def test_known_cases(value: str) -> None:
    assert shortcut(value) == full_check(value)


# -- the phone: one parse for the number and its zone -------------------------------------------


def two_parses(value: str) -> tuple[str, str | None] | str:
    """What /client/create stores for a phone (or the error): the number, then its zone."""
    try:
        e164 = normalize_phone(value)
    except ValueError as error:
        return str(error)
    return e164, phone_zone(e164)


def one_parse(value: str) -> tuple[str, str | None] | str:
    try:
        return phone_and_zone(value)
    except ValueError as error:
        return str(error)


def example_numbers() -> list[str]:
    """Every example number of libphonenumber's metadata, in E.164, international and national
    form: each region, each type, and the non-geographic entities."""
    numbers = [
        number
        for region in phonenumbers.SUPPORTED_REGIONS
        for kind in range(12)
        if (number := phonenumbers.example_number_for_type(region, kind)) is not None
    ]
    numbers += [
        number
        for code in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS
        if (number := phonenumbers.example_number_for_non_geo_entity(code)) is not None
    ]
    formats = (
        phonenumbers.PhoneNumberFormat.E164,
        phonenumbers.PhoneNumberFormat.INTERNATIONAL,
        phonenumbers.PhoneNumberFormat.NATIONAL,
    )
    return [phonenumbers.format_number(number, kind) for number in numbers for kind in formats]


def test_one_parse_agrees_on_every_example_number() -> None:
    examples = example_numbers()
    assert len(examples) > 3000
    valid = 0
    for value in examples:
        assert one_parse(value) == two_parses(value), value
        valid += isinstance(two_parses(value), tuple)
    assert valid > 1000  # national forms of other countries are invalid in the default region
    # the cases the module docstring of scheduling.zones lists
    assert one_parse("+79161234567") == ("+79161234567", None)  # 16 zones
    assert one_parse("+7 495 123-45-67") == ("+74951234567", "Europe/Moscow")
    assert one_parse("8 (383) 123-45-67") == ("+73831234567", "Asia/Novosibirsk")
    assert one_parse("+78001234567") == two_parses("+78001234567")  # starts with RU's prefix
    assert one_parse("12345") == "Некорректный номер телефона «12345»"


COUNTRY_CODES = st.sampled_from(sorted(map(str, phonenumbers.COUNTRY_CODE_TO_REGION_CODE)))


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(COUNTRY_CODES, st.just("7"), st.just("")),
    st.text("0123456789", max_size=17),
    st.sampled_from(["+", "", "8", "+0", " +", "+7 "]),
)
def test_one_parse_agrees_on_any_digits(code: str, digits: str, start: str) -> None:
    value = f"{start}{code}{digits}"
    assert one_parse(value) == two_parses(value)
    if _PLUS_DIGITS.fullmatch(value) and (number := _international(value)) is not None:
        assert number == phonenumbers.parse(value, "RU")  # the shortcut is parse's answer
