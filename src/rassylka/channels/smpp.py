"""The SMS transport: a small asyncio SMPP 3.4 client (an ESME) on one ``bind_transceiver``.

Why our own: aiosmpplib 0.7.4 has no window of in-flight submits, hangs in ``stop()`` after a
crash and splits long texts wrongly; smpplib blocks; smpp34 has no text encoding. Encoding and
splitting come from :mod:`rassylka.channels.sms_text`.

The PDU codec at the top is table-driven and covers what this client speaks: bind_transceiver,
unbind, submit_sm, deliver_sm, enquire_link (each with its response) and generic_nack. Decoding
malformed input raises :class:`SmppDecodeError`; the reader answers such a request with a
generic_nack and reads on, and only a broken frame (a command_length that cannot be right) ends
the connection.

Sending
    Up to ``window`` submit_sm await their submit_sm_resp at once on the connection, across
    messages and across concurrent ``send`` calls; a reader task matches responses to requests
    by sequence_number. Every submit_sm asks for a delivery receipt (``registered_delivery`` 1).
    The parts of a concatenated message go one after another, each after the previous one was
    accepted (parts of different messages interleave within the window), so a refused part stops
    the message: the parts after it are never sent, and the message's outcome is that refusal.
    With ``concatenation="payload"`` a text longer than one SMS goes instead as one submit_sm
    with an empty short_message and the whole text in ``message_payload`` (TLV 0x0424): the
    SMSC splits it, one receipt comes for it, and the outcome's ``parts`` still counts the SMS
    it costs. A text that fits one SMS goes in short_message either way.

Duplicates versus loss
    A submit_sm written to a connection that then dies (or that gets no response within
    ``timeout``) may or may not have been taken by the SMSC, and we cannot ask. Its message's
    outcome is a :class:`TransientChannelError`, so the dispatcher retries it later: a message
    sent twice is judged better than a message lost. A submit_sm that was never written (the
    connection had already ended) goes on the next connection within the same ``send``.

Reconnecting
    The connection is opened by the first ``send``. When it drops (the SMSC closes it, sends
    unbind, or stops answering enquire_link), it is opened and bound again in the background
    with exponential backoff (``reconnect_delay`` doubling up to ``reconnect_max_delay``; a
    connection that lasted a minute resets it), so delivery receipts keep coming between
    sends. A ``send`` waits for a connection attempt due within ``timeout``; beyond that, or once
    an attempt has failed during this ``send``, its remaining messages fail at once with the
    reason (transient). A refused bind (ESME_RBINDFAIL, ESME_RINVPASWD, ESME_RINVSYSID, ...) is
    a configuration problem, not the messages' fault: every message of that send is transient
    with the SMSC's answer as its reply.

Classifying refusals (``code`` is the command_status)
    transient: ESME_RTHROTTLED, ESME_RMSGQFUL, ESME_RSYSERR, ESME_RSUBMITFAIL (a generic
    failure that does not say the message is at fault), ESME_RX_T_APPN,
    ESME_RUNKNOWNERR, ESME_RDELIVERYFAILURE, ESME_RINVBNDSTS (the connection is rebound), bind
    failures, timeouts and lost connections. permanent: malformed or refused addresses, lengths,
    codings, flags and optional parameters (ESME_RINVDSTADR, ESME_RINVSRCADR, ESME_RINVMSGLEN,
    ESME_RINVDCS, ...), see ``_STATUS_INFO``. A status outside the table (0x400-0x4FF are the
    SMSC vendor's own) is transient: the submit was refused, so a retry cannot duplicate, and
    the dispatcher's retry limit bounds the cost, whereas a permanent verdict would lose
    messages to a passing condition we cannot read. The reply reads
    ``"submit_sm_resp 0x0000000B ESME_RINVDSTADR: Invalid destination address"``.

Addresses
    The destination must be E.164 (``+79161234567``): TON 1 (international), NPI 1 (E.164),
    sent without the ``+``. The source (``source_addr`` in the config): ``+`` and digits is
    international (TON 1, NPI 1, without the ``+``); digits alone are sent as given with TON 0
    (unknown) and NPI 1, which leaves to the SMSC whether it is a national number or a short
    code; anything else is an alphanumeric sender name of up to 11 printable ASCII characters,
    not starting with ``+`` or a space (TON 5, NPI 0); empty lets the SMSC use its default
    (TON 0, NPI 0). The config refuses any other sender at startup. A message with its own
    ``source`` (its project's sender) goes from that one, read the same way; one of no form
    fails the message (permanent).

Delivery receipts
    Every deliver_sm is answered. A delivery receipt (esm_class message type 0x04, or 0x20 for an
    intermediate notification) is parsed into a :class:`DeliveryReceipt` and handed to
    ``on_receipt``; the deliver_sm_resp goes once the awaitable it returns is done (a future
    is awaited without a task of its own), so a receipt the process did not get to store is
    delivered again by the SMSC. If the callback fails, the error is logged and the answer is
    ESME_RX_T_APPN (temporary application error: the SMSC retries).

Inbound texts
    Any other deliver_sm is a text a handset sent (mobile-originated): decoded into an
    :class:`InboundSms` and handed to ``on_inbound``, answered the same way once it is done
    (or with ESME_RX_T_APPN if it failed). Its text is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from rassylka.channels.base import (
    Accepted,
    ChannelError,
    ChannelKind,
    OutboundMessage,
    Outcome,
    PermanentChannelError,
    TransientChannelError,
    send_each,
)
from rassylka.channels.sms_text import (
    ESM_CLASS_DEFAULT,
    ESM_CLASS_UDHI,
    GSM7_DATA_CODING,
    UCS2_DATA_CODING,
    SmsTooLongError,
    decode_payload,
    encode_sms,
)

if TYPE_CHECKING:
    from rassylka.config import Settings

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# PDU codec

RESPONSE_BIT = 0x80000000
HEADER_LENGTH = 16
# The largest PDU read; real ones are a few hundred octets (a message_payload could be 64 KiB).
MAX_PDU_LENGTH = 0x10000 + 1024
INTERFACE_VERSION = 0x34
ALERT_NOTIFICATION = 0x00000102  # a request that takes no response

_HEADER = struct.Struct(">IIII")
_TLV_HEADER = struct.Struct(">HH")


class Command(IntEnum):
    GENERIC_NACK = 0x80000000
    SUBMIT_SM = 0x00000004
    SUBMIT_SM_RESP = 0x80000004
    DELIVER_SM = 0x00000005
    DELIVER_SM_RESP = 0x80000005
    UNBIND = 0x00000006
    UNBIND_RESP = 0x80000006
    BIND_TRANSCEIVER = 0x00000009
    BIND_TRANSCEIVER_RESP = 0x80000009
    ENQUIRE_LINK = 0x00000015
    ENQUIRE_LINK_RESP = 0x80000015

    @property
    def label(self) -> str:
        """The command's name as the specification writes it: ``submit_sm_resp``."""
        return self.name.lower()

    @property
    def is_response(self) -> bool:
        return bool(self.value & RESPONSE_BIT)

    @property
    def response(self) -> Command:
        return Command(self.value | RESPONSE_BIT)


class Tlv(IntEnum):
    """The optional parameters this client reads or writes (others pass through by tag)."""

    RECEIPTED_MESSAGE_ID = 0x001E
    SC_INTERFACE_VERSION = 0x0210
    NETWORK_ERROR_CODE = 0x0423
    MESSAGE_PAYLOAD = 0x0424
    MESSAGE_STATE = 0x0427


FieldKind = Literal["cstring", "int8", "octets"]


@dataclass(frozen=True)
class _Field:
    name: str
    kind: FieldKind
    size: int = 1
    """cstring: the most octets, NUL included; octets: the most octets after the length."""


def _c(name: str, size: int) -> _Field:
    return _Field(name, "cstring", size)


def _i(name: str) -> _Field:
    return _Field(name, "int8")


