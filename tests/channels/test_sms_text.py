"""SMS coding choice, encoding and concatenation splits, checked at every boundary."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rassylka.channels.sms_text import (
    ESM_CLASS_DEFAULT,
    ESM_CLASS_UDHI,
    GSM7_DATA_CODING,
    GSM7_MULTI_PART_SEPTETS,
    GSM7_SINGLE_PART_SEPTETS,
    MAX_PARTS,
    UCS2_DATA_CODING,
    UCS2_MULTI_PART_UNITS,
    UCS2_SINGLE_PART_UNITS,
    EncodedSms,
    SmsCoding,
    SmsTooLongError,
    choose_coding,
    concatenation_udh,
    count_parts,
    decode_payload,
    encode_sms,
)

EXTENSION_CHARS = "^{}\\[~]|€\f"
GSM_BASIC_CHARS = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EMOJI = "😀"  # U+1F600, outside the BMP


def part_units(sms: EncodedSms, payload: bytes) -> int:
    return len(payload) if sms.coding is SmsCoding.GSM7 else len(payload) // 2


def char_units(coding: SmsCoding, char: str) -> int:
    if coding is SmsCoding.GSM7:
        return 2 if char in EXTENSION_CHARS else 1
    return 2 if ord(char) > 0xFFFF else 1


def decoded_parts(sms: EncodedSms) -> list[str]:
    return [decode_payload(part, data_coding=sms.data_coding) for part in sms.parts]


@pytest.mark.parametrize(
    ("text", "coding", "units", "part_sizes"),
    [
        pytest.param("", SmsCoding.GSM7, 0, [0], id="empty"),
        pytest.param("a" * 153, SmsCoding.GSM7, 153, [153], id="gsm-153"),
        pytest.param("a" * 154, SmsCoding.GSM7, 154, [154], id="gsm-154"),
        pytest.param("a" * 160, SmsCoding.GSM7, 160, [160], id="gsm-160"),
        pytest.param("a" * 161, SmsCoding.GSM7, 161, [153, 8], id="gsm-161"),
        pytest.param("a" * 306, SmsCoding.GSM7, 306, [153, 153], id="gsm-306"),
        pytest.param("a" * 307, SmsCoding.GSM7, 307, [153, 153, 1], id="gsm-307"),
        pytest.param("€" * 80, SmsCoding.GSM7, 160, [160], id="gsm-80-extension"),
        pytest.param("€" * 81, SmsCoding.GSM7, 162, [152, 10], id="gsm-81-extension"),
        pytest.param("a" * 159 + "€", SmsCoding.GSM7, 161, [153, 8], id="gsm-extension-tips-161"),
        pytest.param("я" * 67, SmsCoding.UCS2, 67, [67], id="ucs2-67"),
        pytest.param("я" * 70, SmsCoding.UCS2, 70, [70], id="ucs2-70"),
        pytest.param("я" * 71, SmsCoding.UCS2, 71, [67, 4], id="ucs2-71"),
        pytest.param("я" * 134, SmsCoding.UCS2, 134, [67, 67], id="ucs2-134"),
        pytest.param("я" * 135, SmsCoding.UCS2, 135, [67, 67, 1], id="ucs2-135"),
        pytest.param(EMOJI * 35, SmsCoding.UCS2, 70, [70], id="ucs2-35-emoji"),
        pytest.param(EMOJI * 36, SmsCoding.UCS2, 72, [66, 6], id="ucs2-36-emoji"),
        pytest.param("я" * 69 + EMOJI, SmsCoding.UCS2, 71, [67, 4], id="ucs2-emoji-tips-71"),
    ],
)
def test_boundaries(text: str, coding: SmsCoding, units: int, part_sizes: list[int]) -> None:
    sms = encode_sms(text)

    assert sms.coding is coding
    assert sms.units == units
    assert [part_units(sms, part) for part in sms.parts] == part_sizes
    assert count_parts(text) == len(part_sizes)
    assert "".join(decoded_parts(sms)) == text


@pytest.mark.parametrize(
    ("text", "coding", "data_coding"),
    [
        pytest.param("Hello, world! @home £5", SmsCoding.GSM7, GSM7_DATA_CODING, id="latin"),
        pytest.param(
            "Über: Ä Ö Ñ Ü à é è ù ì ò å ø æ ß", SmsCoding.GSM7, GSM7_DATA_CODING, id="gsm-accents"
        ),
        pytest.param("naïve", SmsCoding.UCS2, UCS2_DATA_CODING, id="i-diaeresis-not-gsm"),
        pytest.param("ΔΦΓΛΩΠΨΣΘΞ", SmsCoding.GSM7, GSM7_DATA_CODING, id="gsm-greek"),
        pytest.param("Привет, мир", SmsCoding.UCS2, UCS2_DATA_CODING, id="cyrillic"),
        pytest.param("Order 42: Привет", SmsCoding.UCS2, UCS2_DATA_CODING, id="mixed"),
        pytest.param("ç", SmsCoding.UCS2, UCS2_DATA_CODING, id="small-c-cedilla-not-gsm"),
        pytest.param("Ok " + EMOJI, SmsCoding.UCS2, UCS2_DATA_CODING, id="emoji"),
        # A literal ESC would be read as an escape and eat the next character.
        pytest.param("a\x1b(b", SmsCoding.UCS2, UCS2_DATA_CODING, id="literal-escape"),
    ],
)
def test_coding_choice(text: str, coding: SmsCoding, data_coding: int) -> None:
    sms = encode_sms(text)

    assert choose_coding(text) is coding
    assert sms.coding is coding
    assert sms.data_coding == data_coding
    assert "".join(decoded_parts(sms)) == text


def test_gsm7_is_unpacked_septets_with_escapes() -> None:
    sms = encode_sms("@£$Ω€{a")

    assert sms.parts == [b"\x00\x01\x02\x15\x1b\x65\x1b\x28\x61"]
    assert sms.units == 9


def test_ucs2_is_utf16be_with_surrogate_pair() -> None:
    sms = encode_sms("Я" + EMOJI)

    assert sms.parts == [b"\x04\x2f\xd8\x3d\xde\x00"]
    assert sms.units == 3


@pytest.mark.parametrize("char", list(EXTENSION_CHARS))
def test_each_extension_char_counts_two_and_round_trips(char: str) -> None:
    sms = encode_sms(char)

    assert sms.coding is SmsCoding.GSM7
    assert sms.units == 2
    assert sms.parts[0][0] == 0x1B
    assert decode_payload(sms.parts[0], data_coding=GSM7_DATA_CODING) == char


def test_whole_gsm_basic_table_round_trips_one_septet_each() -> None:
    sms = encode_sms(GSM_BASIC_CHARS)

    assert sms.coding is SmsCoding.GSM7
    assert sms.units == len(GSM_BASIC_CHARS) == 127
    assert b"\x1b" not in b"".join(sms.parts)
    assert "".join(decoded_parts(sms)) == GSM_BASIC_CHARS


@pytest.mark.parametrize("position", [151, 152, 153])
def test_extension_char_is_never_split_at_part_boundary(position: int) -> None:
    text = "a" * position + "€" + "b" * 20

    sms = encode_sms(text)

    assert sms.concatenated
    assert all(not part.endswith(b"\x1b") for part in sms.parts)
    assert all(len(part) <= GSM7_MULTI_PART_SEPTETS for part in sms.parts)
    first = decode_payload(sms.parts[0], data_coding=GSM7_DATA_CODING)
    assert first == (text[: position + 1] if position <= 151 else "a" * position)
    assert "".join(decoded_parts(sms)) == text


@pytest.mark.parametrize("position", [65, 66, 67])
def test_surrogate_pair_is_never_split_at_part_boundary(position: int) -> None:
    text = "я" * position + EMOJI + "я" * 10

    sms = encode_sms(text)

    assert sms.concatenated
    for part in sms.parts:
        assert len(part) // 2 <= UCS2_MULTI_PART_UNITS
        last_unit = int.from_bytes(part[-2:], "big")
        assert not 0xD800 <= last_unit <= 0xDBFF
    first = decode_payload(sms.parts[0], data_coding=UCS2_DATA_CODING)
    assert first == (text[: position + 1] if position <= 65 else "я" * position)
    assert "".join(decoded_parts(sms)) == text


def test_udh_bytes_exact() -> None:
    assert concatenation_udh(reference=0xAB, total=3, sequence=2) == b"\x05\x00\x03\xab\x03\x02"


def test_concatenated_short_messages_carry_udh_and_udhi() -> None:
    sms = encode_sms("a" * 307)

    messages = sms.short_messages(reference=0x7F)

    assert sms.esm_class == ESM_CLASS_UDHI == 0x40
    assert [message[:6] for message in messages] == [
        b"\x05\x00\x03\x7f\x03\x01",
        b"\x05\x00\x03\x7f\x03\x02",
        b"\x05\x00\x03\x7f\x03\x03",
    ]
    assert [message[6:] for message in messages] == sms.parts
    assert max(len(message) for message in messages) == 159


def test_single_part_short_message_has_no_udh() -> None:
    sms = encode_sms("a" * 160)

    assert sms.esm_class == ESM_CLASS_DEFAULT == 0x00
    assert sms.short_messages(reference=1) == [b"a" * 160]


@pytest.mark.parametrize(
    ("reference", "total", "sequence"),
    [(-1, 2, 1), (256, 2, 1), (1, 0, 1), (1, 256, 1), (1, 2, 0), (1, 2, 3)],
)
def test_udh_rejects_values_outside_one_octet_or_range(
    reference: int, total: int, sequence: int
) -> None:
    with pytest.raises(ValueError, match=r"outside|fit"):
        concatenation_udh(reference=reference, total=total, sequence=sequence)


def test_short_messages_rejects_reference_beyond_one_octet() -> None:
    with pytest.raises(ValueError, match="one octet"):
        encode_sms("a" * 200).short_messages(reference=256)


def test_maximum_parts_accepted_and_one_more_refused() -> None:
    longest = "a" * (MAX_PARTS * GSM7_MULTI_PART_SEPTETS)

    assert len(encode_sms(longest).parts) == MAX_PARTS
    with pytest.raises(SmsTooLongError) as raised:
        encode_sms(longest + "a")
    assert raised.value.parts == MAX_PARTS + 1
    assert isinstance(raised.value, ValueError)
    # The preview count still answers, so it can say how far over the limit a text is.
    assert count_parts(longest + "a") == MAX_PARTS + 1


def test_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        encode_sms("ok \ud83d")
    with pytest.raises(ValueError, match="lone surrogate"):
        count_parts("ok \ud83d")


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        pytest.param(b"\x1b\x1b", " ", id="escape-escape-is-space"),
        pytest.param(b"\x1b\x41", "A", id="unknown-extension-falls-back"),
        pytest.param(b"a\x1b", "a ", id="dangling-escape"),
    ],
)
def test_decode_gsm7_follows_23038_fallbacks(payload: bytes, text: str) -> None:
    assert decode_payload(payload, data_coding=GSM7_DATA_CODING) == text


def test_decode_refuses_unknown_coding_and_eight_bit_octets() -> None:
    with pytest.raises(ValueError, match="data_coding 0x04"):
        decode_payload(b"a", data_coding=0x04)
    with pytest.raises(ValueError, match="not a GSM"):
        decode_payload(b"\x80", data_coding=GSM7_DATA_CODING)


_gsm_chars = st.sampled_from(GSM_BASIC_CHARS + EXTENSION_CHARS)
_mixed_chars = st.one_of(
    _gsm_chars,
    st.characters(min_codepoint=0x0400, max_codepoint=0x04FF),  # Cyrillic
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),  # emoji, astral
    st.characters(codec="utf-8"),  # anything encodable, lone surrogates excluded
)
_texts = st.one_of(
    st.text(alphabet=_gsm_chars, max_size=700),
    st.text(alphabet=_mixed_chars, max_size=400),
)


@settings(max_examples=400, deadline=None)
@given(text=_texts)
def test_parts_round_trip_within_limits(text: str) -> None:
    sms = encode_sms(text)
    decoded = decoded_parts(sms)

    assert "".join(decoded) == text
    assert len(sms.parts) == count_parts(text)
    assert sum(part_units(sms, part) for part in sms.parts) == sms.units
    if sms.coding is SmsCoding.GSM7:
        single, multi = GSM7_SINGLE_PART_SEPTETS, GSM7_MULTI_PART_SEPTETS
    else:
        single, multi = UCS2_SINGLE_PART_UNITS, UCS2_MULTI_PART_UNITS
    if sms.units <= single:
        assert len(sms.parts) == 1
    else:
        assert all(part_units(sms, part) <= multi for part in sms.parts)
        # Greedy fill: a part is closed only when the next character would not fit.
        for part, following in zip(sms.parts, decoded[1:], strict=False):
            next_units = char_units(sms.coding, following[0])
            assert part_units(sms, part) + next_units > multi
