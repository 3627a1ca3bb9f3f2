"""The email shortcut gives email-validator's own answer, for any input."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from rassylka.clients.schemas import normalize_email


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
