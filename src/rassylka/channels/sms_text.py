"""SMS text for SMPP: choose GSM 03.38 7-bit or UCS-2, encode as SMPP sends it, and split
into concatenated parts (6-octet UDH, 8-bit reference) without breaking a character.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

GSM7_DATA_CODING = 0x00
UCS2_DATA_CODING = 0x08
ESM_CLASS_DEFAULT = 0x00
ESM_CLASS_UDHI = 0x40
# The concatenation UDH carries total and sequence in one octet each.
MAX_PARTS = 255

GSM7_SINGLE_PART_SEPTETS = 160
GSM7_MULTI_PART_SEPTETS = 153
UCS2_SINGLE_PART_UNITS = 70
UCS2_MULTI_PART_UNITS = 67

_ESCAPE = 0x1B

# GSM 03.38 default alphabet, code point = index. 0x1B is the escape to the extension table,
# not a character: it is None here so that a literal U+001B in a text forces UCS-2 instead of
# being sent as an escape that would swallow the next character.
_GSM7_BASIC: tuple[str | None, ...] = (
    *"@£$¥èéùìòÇ\nØø\rÅå",
    *"Δ_ΦΓΛΩΠΨΣΘΞ",
    None,
    *"ÆæßÉ",
    *" !\"#¤%&'()*+,-./0123456789:;<=>?",
    *"¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§",
    *"¿abcdefghijklmnopqrstuvwxyzäöñüà",
)
_GSM7_EXTENSION: dict[str, int] = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}

_GSM7_ENCODE: dict[str, bytes] = {
    char: bytes([code]) for code, char in enumerate(_GSM7_BASIC) if char is not None
}
_GSM7_ENCODE.update({char: bytes([_ESCAPE, code]) for char, code in _GSM7_EXTENSION.items()})
_GSM7_DECODE_EXTENSION: dict[int, str] = {code: char for char, code in _GSM7_EXTENSION.items()}
_GSM7_CHARS = frozenset(_GSM7_ENCODE)
# The same encoding for str.translate (then Latin-1): a whole text in one C call.
_GSM7_TRANSLATE: dict[int, str] = {
    ord(char): code.decode("latin-1") for char, code in _GSM7_ENCODE.items()
}


class SmsCoding(StrEnum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"


_DATA_CODING: dict[SmsCoding, int] = {
    SmsCoding.GSM7: GSM7_DATA_CODING,
    SmsCoding.UCS2: UCS2_DATA_CODING,
}


class SmsTooLongError(ValueError):
    """The text needs more parts than concatenation can address."""

    def __init__(self, parts: int) -> None:
        super().__init__(f"SMS text needs {parts} parts; at most {MAX_PARTS} can be concatenated")
        self.parts = parts


@dataclass(frozen=True)
class EncodedSms:
    """A text ready for submit_sm: one payload per part, without UDH.

    ``units`` counts septets for GSM-7 (an extension character is two) and UTF-16 code units
    for UCS-2 (a character outside the BMP is two).
    """

    coding: SmsCoding
    parts: list[bytes]
    units: int

    @property
    def data_coding(self) -> int:
        return _DATA_CODING[self.coding]

    @property
    def concatenated(self) -> bool:
        return len(self.parts) > 1

    @property
    def esm_class(self) -> int:
        return ESM_CLASS_UDHI if self.concatenated else ESM_CLASS_DEFAULT

    def short_messages(self, *, reference: int) -> list[bytes]:
        """Each part's ``short_message``: UDH + payload when concatenated, else the payload.

        ``reference`` must be the same for all parts of one message and should differ between
        messages to the same recipient, or the handset may merge them.
        """
        if not self.concatenated:
            return list(self.parts)
        total = len(self.parts)
        return [
            concatenation_udh(reference=reference, total=total, sequence=sequence) + payload
            for sequence, payload in enumerate(self.parts, start=1)
        ]


def concatenation_udh(*, reference: int, total: int, sequence: int) -> bytes:
    """The 6-octet UDH for concatenated SMS with an 8-bit reference (IEI 0x00)."""
    if not 0 <= reference <= 0xFF:
        raise ValueError(f"concatenation reference {reference} does not fit in one octet")
    if not 1 <= total <= MAX_PARTS:
        raise ValueError(f"part total {total} is outside 1..{MAX_PARTS}")
    if not 1 <= sequence <= total:
        raise ValueError(f"part sequence {sequence} is outside 1..{total}")
    # UDHL 5, then IEI 0x00 with its length 3: reference, total, sequence.
    return bytes([0x05, 0x00, 0x03, reference, total, sequence])


def choose_coding(text: str) -> SmsCoding:
    """GSM-7 when every character is in the default alphabet or its extension, else UCS-2."""
    if _GSM7_CHARS.issuperset(text):
        return SmsCoding.GSM7
    return SmsCoding.UCS2


def count_parts(text: str) -> int:
    """How many SMS the text goes out as (for billing and preview).

    Unlike :func:`encode_sms` this does not refuse a text beyond ``MAX_PARTS``, so a preview
    can say by how much it is too long.
    """
    coding = choose_coding(text)
    return len(_split(_unit_costs(text, coding), coding))


def count_units(text: str) -> int:
    """What the text's coding counts (for a preview's counter): septets for GSM-7, an
    extension character two; UTF-16 code units for UCS-2. ``ValueError`` for a lone
    surrogate, as :func:`encode_sms`."""
    return sum(_unit_costs(text, choose_coding(text)))


def encode_sms(text: str) -> EncodedSms:
    """Encode ``text`` as SMPP sends it: GSM-7 unpacked (one septet per octet) or UTF-16BE.

    Raises :class:`SmsTooLongError` beyond ``MAX_PARTS`` parts and ``ValueError`` for a text
    with a lone surrogate, which no SMS coding can carry.
    """
    coding = choose_coding(text)
    single = _single_part(text, coding)
    if single is not None:
        return single
    costs = _unit_costs(text, coding)
    bounds = _split(costs, coding)
    if len(bounds) > MAX_PARTS:
        raise SmsTooLongError(len(bounds))
    parts = [_encode_chunk(text[start:end], coding) for start, end in bounds]
    return EncodedSms(coding=coding, parts=parts, units=sum(costs))


def _single_part(text: str, coding: SmsCoding) -> EncodedSms | None:
    """The text encoded whole if it fits one part (most do), without a look at each character
    from Python; None if it needs splitting or holds a lone surrogate (the caller says which)."""
    if coding is SmsCoding.GSM7:
        payload = text.translate(_GSM7_TRANSLATE).encode("latin-1")
        units, limit = len(payload), GSM7_SINGLE_PART_SEPTETS
    else:
        try:
            payload = text.encode("utf-16-be")
        except UnicodeEncodeError:
            return None
        units, limit = len(payload) // 2, UCS2_SINGLE_PART_UNITS
    if units > limit:
        return None
    return EncodedSms(coding=coding, parts=[payload], units=units)


def decode_payload(payload: bytes, *, data_coding: int) -> str:
    """Decode one part's payload (without UDH), e.g. a deliver_sm or a part we built."""
    if data_coding == UCS2_DATA_CODING:
        return payload.decode("utf-16-be")
    if data_coding == GSM7_DATA_CODING:
        return _decode_gsm7(payload)
    raise ValueError(f"unsupported data_coding 0x{data_coding:02x}")