_SHORT_MESSAGE_FIELDS = (
    _c("service_type", 6),
    _i("source_addr_ton"),
    _i("source_addr_npi"),
    _c("source_addr", 21),
    _i("dest_addr_ton"),
    _i("dest_addr_npi"),
    _c("destination_addr", 21),
    _i("esm_class"),
    _i("protocol_id"),
    _i("priority_flag"),
    _c("schedule_delivery_time", 17),
    _c("validity_period", 17),
    _i("registered_delivery"),
    _i("replace_if_present_flag"),
    _i("data_coding"),
    _i("sm_default_msg_id"),
    _Field("short_message", "octets", 254),  # preceded by sm_length
)

# SMPP 3.4 section 4: the mandatory parameters of each PDU body, in order.
BODIES: dict[Command, tuple[_Field, ...]] = {
    Command.GENERIC_NACK: (),
    Command.BIND_TRANSCEIVER: (
        _c("system_id", 16),
        _c("password", 9),
        _c("system_type", 13),
        _i("interface_version"),
        _i("addr_ton"),
        _i("addr_npi"),
        _c("address_range", 41),
    ),
    Command.BIND_TRANSCEIVER_RESP: (_c("system_id", 16),),
    Command.UNBIND: (),
    Command.UNBIND_RESP: (),
    Command.SUBMIT_SM: _SHORT_MESSAGE_FIELDS,
    Command.SUBMIT_SM_RESP: (_c("message_id", 65),),
    Command.DELIVER_SM: _SHORT_MESSAGE_FIELDS,
    Command.DELIVER_SM_RESP: (_c("message_id", 65),),
    Command.ENQUIRE_LINK: (),
    Command.ENQUIRE_LINK_RESP: (),
}

ParamValue = int | str | bytes


@dataclass(frozen=True)
class Pdu:
    """One SMPP PDU: header fields, mandatory parameters by name, optional ones (TLVs) by tag.

    A parameter left out of ``params`` encodes as its empty value (0, "" or no octets).
    """

    command: Command
    sequence: int = 0
    status: int = 0
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def text(self, name: str) -> str:
        value = self.params.get(name, "")
        if not isinstance(value, str):
            raise TypeError(f"{self.command.label} {name} is not a C-octet string")
        return value

    def number(self, name: str) -> int:
        value = self.params.get(name, 0)
        if not isinstance(value, int):
            raise TypeError(f"{self.command.label} {name} is not an integer")
        return value

    def octets(self, name: str) -> bytes:
        value = self.params.get(name, b"")
        if not isinstance(value, bytes):
            raise TypeError(f"{self.command.label} {name} is not an octet string")
        return value

    def tlv(self, tag: int) -> bytes | None:
        """The first optional parameter with ``tag``, if any."""
        for key, value in self.tlvs:
            if key == tag:
                return value
        return None


class SmppCodecError(ValueError):
    """A PDU cannot be encoded as given."""


class SmppDecodeError(SmppCodecError):
    """Octets that are not a PDU this client understands.

    ``command_id`` and ``sequence`` are set when the header could be read, so a request can be
    answered with a generic_nack carrying ``status``.
    """

    def __init__(
        self,
        message: str,
        *,
        command_id: int | None = None,
        sequence: int | None = None,
        status: int = 0x00000002,  # ESME_RINVCMDLEN
    ) -> None:
        super().__init__(message)
        self.command_id = command_id
        self.sequence = sequence
        self.status = status


class SmppFramingError(SmppDecodeError):
    """The command_length cannot be right: the stream can no longer be split into PDUs."""


_SUBMIT_SM_RESP_ID = Command.SUBMIT_SM_RESP.to_bytes(4, "big")


def encode_pdu(pdu: Pdu) -> bytes:
    if pdu.command.is_response and pdu.status and not pdu.params and not pdu.tlvs:
        body = b""  # a refusal goes without a body, as SMPP 3.4 5.1.3 lets it
    else:
        body = encode_body(pdu.command, pdu.params, pdu.tlvs)
    return pack_pdu(pdu.command, body, sequence=pdu.sequence, status=pdu.status)


def pack_pdu(command: Command, body: bytes, *, sequence: int, status: int = 0) -> bytes:
    """A PDU from its body (as :func:`encode_body` makes it) and header fields."""
    if not 0 <= sequence <= 0xFFFFFFFF or not 0 <= status <= 0xFFFFFFFF:
        raise SmppCodecError(f"{command.label} sequence_number or command_status out of range")
    return _HEADER.pack(HEADER_LENGTH + len(body), command, status, sequence) + body


