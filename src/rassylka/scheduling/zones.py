"""The recipient's time zone, for send windows read in the recipient's own day.

``recipient_zone`` picks, in order:

1. the client's own ``timezone`` when it is set (and a zone this machine knows);
2. the zone libphonenumber gives for the phone number when it names exactly one — not the
   "unknown" ``Etc/Unknown``;
3. the mailing's ``timezone``.

How many zones libphonenumber (phonenumbers 9.0) names, measured:

==============================  =====  =====================================================
number                          zones  result
==============================  =====  =====================================================
Russian mobile +7 916 …          16    ambiguous (+7 mobiles span Kaliningrad to Kamchatka,
                                       and Kazakhstan) → the mailing's zone
Moscow landline +7 495 …          1    Europe/Moscow
Novosibirsk landline +7 383 …     1    Asia/Novosibirsk
Vladivostok landline +7 423 …     1    Asia/Vladivostok
German +49 30 … / +49 151 …       1    Europe/Berlin
US +1 212 …                       1    America/New_York
Kazakh mobile +7 701 …           16    ambiguous (same +7 list) → the mailing's zone
Kazakh landline +7 727 …          1    Asia/Almaty
Indian +91 11 …                   1    Asia/Calcutta (a legacy alias; zoneinfo knows it)
==============================  =====  =====================================================

So the phone settles landlines and most single-zone countries; Russian and Kazakh mobiles
fall back to the mailing's zone (or the client's own ``timezone``, which the CRM should set).

Cost, measured on this machine: parsing an E.164 number ~13 µs and the zone lookup ~7 µs, so
~20 µs a call (about 1 s per 50,000 clients); the first lookup of a process loads the prefix
tables, ~1 ms. Cheap enough to call per client without a cache.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumber
from phonenumbers import timezone as phone_timezone

from rassylka.scheduling._wall import known_zone

UNKNOWN_ZONE = "Etc/Unknown"


def phone_zones(phone: str) -> tuple[str, ...]:
    """The zones libphonenumber gives for an E.164 ``phone`` (empty when it cannot be parsed)."""
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return ()
    zones: tuple[str, ...] = tuple(phone_timezone.time_zones_for_number(number))
    return zones


def phone_zone(phone: str | None) -> str | None:
    """The one zone a phone number names, or None when it names none or several (a Russian
    mobile names 16). Stored with the client, so windows need no lookup per message."""
    if not phone:
        return None
    return _one_zone(phone_zones(phone))


def number_zone(number: PhoneNumber, number_type: int, e164: str) -> str | None:
    """``phone_zone(e164)`` for a valid ``number``, its ``phonenumbers.number_type`` and its
    E.164 form, without parsing ``e164`` again (an import's rows: the parse is most of the cost).

    Parsing ``e164`` gives back ``number`` (the same country code and national significant
    number, so the same type and zones) unless its national significant number begins with
    what the country's metadata strips as a national prefix: then it is parsed again, as
    ``phone_zone`` does. The zones of a number of a type that is not geographical are those of
    its country code (libphonenumber's rule), so they are looked up once per country code.
    """
    code = number.country_code
    if code is None:
        return phone_zone(e164)
    region = phonenumbers.region_code_for_country_code(code)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
    prefix = metadata.national_prefix_for_parsing if metadata is not None else None
    if prefix and re.match(prefix, phonenumbers.national_significant_number(number)):
        return phone_zone(e164)
    if number_type == phonenumbers.PhoneNumberType.UNKNOWN:
        return None  # not valid: phone_zone gives no zone for it either
    if phonenumbers.is_number_type_geographical(number_type, code):
        return _one_zone(phone_timezone.time_zones_for_geographical_number(number))
    if code not in _COUNTRY_ZONE:
        _COUNTRY_ZONE[code] = phone_zone(e164)
    return _COUNTRY_ZONE[code]


_COUNTRY_ZONE: dict[int, str | None] = {}
"""The zone (or None) of the numbers of a country code whose type is not geographical."""


def _one_zone(zones: Sequence[str]) -> str | None:
    if len(zones) == 1 and zones[0] != UNKNOWN_ZONE and known_zone(zones[0]):
        return zones[0]
    return None


def recipient_zone(client_timezone: str | None, phone: str | None, mailing_timezone: str) -> str:
    """The IANA zone a recipient's send window is read in (see the module docstring)."""
    if client_timezone and known_zone(client_timezone):
        return client_timezone
    return phone_zone(phone) or mailing_timezone


def zone_or_utc(name: str | None) -> ZoneInfo:
    """The zone stored with a message, or UTC when it is missing or no longer known."""
    if name and known_zone(name):
        return ZoneInfo(name)
    return ZoneInfo("UTC")