def _unit_costs(text: str, coding: SmsCoding) -> list[int]:
    if coding is SmsCoding.GSM7:
        return [len(_GSM7_ENCODE[char]) for char in text]
    costs = []
    for char in text:
        code_point = ord(char)
        if 0xD800 <= code_point <= 0xDFFF:
            raise ValueError(f"lone surrogate U+{code_point:04X} cannot be sent in an SMS")
        costs.append(2 if code_point > 0xFFFF else 1)
    return costs


def _split(costs: list[int], coding: SmsCoding) -> list[tuple[int, int]]:
    """Character index ranges of the parts; a character is never divided between parts."""
    if coding is SmsCoding.GSM7:
        single, multi = GSM7_SINGLE_PART_SEPTETS, GSM7_MULTI_PART_SEPTETS
    else:
        single, multi = UCS2_SINGLE_PART_UNITS, UCS2_MULTI_PART_UNITS
    if sum(costs) <= single:
        return [(0, len(costs))]
    bounds = []
    start = 0
    used = 0
    for index, cost in enumerate(costs):
        if used + cost > multi:
            bounds.append((start, index))
            start, used = index, 0
        used += cost
    bounds.append((start, len(costs)))
    return bounds


def _encode_chunk(chunk: str, coding: SmsCoding) -> bytes:
    if coding is SmsCoding.GSM7:
        return chunk.translate(_GSM7_TRANSLATE).encode("latin-1")
    return chunk.encode("utf-16-be")


def _decode_gsm7(payload: bytes) -> str:
    chars = []
    index = 0
    while index < len(payload):
        code = payload[index]
        if code > 0x7F:
            raise ValueError(f"octet 0x{code:02x} at {index} is not a GSM 7-bit septet")
        index += 1
        if code != _ESCAPE:
            chars.append(_GSM7_BASIC[code] or " ")
            continue
        if index == len(payload):
            # A dangling escape (a peer split the sequence): 23.038 has nothing to show.
            chars.append(" ")
            break
        extended = payload[index]
        index += 1
        if extended in _GSM7_DECODE_EXTENSION:
            chars.append(_GSM7_DECODE_EXTENSION[extended])
        elif extended == _ESCAPE or extended > 0x7F:
            # 23.038: escape-escape is reserved for another table; show a space meanwhile.
            chars.append(" ")
        else:
            # 23.038: an unknown extension code shows the default alphabet's character.
            chars.append(_GSM7_BASIC[extended] or " ")
    return "".join(chars)