def encode_body(
    command: Command,
    params: Mapping[str, ParamValue],
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """The body of a ``command`` PDU: its mandatory parameters, then the TLVs."""
    label = command.label
    fields = BODIES[command]
    unknown = set(params) - {spec.name for spec in fields}
    if unknown:
        raise SmppCodecError(f"{label} has no parameter {', '.join(sorted(unknown))}")
    body = bytearray()
    for spec in fields:
        value = params.get(spec.name)
        if spec.kind == "cstring":
            body += _encode_cstring(label, spec, "" if value is None else value)
        elif spec.kind == "int8":
            number = 0 if value is None else value
            if not isinstance(number, int) or not 0 <= number <= 0xFF:
                raise SmppCodecError(f"{label} {spec.name} must be an integer 0..255")
            body.append(number)
        else:
            octets = b"" if value is None else value
            if not isinstance(octets, bytes) or len(octets) > spec.size:
                raise SmppCodecError(f"{label} {spec.name} must be at most {spec.size} octets")
            body.append(len(octets))
            body += octets
    for tag, value in tlvs:
        if not 0 <= tag <= 0xFFFF or len(value) > 0xFFFF:
            raise SmppCodecError(f"{label} TLV 0x{tag:04X} does not fit")
        body += _TLV_HEADER.pack(tag, len(value)) + value
    return bytes(body)


def _encode_cstring(label: str, spec: _Field, value: ParamValue) -> bytes:
    if not isinstance(value, str):
        raise SmppCodecError(f"{label} {spec.name} must be text")
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise SmppCodecError(f"{label} {spec.name} {value!r} is not ASCII") from None
    if b"\0" in raw:
        raise SmppCodecError(f"{label} {spec.name} contains a NUL")
    if len(raw) >= spec.size:
        raise SmppCodecError(f"{label} {spec.name} is longer than {spec.size - 1} characters")
    return raw + b"\0"


def decode_pdu(data: bytes) -> Pdu:
    """The PDU in ``data``, which must be exactly one PDU (command_length octets)."""
    if (
        len(data) > HEADER_LENGTH
        and data[4:8] == _SUBMIT_SM_RESP_ID
        and data.find(b"\0", HEADER_LENGTH) == len(data) - 1
        and _HEADER.unpack_from(data)[0] == len(data)
    ):
        # The most common PDU read, a submit_sm_resp of a message_id alone (no TLVs): the
        # same PDU as below, without the walk over the body's fields.
        _, _, status, sequence = _HEADER.unpack_from(data)
        message_id = data[HEADER_LENGTH:-1].decode("latin-1")
        return Pdu(Command.SUBMIT_SM_RESP, sequence, status, {"message_id": message_id})
    if len(data) < HEADER_LENGTH:
        raise SmppDecodeError(f"a PDU has at least {HEADER_LENGTH} octets, not {len(data)}")
    length, command_id, status, sequence = _HEADER.unpack_from(data)
    where = {"command_id": command_id, "sequence": sequence}
    if length != len(data):
        raise SmppDecodeError(
            f"command_length {length} does not match the PDU's {len(data)} octets", **where
        )
    try:
        command = Command(command_id)
    except ValueError:
        raise SmppDecodeError(
            f"unknown command_id 0x{command_id:08X}", status=0x00000003, **where
        ) from None  # ESME_RINVCMDID
    body = data[HEADER_LENGTH:]
    if command.is_response and not body:
        # SMPP 3.4 5.1.3: a response with an error status may come without its body.
        return Pdu(command, sequence, status)
    label = command.label
    params: dict[str, ParamValue] = {}
    offset = 0
    for spec in BODIES[command]:
        if offset >= len(body):
            raise SmppDecodeError(f"{label} ends before {spec.name}", **where)
        if spec.kind == "cstring":
            end = body.find(b"\0", offset)
            if end < 0:
                raise SmppDecodeError(f"{label} {spec.name} is not NUL-terminated", **where)
            # Latin-1 maps every octet, so an odd id still round-trips to the same text.
            params[spec.name] = body[offset:end].decode("latin-1")
            offset = end + 1
        elif spec.kind == "int8":
            params[spec.name] = body[offset]
            offset += 1
        else:
            size = body[offset]
            offset += 1
            if offset + size > len(body):
                raise SmppDecodeError(
                    f"{label} {spec.name} length {size} runs past the end of the PDU", **where
                )
            params[spec.name] = body[offset : offset + size]
            offset += size
    tlvs: list[tuple[int, bytes]] = []
    while offset < len(body):
        if len(body) - offset < _TLV_HEADER.size:
            raise SmppDecodeError(f"{label} has {len(body) - offset} stray octets", **where)
        tag, size = _TLV_HEADER.unpack_from(body, offset)
        offset += _TLV_HEADER.size
        if offset + size > len(body):
            raise SmppDecodeError(
                f"{label} TLV 0x{tag:04X} length {size} runs past the end of the PDU", **where
            )
        tlvs.append((tag, body[offset : offset + size]))
        offset += size
    return Pdu(command, sequence, status, params, tuple(tlvs))


async def read_pdu(reader: asyncio.StreamReader) -> Pdu:
    """The next PDU from the stream; ``asyncio.IncompleteReadError`` at its end."""
    head = await reader.readexactly(4)
    (length,) = struct.unpack(">I", head)
    if not HEADER_LENGTH <= length <= MAX_PDU_LENGTH:
        raise SmppFramingError(
            f"command_length {length} is outside {HEADER_LENGTH}..{MAX_PDU_LENGTH}"
        )
    return decode_pdu(head + await reader.readexactly(length - 4))


# --------------------------------------------------------------------------------------------
# command_status


class CommandStatus(IntEnum):
    ESME_ROK = 0x00000000
    ESME_RINVMSGLEN = 0x00000001
    ESME_RINVCMDLEN = 0x00000002
    ESME_RINVCMDID = 0x00000003
    ESME_RINVBNDSTS = 0x00000004
    ESME_RALYBND = 0x00000005
    ESME_RINVPRTFLG = 0x00000006
    ESME_RINVREGDLVFLG = 0x00000007
    ESME_RSYSERR = 0x00000008
    ESME_RINVSRCADR = 0x0000000A
    ESME_RINVDSTADR = 0x0000000B
    ESME_RINVMSGID = 0x0000000C
    ESME_RBINDFAIL = 0x0000000D
    ESME_RINVPASWD = 0x0000000E
    ESME_RINVSYSID = 0x0000000F
    ESME_RCANCELFAIL = 0x00000011
    ESME_RREPLACEFAIL = 0x00000013
    ESME_RMSGQFUL = 0x00000014
    ESME_RINVSERTYP = 0x00000015
    ESME_RINVNUMDESTS = 0x00000033
    ESME_RINVDLNAME = 0x00000034
    ESME_RINVDESTFLAG = 0x00000040
    ESME_RINVSUBREP = 0x00000042
    ESME_RINVESMCLASS = 0x00000043
    ESME_RCNTSUBDL = 0x00000044
    ESME_RSUBMITFAIL = 0x00000045
    ESME_RINVSRCTON = 0x00000048
    ESME_RINVSRCNPI = 0x00000049
    ESME_RINVDSTTON = 0x00000050
    ESME_RINVDSTNPI = 0x00000051
    ESME_RINVSYSTYP = 0x00000053
    ESME_RINVREPFLAG = 0x00000054
    ESME_RINVNUMMSGS = 0x00000055
    ESME_RTHROTTLED = 0x00000058
    ESME_RINVSCHED = 0x00000061
    ESME_RINVEXPIRY = 0x00000062
    ESME_RINVDFTMSGID = 0x00000063
    ESME_RX_T_APPN = 0x00000064
    ESME_RX_P_APPN = 0x00000065
    ESME_RX_R_APPN = 0x00000066
    ESME_RQUERYFAIL = 0x00000067
    ESME_RINVOPTPARSTREAM = 0x000000C0
    ESME_ROPTPARNOTALLWD = 0x000000C1
    ESME_RINVPARLEN = 0x000000C2
    ESME_RMISSINGOPTPARAM = 0x000000C3
    ESME_RINVOPTPARAMVAL = 0x000000C4
    ESME_RDELIVERYFAILURE = 0x000000FE
    ESME_RUNKNOWNERR = 0x000000FF
    # SMPP 5.0 codes that 3.4 SMSCs send too.
    ESME_RSERTYPUNAUTH = 0x00000100
    ESME_RPROHIBITED = 0x00000101
    ESME_RSERTYPUNAVAIL = 0x00000102
    ESME_RSERTYPDENIED = 0x00000103
    ESME_RINVDCS = 0x00000104
    ESME_RINVSRCADDRSUBUNIT = 0x00000105
    ESME_RINVDSTADDRSUBUNIT = 0x00000106


_S = CommandStatus
_TRANSIENT, _PERMANENT = True, False

# SMPP 3.4 table 5-2 (and 5.0 table 4-45): what each status says, and whether a later try of
# the same message can succeed.
_STATUS_INFO: dict[CommandStatus, tuple[str, bool]] = {
    _S.ESME_ROK: ("No error", _TRANSIENT),  # only an error inside a generic_nack
    _S.ESME_RINVMSGLEN: ("Message length is invalid", _PERMANENT),
    _S.ESME_RINVCMDLEN: ("Command length is invalid", _PERMANENT),
    _S.ESME_RINVCMDID: ("Invalid command ID", _PERMANENT),
    _S.ESME_RINVBNDSTS: ("Incorrect bind status for given command", _TRANSIENT),
    _S.ESME_RALYBND: ("ESME already in bound state", _TRANSIENT),
    _S.ESME_RINVPRTFLG: ("Invalid priority flag", _PERMANENT),
    _S.ESME_RINVREGDLVFLG: ("Invalid registered delivery flag", _PERMANENT),
    _S.ESME_RSYSERR: ("System error", _TRANSIENT),
    _S.ESME_RINVSRCADR: ("Invalid source address", _PERMANENT),
    _S.ESME_RINVDSTADR: ("Invalid destination address", _PERMANENT),
    _S.ESME_RINVMSGID: ("Message ID is invalid", _PERMANENT),
    _S.ESME_RBINDFAIL: ("Bind failed", _TRANSIENT),
    _S.ESME_RINVPASWD: ("Invalid password", _TRANSIENT),
    _S.ESME_RINVSYSID: ("Invalid system ID", _TRANSIENT),
    _S.ESME_RCANCELFAIL: ("Cancel SM failed", _PERMANENT),
    _S.ESME_RREPLACEFAIL: ("Replace SM failed", _PERMANENT),
    _S.ESME_RMSGQFUL: ("Message queue full", _TRANSIENT),
    _S.ESME_RINVSERTYP: ("Invalid service type", _PERMANENT),
    _S.ESME_RINVNUMDESTS: ("Invalid number of destinations", _PERMANENT),
    _S.ESME_RINVDLNAME: ("Invalid distribution list name", _PERMANENT),
    _S.ESME_RINVDESTFLAG: ("Destination flag is invalid", _PERMANENT),
    _S.ESME_RINVSUBREP: ("Invalid 'submit with replace' request", _PERMANENT),
    _S.ESME_RINVESMCLASS: ("Invalid esm_class field data", _PERMANENT),
    _S.ESME_RCNTSUBDL: ("Cannot submit to distribution list", _PERMANENT),
    _S.ESME_RSUBMITFAIL: ("submit_sm or submit_multi failed", _TRANSIENT),
    _S.ESME_RINVSRCTON: ("Invalid source address TON", _PERMANENT),
    _S.ESME_RINVSRCNPI: ("Invalid source address NPI", _PERMANENT),
    _S.ESME_RINVDSTTON: ("Invalid destination address TON", _PERMANENT),
    _S.ESME_RINVDSTNPI: ("Invalid destination address NPI", _PERMANENT),
    _S.ESME_RINVSYSTYP: ("Invalid system_type field", _TRANSIENT),
    _S.ESME_RINVREPFLAG: ("Invalid replace_if_present flag", _PERMANENT),
    _S.ESME_RINVNUMMSGS: ("Invalid number of messages", _PERMANENT),
    _S.ESME_RTHROTTLED: ("Throttling error (ESME has exceeded allowed message limits)", _TRANSIENT),
    _S.ESME_RINVSCHED: ("Invalid scheduled delivery time", _PERMANENT),
    _S.ESME_RINVEXPIRY: ("Invalid message validity period (expiry time)", _PERMANENT),
    _S.ESME_RINVDFTMSGID: ("Predefined message invalid or not found", _PERMANENT),
    _S.ESME_RX_T_APPN: ("ESME receiver temporary app error code", _TRANSIENT),
    _S.ESME_RX_P_APPN: ("ESME receiver permanent app error code", _PERMANENT),
    _S.ESME_RX_R_APPN: ("ESME receiver reject message error code", _PERMANENT),
    _S.ESME_RQUERYFAIL: ("query_sm request failed", _PERMANENT),
    _S.ESME_RINVOPTPARSTREAM: ("Error in the optional part of the PDU body", _PERMANENT),
    _S.ESME_ROPTPARNOTALLWD: ("Optional parameter not allowed", _PERMANENT),
    _S.ESME_RINVPARLEN: ("Invalid parameter length", _PERMANENT),
    _S.ESME_RMISSINGOPTPARAM: ("Expected optional parameter missing", _PERMANENT),
    _S.ESME_RINVOPTPARAMVAL: ("Invalid optional parameter value", _PERMANENT),
    _S.ESME_RDELIVERYFAILURE: ("Delivery failure", _TRANSIENT),
    _S.ESME_RUNKNOWNERR: ("Unknown error", _TRANSIENT),
    _S.ESME_RSERTYPUNAUTH: ("ESME not authorised to use specified service_type", _PERMANENT),
    _S.ESME_RPROHIBITED: ("ESME prohibited from using specified operation", _PERMANENT),
    _S.ESME_RSERTYPUNAVAIL: ("Specified service_type is unavailable", _TRANSIENT),
    _S.ESME_RSERTYPDENIED: ("Specified service_type is denied", _PERMANENT),
    _S.ESME_RINVDCS: ("Invalid data coding scheme", _PERMANENT),
    _S.ESME_RINVSRCADDRSUBUNIT: ("Source address subunit is invalid", _PERMANENT),
    _S.ESME_RINVDSTADDRSUBUNIT: ("Destination address subunit is invalid", _PERMANENT),
}

_CREDENTIAL_STATUSES = {_S.ESME_RBINDFAIL, _S.ESME_RINVPASWD, _S.ESME_RINVSYSID}


def status_reply(command: Command, status: int) -> str:
    """``"submit_sm_resp 0x0000000B ESME_RINVDSTADR: Invalid destination address"``."""
    prefix = f"{command.label} 0x{status:08X}"
    try:
        known = CommandStatus(status)
    except ValueError:
        if 0x400 <= status <= 0x4FF:
            return f"{prefix} (an SMSC vendor-specific status)"
        return f"{prefix} (a status SMPP 3.4 does not define)"
    return f"{prefix} {known.name}: {_STATUS_INFO[known][0]}"


def status_error(command: Command, status: int) -> ChannelError:
    """The outcome of a refusal: transient or permanent by the table; unknown is transient."""
    try:
        transient = _STATUS_INFO[CommandStatus(status)][1]
    except ValueError:
        transient = True
    error_class = TransientChannelError if transient else PermanentChannelError
    return error_class(status_reply(command, status), code=status)


# --------------------------------------------------------------------------------------------
# Addresses

TON_UNKNOWN, TON_INTERNATIONAL, TON_ALPHANUMERIC = 0x00, 0x01, 0x05
NPI_UNKNOWN, NPI_E164 = 0x00, 0x01

_E164 = re.compile(r"\+([1-9][0-9]{1,14})")
_DIGITS = re.compile(r"[0-9]{1,20}")
# Printable ASCII, not starting with a space or a "+" (a number with a typo, not a name).
_ALPHANUMERIC = re.compile(r"[!-*,-~][ -~]{0,10}")


@dataclass(frozen=True)
class Address:
    ton: int
    npi: int
    address: str


def source_address(sender: str) -> Address:
    """``source_addr`` with its TON and NPI; see the module's docstring. ``ValueError`` if
    ``sender`` is none of the forms."""
    if not sender:
        return Address(TON_UNKNOWN, NPI_UNKNOWN, "")
    if match := _E164.fullmatch(sender):
        return Address(TON_INTERNATIONAL, NPI_E164, match.group(1))
    if _DIGITS.fullmatch(sender):
        return Address(TON_UNKNOWN, NPI_E164, sender)
    if _ALPHANUMERIC.fullmatch(sender):
        return Address(TON_ALPHANUMERIC, NPI_UNKNOWN, sender)
    raise ValueError(
        f"SMS sender {sender!r} must be +digits, digits, "
        "or a name of up to 11 printable ASCII characters not starting with + or a space"
    )


def submit_sm_fields(
    source: Address,
    destination: Address,
    *,
    esm_class: int,
    data_coding: int,
    short_message: bytes,
    registered_delivery: int = 1,
) -> dict[str, Any]:
    """A submit_sm's parameters as ``encode_body`` takes them (the rest empty)."""
    return {
        "source_addr_ton": source.ton,
        "source_addr_npi": source.npi,
        "source_addr": source.address,
        "dest_addr_ton": destination.ton,
        "dest_addr_npi": destination.npi,
        "destination_addr": destination.address,
        "esm_class": esm_class,
        "registered_delivery": registered_delivery,
        "data_coding": data_coding,
        "short_message": short_message,
    }


def submit_sm_body(
    source: Address,
    destination: Address,
    *,
    esm_class: int,
    data_coding: int,
    short_message: bytes,
    registered_delivery: int = 1,
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """The body of a submit_sm, the bytes ``encode_body`` makes of ``submit_sm_fields`` (and
    ``tlvs``), written directly: the one PDU built per SMS part. SmppCodecError as it would."""
    if (
        tlvs
        or len(short_message) > 254
        or not 0 <= esm_class <= 0xFF
        or not 0 <= data_coding <= 0xFF
        or not 0 <= registered_delivery <= 0xFF
    ):
        # Let the general encoder say what is wrong.
        return encode_body(
            Command.SUBMIT_SM,
            submit_sm_fields(
                source,
                destination,
                esm_class=esm_class,
                data_coding=data_coding,
                short_message=short_message,
                registered_delivery=registered_delivery,
            ),
            tlvs,
        )
    # esm_class, protocol_id, priority_flag, schedule_delivery_time, validity_period,
    # registered_delivery, replace_if_present_flag, data_coding, sm_default_msg_id, sm_length.
    fields = bytes(
        (esm_class, 0, 0, 0, 0, registered_delivery, 0, data_coding, 0, len(short_message))
    )
    return (
        b"\0"  # service_type
        + _source_octets(source)
        + _address_octets(destination, "destination_addr")
        + fields
        + short_message
    )


def _address_octets(address: Address, name: str) -> bytes:
    """An address's TON, NPI and C-octet string, checked as ``encode_body`` checks it."""
    cstring = _encode_cstring(Command.SUBMIT_SM.label, _ADDRESS_FIELD[name], address.address)
    return bytes((address.ton, address.npi)) + cstring


@lru_cache(maxsize=16)
def _source_octets(address: Address) -> bytes:
    """The same few senders for every message: encoded once each."""
    return _address_octets(address, "source_addr")


_ADDRESS_FIELD = {spec.name: spec for spec in _SHORT_MESSAGE_FIELDS}


def destination_address(to: str) -> Address:
    if match := _E164.fullmatch(to):
        return Address(TON_INTERNATIONAL, NPI_E164, match.group(1))
    raise PermanentChannelError(f"SMS recipient {to!r} is not an E.164 number like +79161234567")


# --------------------------------------------------------------------------------------------
# Delivery receipts

ESM_CLASS_TYPE_MASK = 0x3C
RECEIPT_TYPES = {0x04, 0x20}  # SMSC delivery receipt; intermediate delivery notification

# SMPP 3.4 5.2.28 message_state, in the receipt text's spelling (appendix B).
MESSAGE_STATES = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}

_RECEIPT_FIELD = re.compile(r"(?i)\b(id|sub|dlvrd|submit date|done date|stat|err):(\S*)")
_RECEIPT_TEXT = re.compile(r"(?i)\btext:")
# The ``err:`` field, or the free ``text:`` field that ends the ones to read, whichever first.
_RECEIPT_ERROR = re.compile(r"(?i)\b(?:err:(\S*)|text:)")


@dataclass(frozen=True)
class DeliveryReceipt:
    """What the SMSC reported about a message (one part of a concatenated one).

    ``peer_message_id`` is the id the SMSC gave in its submit_sm_resp; ``state`` is the final
    (or intermediate) state as the receipt text spells it: ``DELIVRD``, ``UNDELIV``,
    ``EXPIRED``, ``REJECTD``, ``DELETED``, ``ACCEPTD``, ``ENROUTE`` or ``UNKNOWN``; ``error``
    the ``err:`` field (network specific), if any. ``sent_here``: the id is one that this
    channel was given in a submit_sm_resp lately (the part may not be recorded yet).
    """

    peer_message_id: str
    state: str
    error: str | None
    raw_text: str
    sent_here: bool = False


ReceiptHandler = Callable[[DeliveryReceipt], Awaitable[None]]


def parse_receipt_text(text: str) -> dict[str, str]:
    """The ``key:value`` fields of a receipt text (SMPP 3.4 appendix B), keys lower-case,
    up to its free ``text:`` field."""
    head = _RECEIPT_TEXT.split(text, maxsplit=1)[0]
    return {key.lower(): value for key, value in _RECEIPT_FIELD.findall(head)}


def is_receipt(pdu: Pdu) -> bool:
    return (
        pdu.command is Command.DELIVER_SM
        and pdu.number("esm_class") & ESM_CLASS_TYPE_MASK in RECEIPT_TYPES
    )


def parse_receipt(pdu: Pdu, sent_here: Container[str] = ()) -> DeliveryReceipt | None:
    """The receipt a deliver_sm carries, or None if it names no message; ``sent_here`` the
    peer ids this client was given lately.

    The receipted_message_id and message_state TLVs win over the text, whose layout is only
    the specification's suggestion.
    """
    raw = pdu.octets("short_message") or pdu.tlv(Tlv.MESSAGE_PAYLOAD) or b""
    if pdu.number("data_coding") == UCS2_DATA_CODING:
        text = raw.decode("utf-16-be", errors="replace")
    else:
        text = raw.decode("latin-1")
    receipted = pdu.tlv(Tlv.RECEIPTED_MESSAGE_ID)
    state_tlv = pdu.tlv(Tlv.MESSAGE_STATE)
    if receipted and state_tlv is not None and len(state_tlv) == 1:
        # Both TLVs: of the text only ``err:`` is wanted, found by one search (parsing every
        # field took three times as long, ~12 µs per receipt).
        found = _RECEIPT_ERROR.search(text)
        fields = {} if found is None or found.group(1) is None else {"err": found.group(1)}
    else:
        fields = parse_receipt_text(text)
    peer_message_id = (
        receipted.rstrip(b"\0").decode("latin-1") if receipted else fields.get("id", "")
    )
    if not peer_message_id:
        return None
    if state_tlv is not None and len(state_tlv) == 1:
        state = MESSAGE_STATES.get(state_tlv[0], f"STATE{state_tlv[0]}")
    else:
        state = fields.get("stat", "").upper() or "UNKNOWN"
    error = fields.get("err")
    network_error = pdu.tlv(Tlv.NETWORK_ERROR_CODE)
    if error is None and network_error is not None and len(network_error) == 3:
        error = f"{network_error[0]}:{int.from_bytes(network_error[1:], 'big')}"
    return DeliveryReceipt(peer_message_id, state, error, text, peer_message_id in sent_here)


# --------------------------------------------------------------------------------------------
# Inbound texts (mobile-originated)

IA5_DATA_CODING = 0x01
LATIN1_DATA_CODING = 0x03


@dataclass(frozen=True)
class InboundSms:
    """A text a handset sent (a deliver_sm that is not a receipt): from ``source`` (as the
    SMSC gave it, ``source_ton`` its TON) to ``destination`` (one of our senders), decoded."""

    source: str
    source_ton: int
    destination: str
    text: str


InboundHandler = Callable[[InboundSms], Awaitable[None]]


def parse_inbound(pdu: Pdu) -> InboundSms:
    """The text of a mobile-originated deliver_sm: ``short_message`` or else
    ``message_payload``, without a UDH, decoded by ``data_coding`` (GSM 03.38, UCS-2, IA5,
    Latin-1; another coding is read as Latin-1)."""
    raw = pdu.octets("short_message") or pdu.tlv(Tlv.MESSAGE_PAYLOAD) or b""
    if pdu.number("esm_class") & ESM_CLASS_UDHI and raw:
        raw = raw[raw[0] + 1 :]
    coding = pdu.number("data_coding")
    if coding == UCS2_DATA_CODING:
        text = raw.decode("utf-16-be", errors="replace")
    elif coding == GSM7_DATA_CODING:
        try:
            text = decode_payload(raw, data_coding=GSM7_DATA_CODING)
        except ValueError:  # eight-bit octets: an SMSC that sends its default alphabet as Latin-1
            text = raw.decode("latin-1")
    elif coding == IA5_DATA_CODING:
        text = raw.decode("ascii", errors="replace")
    else:
        text = raw.decode("latin-1")
    return InboundSms(
        source=pdu.text("source_addr"),
        source_ton=pdu.number("source_addr_ton"),
        destination=pdu.text("destination_addr"),
        text=text,
    )


# --------------------------------------------------------------------------------------------
# Configuration


Concatenation = Literal["udh", "payload"]


@dataclass(frozen=True)
class SmppConfig:
    host: str
    port: int = 2775
    system_id: str = ""
    password: str = ""
    system_type: str = ""
    source_addr: str = ""
    """The sender; see the module's docstring for how its form chooses TON and NPI."""
    concatenation: Concatenation = "udh"
    """How a text longer than one SMS goes: ``udh``, parts with a concatenation header each;
    ``payload``, one submit_sm with the whole text in ``message_payload`` (the SMSC splits)."""
    window: int = 10
    enquire_link_interval: float = 30.0
    timeout: float = 10.0
    """Seconds to wait for a connection, and for each response PDU."""
    reconnect_delay: float = 1.0
    reconnect_max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("SMPP window must be at least 1")
        if self.concatenation not in ("udh", "payload"):
            raise ValueError("SMPP concatenation must be udh or payload")
        if min(self.enquire_link_interval, self.timeout, self.reconnect_delay) <= 0:
            raise ValueError("SMPP intervals and timeouts must be positive")
        # The C-octet string sizes of bind_transceiver (SMPP 3.4 4.1.5), NUL excluded.
        for name, limit in (("system_id", 15), ("password", 8), ("system_type", 12)):
            value = getattr(self, name)
            if not value.isascii() or len(value) > limit:
                raise ValueError(f"SMPP {name} must be at most {limit} ASCII characters")
        source_address(self.source_addr)

    @classmethod
    def from_settings(cls, settings: Settings) -> SmppConfig:
        if not settings.smpp_host:
            raise ValueError("RASSYLKA_SMPP_HOST is not set")
        return cls(
            host=settings.smpp_host,
            port=settings.smpp_port,
            system_id=settings.smpp_system_id,
            password=settings.smpp_password.get_secret_value(),
            system_type=settings.smpp_system_type,
            source_addr=settings.smpp_source_addr,
            concatenation=settings.smpp_concatenation,
            window=settings.smpp_window,
            enquire_link_interval=settings.smpp_enquire_link_interval,
            timeout=settings.smpp_timeout,
        )


# --------------------------------------------------------------------------------------------
# One connection

# Closing is a courtesy to the SMSC; none of its steps may hold up shutdown longer than this.
_UNBIND_TIMEOUT = 2.0
_CLOSE_STEP_TIMEOUT = 1.0
# A connection that stayed up this long was healthy: the reconnect backoff starts afresh.
_STABLE_CONNECTION = 60.0
# How often one part may find its connection gone before it was written, within one send.
_WRITE_ATTEMPTS = 3
# The most octets taken from the socket at once (many PDUs: a window's responses and receipts).
_READ_SIZE = 256 * 1024
_LENGTH = struct.Struct(">I")
# The body of each response without parameters (an empty message_id, or nothing).
_EMPTY_BODIES = {command: encode_body(command, {}) for command in Command if command.is_response}
# Peer ids of accepted parts remembered, so a receipt can say its part was sent here.
_REMEMBER_SENT = 50_000
# Distinct senders whose address is kept read (one per project that has its own).
_REMEMBER_SENDERS = 1024


_Delivered = TypeVar("_Delivered", DeliveryReceipt, InboundSms)


class _NotWritten(Exception):
    """The connection had ended before the request was written: it may go on another one."""


@dataclass
class _Waiter:
    command: Command
    future: asyncio.Future[Pdu]


def _time_out(future: asyncio.Future[Pdu]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class _Session:
    """One TCP connection: its reader task, the requests awaiting responses, enquire_link."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        name: str,
        on_receipt: ReceiptHandler | None,
        on_inbound: InboundHandler | None = None,
        sent_here: OrderedDict[str, None] | None = None,
    ) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self._on_receipt = on_receipt
        self._on_inbound = on_inbound
        # The peer ids given in submit_sm_resp lately, oldest first: noted as each response is
        # read, so a receipt read right after it (even in the same chunk) is known as ours.
        self._sent_here: OrderedDict[str, None] = OrderedDict() if sent_here is None else sent_here
        self._waiters: dict[int, _Waiter] = {}
        # PDUs written in this turn of the event loop, sent together by one ``_flush``.
        self._outgoing: list[bytes] = []
        self._sequence = 0
        self.bound = False
        self.bound_at = 0.0
        self.ending: str | None = None
        """Why the connection is ending, once it is."""
        self.on_lost: Callable[[_Session], None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        # Receipts handed over whose handler has not finished: answered when it does.
        self._receipts: set[asyncio.Future[None]] = set()
        self._reader_task = asyncio.create_task(self._read(), name=f"smpp-reader-{name}")

    @property
    def usable(self) -> bool:
        return self.bound and self.ending is None

    def start(
        self, *, interval: float, timeout: float, on_lost: Callable[[_Session], None]
    ) -> None:
        """Bound: accept submits, send enquire_link every ``interval``."""
        self.bound = True
        self.bound_at = asyncio.get_running_loop().time()
        self.on_lost = on_lost
        self._keepalive = asyncio.create_task(
            self._keep_alive(interval, timeout), name=f"smpp-enquire-link-{self.name}"
        )

    async def request(
        self,
        command: Command,
        params: Mapping[str, ParamValue] | None = None,
        *,
        body: bytes | None = None,
        within: float,
        bound_only: bool = True,
    ) -> Pdu:
        """Send a request and return the PDU answering it (its response or a generic_nack).

        ``body`` is the request's body already encoded (:func:`encode_body`), else ``params``
        are encoded here. Raises ``_NotWritten`` if the connection is no longer open (or not
        bound, for ``bound_only``), TransientChannelError if it ends or ``within`` seconds pass
        first.
        """
        if self.ending is not None or (bound_only and not self.bound):
            raise _NotWritten(self.ending or "not bound")
        self._sequence = self._sequence % 0x7FFFFFFF + 1
        sequence = self._sequence
        if body is None:
            body = encode_body(command, params or {})
        data = pack_pdu(command, body, sequence=sequence)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(command, loop.create_future())
        self._waiters[sequence] = waiter
        # A timer that fails the waiter, not ``asyncio.timeout``: that cost ~10 µs per
        # submit_sm (its context, rescheduling, uncancelling), a tenth of the transport's time.
        timer = loop.call_later(within, _time_out, waiter.future)
        try:
            self._write(data)
            transport = self._writer.transport
            if transport.get_write_buffer_size() >= transport.get_write_buffer_limits()[1]:
                async with asyncio.timeout(within):
                    await self._writer.drain()  # the socket's buffer is full
            return await waiter.future
        except TimeoutError:
            raise TransientChannelError(
                f"no {command.response.label} within {within:g} s"
            ) from None
        except ConnectionError as error:
            raise self._lost_error(command, f"connection lost: {_describe(error)}") from None
        finally:
            timer.cancel()
            self._waiters.pop(sequence, None)

    def abort(self, reason: str) -> None:
        """End the connection now, without unbinding."""
        if self.ending is None:
            self.ending = reason
        self._reader_task.cancel()

    async def unbind(self, within: float) -> None:
        """Unbind politely, for at most ``within`` seconds; in-flight responses may still come."""
        if not self.usable:
            return
        self.bound = False  # no new submits
        with contextlib.suppress(_NotWritten, TransientChannelError):
            await self.request(Command.UNBIND, within=within, bound_only=False)

    async def shutdown(self, grace: float = _CLOSE_STEP_TIMEOUT) -> None:
        """Close the connection: receipts in hand get ``grace`` to finish, then all stops."""
        if self._receipts:
            await asyncio.wait(set(self._receipts), timeout=grace)
        self.abort(self.ending or "closed")
        await asyncio.wait({self._reader_task}, timeout=grace)
        for pending in list(self._receipts):
            pending.cancel()
        try:
            async with asyncio.timeout(grace):
                await self._writer.wait_closed()
        except (TimeoutError, OSError):
            self._writer.transport.abort()

    def _lost_error(self, command: Command, reason: str) -> TransientChannelError:
        return TransientChannelError(
            f"no {command.response.label}: {reason}; the SMSC may or may not have taken it"
        )

    async def _read(self) -> None:
        """Read what has arrived, all of it at once, and handle every whole PDU in it."""
        reason = "the SMSC closed the connection"
        buffer = bytearray()
        try:
            while self.ending is None:
                chunk = await self._reader.read(_READ_SIZE)
                if not chunk:
                    return
                buffer += chunk
                offset = 0
                while self.ending is None and len(buffer) - offset >= 4:
                    (length,) = _LENGTH.unpack_from(buffer, offset)
                    if not HEADER_LENGTH <= length <= MAX_PDU_LENGTH:
                        error = SmppFramingError(
                            f"command_length {length} is outside {HEADER_LENGTH}..{MAX_PDU_LENGTH}"
                        )
                        reason = f"unreadable data from the SMSC: {error}"
                        logger.warning("SMPP %s: %s", self.name, reason)
                        return
                    if len(buffer) - offset < length:
                        break
                    data = bytes(buffer[offset : offset + length])
                    offset += length
                    self._handle(data)
                del buffer[:offset]
        except OSError as error:
            reason = f"connection lost: {_describe(error)}"
        finally:
            self._end(reason)

    def _handle(self, data: bytes) -> None:
        try:
            pdu = decode_pdu(data)
        except SmppDecodeError as error:
            self._malformed(error)
            return
        try:
            self._dispatch(pdu)
        except Exception:  # a bug here must not take the connection down with it
            logger.exception("SMPP %s: cannot handle %s", self.name, pdu)

    def _end(self, reason: str) -> None:
        if self.ending is None:
            self.ending = reason
        for waiter in self._waiters.values():
            if not waiter.future.done():
                waiter.future.set_exception(self._lost_error(waiter.command, self.ending))
        if self._keepalive is not None:
            self._keepalive.cancel()
        self._flush()
        self._writer.close()
        if self.on_lost is not None:
            self.on_lost(self)

    def _send(self, pdu: Pdu) -> None:
        if self.ending is None and not self._writer.is_closing():
            self._write(encode_pdu(pdu))

    def _write(self, data: bytes) -> None:
        """Queue ``data`` for the socket: what is queued in one turn of the loop goes out in
        one write (a window of submits, a burst of deliver_sm_resp), not a system call each."""
        self._outgoing.append(data)
        if len(self._outgoing) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        if not self._outgoing:
            return
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        if not self._writer.is_closing():
            self._writer.write(data)

    def _respond(self, request: Pdu, status: int = CommandStatus.ESME_ROK) -> None:
        """Answer ``request`` with its response and no parameters (as ``encode_pdu`` would
        encode it, without building the PDU: a deliver_sm_resp per receipt)."""
        if self.ending is None and not self._writer.is_closing():
            response = request.command.response
            body = b"" if status else _EMPTY_BODIES[response]
            self._write(pack_pdu(response, body, sequence=request.sequence, status=status))

    def _dispatch(self, pdu: Pdu) -> None:
        if pdu.command.is_response:
            waiter = self._waiters.get(pdu.sequence)
            if waiter is None or waiter.future.done():
                logger.warning(
                    "SMPP %s: %s %s for no request awaiting one (late?); ignored",
                    self.name,
                    pdu.command.label,
                    pdu.sequence,
                )
                return
            waiter.future.set_result(pdu)
            if pdu.command is Command.SUBMIT_SM_RESP and not pdu.status:
                sent = self._sent_here
                sent[pdu.text("message_id")] = None
                if len(sent) > _REMEMBER_SENT:
                    sent.popitem(last=False)
        elif pdu.command is Command.ENQUIRE_LINK:
            self._respond(pdu)
        elif pdu.command is Command.DELIVER_SM:
            self._deliver(pdu)
        elif pdu.command is Command.UNBIND:
            self._respond(pdu)
            self.ending = "the SMSC unbound"
            logger.info("SMPP %s: the SMSC unbound", self.name)
        else:
            # submit_sm or a bind: requests an SMSC has no business sending to an ESME.
            self._send(Pdu(Command.GENERIC_NACK, pdu.sequence, CommandStatus.ESME_RINVCMDID))

    def _malformed(self, error: SmppDecodeError) -> None:
        logger.warning("SMPP %s: malformed PDU from the SMSC: %s", self.name, error)
        command_id, sequence = error.command_id, error.sequence
        if command_id is None or sequence is None:
            return
        if command_id & RESPONSE_BIT:
            waiter = self._waiters.get(sequence)
            if waiter is not None and not waiter.future.done():
                waiter.future.set_exception(
                    self._lost_error(waiter.command, f"unreadable response: {error}")
                )
        elif command_id != ALERT_NOTIFICATION:
            self._send(Pdu(Command.GENERIC_NACK, sequence, error.status))

    def _deliver(self, pdu: Pdu) -> None:
        if not is_receipt(pdu):
            self._inbound(pdu)
            return
        receipt = parse_receipt(pdu, self._sent_here)
        if receipt is None:
            logger.info(
                "SMPP %s: deliver_sm (esm_class 0x%02X) from %r without a receipt to hand over;"
                " acknowledged",
                self.name,
                pdu.number("esm_class"),
                pdu.text("source_addr"),
            )
            self._respond(pdu)
            return
        if self._on_receipt is None:
            self._respond(pdu)
            return
        self._hand_over(pdu, self._on_receipt, receipt)

    def _inbound(self, pdu: Pdu) -> None:
        """A text from a handset: to ``on_inbound``; its text is never logged (privacy)."""
        if self._on_inbound is None:
            logger.info(
                "SMPP %s: an inbound text from %r to %r; acknowledged",
                self.name,
                pdu.text("source_addr"),
                pdu.text("destination_addr"),
            )
            self._respond(pdu)
            return
        self._hand_over(pdu, self._on_inbound, parse_inbound(pdu))

    def _hand_over(
        self, pdu: Pdu, handler: Callable[[_Delivered], Awaitable[None]], what: _Delivered
    ) -> None:
        """Answer ``pdu`` once the awaitable ``handler`` returns for ``what`` is done (not
        before: what the process did not get to store, the SMSC delivers again)."""
        try:
            pending = asyncio.ensure_future(handler(what))
        except Exception:
            self._handler_failed(pdu, what)
            return
        self._receipts.add(pending)
        pending.add_done_callback(lambda done: self._handed_over(pdu, what, done))

    def _handed_over(
        self, pdu: Pdu, what: DeliveryReceipt | InboundSms, done: asyncio.Future[None]
    ) -> None:
        """The handler finished with ``what``: answer its deliver_sm (not if cancelled: the
        connection is closing, and the SMSC delivers it again)."""
        self._receipts.discard(done)
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            self._handler_failed(pdu, what, error)
            return
        self._respond(pdu)

    def _handler_failed(
        self, pdu: Pdu, what: DeliveryReceipt | InboundSms, error: BaseException | None = None
    ) -> None:
        if isinstance(what, DeliveryReceipt):
            handled = f"on_receipt failed for {what.peer_message_id}"
        else:  # never the text (privacy)
            handled = f"on_inbound failed for the text from {what.source!r}"
        logger.error(
            "SMPP %s: %s; answered ESME_RX_T_APPN so the SMSC retries",
            self.name,
            handled,
            exc_info=error or True,
        )
        self._respond(pdu, CommandStatus.ESME_RX_T_APPN)

    async def _keep_alive(self, interval: float, within: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.request(Command.ENQUIRE_LINK, within=within)
            except _NotWritten:
                return
            except TransientChannelError as error:
                logger.warning("SMPP %s: enquire_link failed (%s)", self.name, error.reply)
                self.abort(f"enquire_link failed: {error.reply}")
                return


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


# --------------------------------------------------------------------------------------------
# The channel


@dataclass
class _SendState:
    """What one ``send`` learnt: once connecting failed, its other messages fail the same."""

    failure: ChannelError | None = None


class SmppChannel:
    """The ``Channel`` for SMS over SMPP 3.4; ``on_receipt`` gets every delivery receipt,
    ``on_inbound`` every other deliver_sm (a text a handset sent)."""

    kind = ChannelKind.SMS

    def __init__(
        self,
        config: SmppConfig,
        *,
        on_receipt: ReceiptHandler | None = None,
        on_inbound: InboundHandler | None = None,
    ) -> None:
        self._config = config
        self._on_receipt = on_receipt
        self._on_inbound = on_inbound
        self._source = source_address(config.source_addr)
        # The projects' own senders, each read once (a few per deployment).
        self._senders: dict[str, Address] = {}
        self._window = asyncio.Semaphore(config.window)
        self._session: _Session | None = None
        self._attempt: asyncio.Task[_Session] | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._failures = 0
        self._next_attempt = 0.0
        self._last_error: TransientChannelError | None = None
        self._closing = False
        self._connections = 0
        # The concatenation reference of the next long message; random so that a restart does
        # not reuse the references just sent to the same handsets.
        self._reference = random.randrange(256)
        # The peer ids lately given in submit_sm_resp, oldest first (see DeliveryReceipt).
        self._sent: OrderedDict[str, None] = OrderedDict()

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        state = _SendState()
        return await send_each(
            messages, lambda message: self._send_one(message, state), name="smpp"
        )

    async def close(self) -> None:
        """Unbind and close the connection (bounded, never hangs); a later ``send`` reconnects.

        Submits still awaiting their response when the connection closes are transient.
        """
        self._closing = True
        try:
            tasks = {task for task in (self._reconnect, self._attempt) if task is not None}
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=_CLOSE_STEP_TIMEOUT)
            session, self._session = self._session, None
            if session is not None:
                await session.unbind(min(_UNBIND_TIMEOUT, self._config.timeout))
                await session.shutdown()
        finally:
            self._closing = False
            self._reconnect = None
            self._failures = 0
            self._next_attempt = 0.0
            self._last_error = None

    # -- messages

    async def _send_one(self, message: OutboundMessage, state: _SendState) -> Outcome:
        try:
            parts, segments = self._compose(message)
        except ChannelError as error:
            return error
        total = len(parts)
        part_ids: list[str] = []
        for number, body in enumerate(parts, start=1):
            refusal: ChannelError | None
            try:
                response = await self._submit(body, state)
            except ChannelError as error:
                refusal = error
            else:
                refusal = _refusal(response)
            if refusal is not None:
                if part_ids:
                    logger.warning(
                        "SMS %s: part %d of %d failed after the SMSC took %s",
                        message.id,
                        number,
                        total,
                        ", ".join(part_ids),
                    )
                if total > 1:
                    reply = f"part {number} of {total}: {refusal.reply}"
                    refusal = type(refusal)(reply, code=refusal.code)
                return refusal
            part_ids.append(response.text("message_id"))
        return Accepted(
            peer_message_id=part_ids[0] or None,
            reply=_ACCEPTED_REPLY,
            parts=segments,
            part_ids=tuple(part_ids),
        )

    def _compose(self, message: OutboundMessage) -> tuple[list[bytes], int]:
        """The submit_sm body of each part, encoded, and how many SMS the text costs (the
        same number but in ``payload`` mode, where one submit_sm carries them all);
        PermanentChannelError if there can be none."""
        if message.kind is not ChannelKind.SMS:
            raise PermanentChannelError(f"an {message.kind} message cannot go by SMS")
        destination = destination_address(message.to)
        source = self._source_of(message)
        if not message.text:
            raise PermanentChannelError("the SMS text is empty")
        try:
            encoded = encode_sms(message.text)
        except SmsTooLongError as error:
            raise PermanentChannelError(str(error)) from None
        except ValueError as error:  # a lone surrogate
            raise PermanentChannelError(f"the text cannot go as SMS: {error}") from None
        segments = len(encoded.parts)
        if encoded.concatenated and self._config.concatenation == "payload":
            payload = b"".join(encoded.parts)
            try:
                body = submit_sm_body(
                    source,
                    destination,
                    esm_class=ESM_CLASS_DEFAULT,
                    data_coding=encoded.data_coding,
                    short_message=b"",
                    tlvs=((Tlv.MESSAGE_PAYLOAD, payload),),
                )
            except SmppCodecError as error:
                raise PermanentChannelError(f"cannot build submit_sm: {error}") from None
            return [body], segments
        reference = 0
        if encoded.concatenated:
            reference = self._reference
            self._reference = (self._reference + 1) % 256
        try:
            return [
                submit_sm_body(
                    source,
                    destination,
                    esm_class=encoded.esm_class,
                    data_coding=encoded.data_coding,
                    short_message=short_message,
                )
                for short_message in encoded.short_messages(reference=reference)
            ], segments
        except SmppCodecError as error:
            raise PermanentChannelError(f"cannot build submit_sm: {error}") from None

    def _source_of(self, message: OutboundMessage) -> Address:
        """The message's own sender (its project's) read once per distinct sender, else the
        configured one."""
        sender = message.source
        if sender is None:
            return self._source
        address = self._senders.get(sender)
        if address is None:
            try:
                address = source_address(sender)
            except ValueError as error:
                raise PermanentChannelError(str(error)) from None
            if len(self._senders) < _REMEMBER_SENDERS:
                self._senders[sender] = address
        return address

    async def _submit(self, body: bytes, state: _SendState) -> Pdu:
        """One part's submit_sm, answered; the caller reads the verdict from the answer."""
        for _ in range(_WRITE_ATTEMPTS):
            async with self._window:
                session = await self._session_for(state)
                try:
                    response = await session.request(
                        Command.SUBMIT_SM, body=body, within=self._config.timeout
                    )
                except _NotWritten:
                    continue
            if response.status == CommandStatus.ESME_RINVBNDSTS:
                session.abort("the SMSC says this connection is not bound")
            return response
        raise TransientChannelError("the connection to the SMSC kept ending before submit_sm")

    # -- the connection

    async def _session_for(self, state: _SendState) -> _Session:
        if state.failure is not None:
            raise type(state.failure)(state.failure.reply, code=state.failure.code)
        try:
            return await self._bound()
        except ChannelError as error:
            state.failure = error
            raise type(error)(error.reply, code=error.code) from None

    async def _bound(self) -> _Session:
        """A bound connection: the current one, the attempt under way, or a new attempt."""
        loop = asyncio.get_running_loop()
        while True:
            if self._closing:
                raise TransientChannelError("the SMPP channel is closing")
            session = self._session
            if session is not None and session.usable:
                return session
            attempt = self._attempt
            if attempt is None:
                wait = self._next_attempt - loop.time()
                if wait > self._config.timeout:
                    last = self._last_error
                    reply = last.reply if last is not None else "not connected to the SMSC"
                    raise TransientChannelError(
                        f"{reply} (next attempt to connect in {wait:.0f} s)",
                        code=last.code if last is not None else None,
                    )
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                attempt = asyncio.create_task(self._connect(), name="smpp-connect")
                self._attempt = attempt
                attempt.add_done_callback(self._attempt_done)
            try:
                return await asyncio.shield(attempt)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if attempt.cancelled() and (current is None or not current.cancelling()):
                    raise TransientChannelError("the SMPP channel is closing") from None
                raise

    def _attempt_done(self, attempt: asyncio.Task[_Session]) -> None:
        if self._attempt is attempt:
            self._attempt = None
        if not attempt.cancelled():
            attempt.exception()  # its waiters have it; mark it retrieved

    async def _connect(self) -> _Session:
        config = self._config
        self._connections += 1
        name = f"{config.host}:{config.port}#{self._connections}"
        try:
            try:
                async with asyncio.timeout(config.timeout):
                    reader, writer = await asyncio.open_connection(config.host, config.port)
            except OSError as error:  # refused, unreachable, timed out
                raise TransientChannelError(
                    f"cannot connect to the SMSC at {config.host}:{config.port}: {_describe(error)}"
                ) from None
            session = _Session(
                reader,
                writer,
                name=name,
                on_receipt=self._on_receipt,
                on_inbound=self._on_inbound,
                sent_here=self._sent,
            )
            try:
                response = await session.request(
                    Command.BIND_TRANSCEIVER,
                    {
                        "system_id": config.system_id,
                        "password": config.password,
                        "system_type": config.system_type,
                        "interface_version": INTERFACE_VERSION,
                    },
                    within=config.timeout,
                    bound_only=False,
                )
                if response.status != CommandStatus.ESME_ROK or response.command is not (
                    Command.BIND_TRANSCEIVER_RESP
                ):
                    raise self._bind_refused(response)
            except BaseException:
                await session.shutdown()
                raise
        except TransientChannelError as error:
            self._failures += 1
            delay = self._backoff()
            self._last_error = error
            logger.warning("SMPP %s: %s; next attempt in %.1f s", name, error.reply, delay)
            raise
        session.start(
            interval=config.enquire_link_interval, timeout=config.timeout, on_lost=self._lost
        )
        self._session = session
        self._last_error = None
        logger.info("SMPP %s: bound as %r", name, config.system_id)
        return session

    def _bind_refused(self, response: Pdu) -> TransientChannelError:
        reply = f"the SMSC refused the bind: {status_reply(response.command, response.status)}"
        if response.status in _CREDENTIAL_STATUSES:
            reply += (
                f" (system_id {self._config.system_id!r}; check RASSYLKA_SMPP_SYSTEM_ID"
                " and RASSYLKA_SMPP_PASSWORD)"
            )
        return TransientChannelError(reply, code=response.status)

    def _backoff(self) -> float:
        """Schedule the next connection attempt after ``_failures`` failures; its delay."""
        config = self._config
        delay = min(
            config.reconnect_max_delay, config.reconnect_delay * 2.0 ** (self._failures - 1)
        )
        self._next_attempt = asyncio.get_running_loop().time() + delay
        return delay

    def _lost(self, session: _Session) -> None:
        """The reader saw ``session`` end: reconnect in the background, unless closing."""
        if self._session is not session:
            return
        self._session = None
        if asyncio.get_running_loop().time() - session.bound_at >= _STABLE_CONNECTION:
            self._failures = 0
        self._failures += 1
        delay = self._backoff()
        self._last_error = TransientChannelError(f"connection to the SMSC lost: {session.ending}")
        if self._closing:
            return
        logger.warning(
            "SMPP %s: connection lost (%s); reconnecting in %.1f s",
            session.name,
            session.ending,
            delay,
        )
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.create_task(self._reconnect_loop(), name="smpp-reconnect")

    async def _reconnect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            session = self._session
            if session is not None and session.usable:
                return
            wait = self._next_attempt - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            with contextlib.suppress(ChannelError):
                await self._bound()


_ACCEPTED_REPLY = status_reply(Command.SUBMIT_SM_RESP, CommandStatus.ESME_ROK)


def _refusal(response: Pdu) -> ChannelError | None:
    if response.command is Command.GENERIC_NACK or response.status != CommandStatus.ESME_ROK:
        return status_error(response.command, response.status)
    if response.command is not Command.SUBMIT_SM_RESP:
        return TransientChannelError(f"the SMSC answered submit_sm with {response.command.label}")
    return None
