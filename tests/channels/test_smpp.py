"""The SMPP transport against a real SMSC: ``tests/peers/smsc.js`` on npm's smpp server (Node).

The SMSC's verdict depends on the destination's last two digits (``…11`` invalid destination,
``…22`` throttled, ``…33`` answered after 30 ms, ``…44`` never answered, ``…55`` connection
dropped, ``…88`` unbind instead of an answer; the full list is in smsc.js). It logs every PDU it
sees as a JSON line, which the tests read back. A few cases that server cannot stage (malformed
PDUs, an SMSC that ignores enquire_link) use a scripted SMSC in Python on this module's codec,
which the codec tests check byte by byte.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from rassylka.channels.base import (
    Accepted,
    ChannelKind,
    OutboundMessage,
    Outcome,
    PermanentChannelError,
    TransientChannelError,
)
from rassylka.channels.smpp import (
    Address,
    Command,
    CommandStatus,
    DeliveryReceipt,
    InboundHandler,
    Pdu,
    SmppChannel,
    SmppCodecError,
    SmppConfig,
    SmppDecodeError,
    SmppFramingError,
    Tlv,
    decode_pdu,
    destination_address,
    encode_body,
    encode_pdu,
    pack_pdu,
    parse_receipt,
    parse_receipt_text,
    read_pdu,
    source_address,
    status_error,
    status_reply,
    submit_sm_body,
    submit_sm_fields,
)
from rassylka.channels.sms_text import MAX_PARTS, decode_payload
from rassylka.config import Settings
from smsc_peer import PASSWORD, SYSTEM_ID, Event, Smsc, start_smsc

SENDER = "Rassylka"


# --------------------------------------------------------------------------------------------
# The Node SMSC


@pytest.fixture
async def smsc() -> AsyncIterator[Smsc]:
    peer = await start_smsc()
    yield peer
    await peer.stop()


class Receipts(list[DeliveryReceipt]):
    async def __call__(self, receipt: DeliveryReceipt) -> None:
        self.append(receipt)


MakeChannel = Callable[..., SmppChannel]


@pytest.fixture
async def make_channel() -> AsyncIterator[MakeChannel]:
    channels: list[SmppChannel] = []

    def make(
        port: int,
        *,
        on_receipt: Callable[[DeliveryReceipt], Awaitable[None]] | None = None,
        on_inbound: InboundHandler | None = None,
        **options: Any,
    ) -> SmppChannel:
        config = SmppConfig(
            **{
                "host": "127.0.0.1",
                "port": port,
                "system_id": SYSTEM_ID,
                "password": PASSWORD,
                "source_addr": SENDER,
                "timeout": 2.0,
                "reconnect_delay": 0.05,
                "reconnect_max_delay": 0.5,
                **options,
            }
        )
        channel = SmppChannel(config, on_receipt=on_receipt, on_inbound=on_inbound)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


def sms(to: str, text: str = "Hello", id: int = 1) -> OutboundMessage:
    return OutboundMessage(id=id, kind=ChannelKind.SMS, to=to, text=text)


def accepted(outcomes: list[Outcome]) -> list[Accepted]:
    assert all(isinstance(outcome, Accepted) for outcome in outcomes), outcomes
    return [outcome for outcome in outcomes if isinstance(outcome, Accepted)]


def split_udh(submit: Event) -> tuple[bytes | None, bytes]:
    raw = bytes.fromhex(submit["short_message"])
    if not submit["esm_class"] & 0x40:
        return None, raw
    length = raw[0]
    return raw[: length + 1], raw[length + 1 :]


def reassemble(parts: list[Event]) -> str:
    """The text of a concatenated message's parts, in their UDH order."""
    pieces = sorted((split_udh(part) for part in parts), key=lambda piece: piece[0] or b"")
    return "".join(
        decode_payload(payload, data_coding=part["data_coding"])
        for (_, payload), part in zip(pieces, parts, strict=True)
    )


# --------------------------------------------------------------------------------------------
# Sending through the Node SMSC


async def test_gsm7_message_arrives_with_its_coding_and_addresses(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    text = "Hello, {Ivan}! 50% off €"
    [outcome] = accepted(await make_channel(smsc.port).send([sms("+79161234500", text)]))

    [bind] = smsc.of("bind")
    assert (bind["system_id"], bind["password"], bind["interface_version"]) == (
        SYSTEM_ID,
        PASSWORD,
        0x34,
    )
    [submit] = smsc.of("submit_sm")
    assert submit["destination_addr"] == "79161234500"
    assert (submit["dest_addr_ton"], submit["dest_addr_npi"]) == (1, 1)
    assert submit["source_addr"] == SENDER
    assert (submit["source_addr_ton"], submit["source_addr_npi"]) == (5, 0)
    assert (submit["data_coding"], submit["esm_class"], submit["registered_delivery"]) == (0, 0, 1)
    udh, payload = split_udh(submit)
    assert udh is None
    # Unpacked GSM 03.38: the extension characters go as escape pairs.
    assert decode_payload(payload, data_coding=0) == text
    assert len(payload) == len(text) + 3
    assert outcome.peer_message_id == submit["message_id"]
    assert outcome.part_ids == (submit["message_id"],)
    assert outcome.parts == 1
    assert outcome.reply == "submit_sm_resp 0x00000000 ESME_ROK: No error"


@pytest.mark.parametrize(
    ("sender", "ton", "npi", "address"),
    [("+79001112233", 1, 1, "79001112233"), ("7900", 0, 1, "7900"), ("", 0, 0, "")],
)
async def test_numeric_and_empty_senders(
    smsc: Smsc, make_channel: MakeChannel, sender: str, ton: int, npi: int, address: str
) -> None:
    accepted(await make_channel(smsc.port, source_addr=sender).send([sms("+79161234500")]))

    [submit] = smsc.of("submit_sm")
    assert (submit["source_addr_ton"], submit["source_addr_npi"]) == (ton, npi)
    assert submit["source_addr"] == address


async def test_cyrillic_goes_as_ucs2_and_decodes_back_exactly(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    text = "Привет, Иван! Скидка 20% 🎁"
    accepted(await make_channel(smsc.port).send([sms("+79161234500", text)]))

    [submit] = smsc.of("submit_sm")
    assert submit["data_coding"] == 0x08
    assert submit["esm_class"] == 0
    assert bytes.fromhex(submit["short_message"]).decode("utf-16-be") == text


@pytest.mark.parametrize(
    ("text", "coding", "unit", "sizes"),
    [
        ("Latin text. " * 33 + "end", 0x00, 1, [153, 153, 93]),
        ("Кириллица. " * 13 + "конец", 0x08, 2, [67, 67, 14]),
    ],
    ids=["gsm7", "ucs2"],
)
async def test_long_text_goes_as_concatenated_parts(
    smsc: Smsc, make_channel: MakeChannel, text: str, coding: int, unit: int, sizes: list[int]
) -> None:
    [outcome] = accepted(await make_channel(smsc.port).send([sms("+79161234500", text)]))

    parts = smsc.of("submit_sm")
    assert [len(split_udh(part)[1]) // unit for part in parts] == sizes
    udhs = [split_udh(part)[0] for part in parts]
    assert all(part["esm_class"] == 0x40 and part["data_coding"] == coding for part in parts)
    assert all(part["registered_delivery"] == 1 for part in parts)
    assert all(udh is not None and udh[:3] == b"\x05\x00\x03" for udh in udhs)
    assert len({udh[3] for udh in udhs if udh}) == 1  # one reference
    assert [(udh[4], udh[5]) for udh in udhs if udh] == [(3, 1), (3, 2), (3, 3)]
    assert reassemble(parts) == text
    assert outcome.parts == 3
    assert outcome.part_ids == tuple(part["message_id"] for part in parts)
    assert outcome.peer_message_id == parts[0]["message_id"]


async def test_part_boundaries_and_references_differ_between_messages(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    batch = [
        sms("+79161234501", "a" * 160, id=1),
        sms("+79161234502", "a" * 161, id=2),
        sms("+79161234503", "Я" * 70, id=3),
        sms("+79161234504", "Я" * 71, id=4),
        sms("+79161234505", "b" * 200, id=5),
    ]

    outcomes = accepted(await make_channel(smsc.port).send(batch))

    assert [outcome.parts for outcome in outcomes] == [1, 2, 1, 2, 2]
    by_destination: dict[str, list[Event]] = {}
    for submit in smsc.of("submit_sm"):
        by_destination.setdefault(submit["destination_addr"], []).append(submit)
    references = set()
    for message in batch:
        parts = by_destination[message.to[1:]]
        assert reassemble(parts) == message.text
        udh = split_udh(parts[0])[0]
        if udh is not None:
            references.add(udh[3])
    assert len(references) == 3  # each long message has its own


async def test_window_bounds_the_outstanding_submits(smsc: Smsc, make_channel: MakeChannel) -> None:
    batch = [sms(f"+7916{number:05d}33", f"Message {number}", id=number) for number in range(200)]

    outcomes = accepted(await make_channel(smsc.port, window=7).send(batch))

    submits = smsc.of("submit_sm")
    assert len(submits) == 200
    # smsc.js answers "…33" after 30 ms, so the client fills its window and no more.
    assert max(submit["outstanding"] for submit in submits) == 7
    assert len({outcome.peer_message_id for outcome in outcomes}) == 200
    sent_ids = {submit["destination_addr"]: submit["message_id"] for submit in submits}
    assert [outcome.peer_message_id for outcome in outcomes] == [
        sent_ids[message.to[1:]] for message in batch
    ]
    assert len(smsc.of("bind")) == 1


async def test_refusals_are_classified_with_the_reply_kept(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    destinations = ["+79161234500", "+79161234511", "+79161234522", "+79161234566", "+79161234577"]

    ok, invalid, throttled, system_error, vendor = await make_channel(smsc.port).send(
        [sms(to, id=number) for number, to in enumerate(destinations)]
    )

    assert isinstance(ok, Accepted)
    assert isinstance(invalid, PermanentChannelError)
    assert invalid.code == 0x0B
    assert invalid.reply == "submit_sm_resp 0x0000000B ESME_RINVDSTADR: Invalid destination address"
    assert isinstance(throttled, TransientChannelError)
    assert throttled.code == 0x58
    assert throttled.reply.startswith("submit_sm_resp 0x00000058 ESME_RTHROTTLED: ")
    assert isinstance(system_error, TransientChannelError)
    assert system_error.reply == "submit_sm_resp 0x00000008 ESME_RSYSERR: System error"
    assert isinstance(vendor, TransientChannelError)
    assert vendor.code == 0x400
    assert vendor.reply == "submit_sm_resp 0x00000400 (an SMSC vendor-specific status)"
    assert len(smsc.of("submit_sm")) == 5


async def test_a_refused_part_stops_the_message(smsc: Smsc, make_channel: MakeChannel) -> None:
    [outcome] = await make_channel(smsc.port).send([sms("+79161234512", "x" * 400)])

    assert isinstance(outcome, TransientChannelError)
    assert outcome.code == 0x58
    assert outcome.reply.startswith("part 2 of 3: submit_sm_resp 0x00000058 ESME_RTHROTTLED")
    # The third part is never sent after the second was refused.
    assert [submit["verdict"] for submit in smsc.of("submit_sm")] == [
        "accepted",
        "second-part-throttled",
    ]


async def test_unsendable_messages_fail_without_touching_the_network(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    too_long = "a" * (153 * MAX_PARTS + 1)
    batch = [
        OutboundMessage(id=1, kind=ChannelKind.EMAIL, to="+79161234500", text="Hi"),
        sms("89161234500", id=2),
        sms("+7 916 123-45-00", id=3),
        sms("+79161234500", "", id=4),
        sms("+79161234500", too_long, id=5),
        sms("+79161234500", "lone \ud800 surrogate", id=6),
    ]

    outcomes = await make_channel(smsc.port).send(batch)

    assert all(isinstance(outcome, PermanentChannelError) for outcome in outcomes), outcomes
    replies = [outcome.reply for outcome in outcomes if isinstance(outcome, PermanentChannelError)]
    assert "email" in replies[0]
    assert "E.164" in replies[1]
    assert "E.164" in replies[2]
    assert "empty" in replies[3]
    assert f"at most {MAX_PARTS}" in replies[4]
    assert "surrogate" in replies[5]
    await asyncio.sleep(0.05)
    assert smsc.of("connect") == []


async def test_an_unanswered_submit_times_out_as_transient(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    channel = make_channel(smsc.port, timeout=0.3)

    silent, ok = await channel.send([sms("+79161234544", id=1), sms("+79161234500", id=2)])
    [later] = accepted(await channel.send([sms("+79161234500", id=3)]))

    assert isinstance(silent, TransientChannelError)
    assert silent.reply == "no submit_sm_resp within 0.3 s"
    assert isinstance(ok, Accepted)
    assert later.peer_message_id is not None
    assert len(smsc.of("bind")) == 1  # a late response does not cost the connection


async def test_a_dropped_connection_makes_in_flight_messages_transient(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    channel = make_channel(smsc.port, window=4)
    destinations = ["33", "33", "55", "00", "01", "02"]
    batch = [sms(f"+791612345{number}{end}", id=number) for number, end in enumerate(destinations)]

    outcomes = await channel.send(batch)

    # The first four were written before the SMSC dropped the connection at the third: no one
    # knows whether the SMSC took them. The last two waited for the window, and went on the
    # connection the channel opened again.
    assert all(isinstance(outcome, TransientChannelError) for outcome in outcomes[:4]), outcomes
    for outcome in outcomes[:4]:
        assert isinstance(outcome, TransientChannelError)
        assert "no submit_sm_resp" in outcome.reply
        assert "may or may not" in outcome.reply
    late = accepted(outcomes[4:])
    assert len(smsc.of("bind")) == 2
    second = smsc.of("bind")[1]["session"]
    for message, outcome in zip(batch[4:], late, strict=True):
        [submit] = smsc.of("submit_sm", destination_addr=message.to[1:])
        assert submit["session"] == second
        assert submit["message_id"] == outcome.peer_message_id

    # A send whose only message drops the connection, then the next send binds again.
    [dropped] = await channel.send([sms("+79161234555")])
    [after] = accepted(await channel.send([sms("+79161234500")]))
    assert isinstance(dropped, TransientChannelError)
    assert len(smsc.of("bind")) == 3
    assert after.peer_message_id == smsc.of("submit_sm")[-1]["message_id"]


async def test_an_unbind_from_the_smsc_is_answered_and_rebound(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    channel = make_channel(smsc.port)

    [unbound] = await channel.send([sms("+79161234588")])
    await smsc.wait_for(lambda: len(smsc.of("unbind_resp")) == 1)
    accepted(await channel.send([sms("+79161234500")]))

    assert isinstance(unbound, TransientChannelError)
    assert "the SMSC unbound" in unbound.reply
    assert smsc.of("unbind_resp")[0]["status"] == 0
    assert len(smsc.of("bind")) == 2


async def test_the_channel_reconnects_in_the_background(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    channel = make_channel(smsc.port)
    accepted(await channel.send([sms("+79161234500")]))

    smsc.signal(signal.SIGUSR2)

    # Bound again without a send, so receipts can flow.
    await smsc.wait_for(lambda: len(smsc.of("bind")) == 2)
    accepted(await channel.send([sms("+79161234500")]))
    assert smsc.of("submit_sm")[-1]["session"] == smsc.of("bind")[1]["session"]


@pytest.mark.parametrize(
    ("system_id", "password", "status", "name"),
    [
        (SYSTEM_ID, "wrong", 0x0E, "ESME_RINVPASWD"),
        ("stranger", PASSWORD, 0x0D, "ESME_RBINDFAIL"),
    ],
)
async def test_a_refused_bind_fails_every_message_as_transient(
    smsc: Smsc,
    make_channel: MakeChannel,
    system_id: str,
    password: str,
    status: int,
    name: str,
) -> None:
    channel = make_channel(smsc.port, system_id=system_id, password=password, window=2)
    started = time.monotonic()

    outcomes = await channel.send([sms(f"+791612345{n:02d}", id=n) for n in range(5)])
    [again] = await channel.send([sms("+79161234500")])

    assert time.monotonic() - started < 1.5
    for outcome in [*outcomes, again]:
        assert isinstance(outcome, TransientChannelError)
        assert outcome.code == status
        assert f"the SMSC refused the bind: bind_transceiver_resp 0x{status:08X} {name}" in (
            outcome.reply
        )
        assert "RASSYLKA_SMPP_PASSWORD" in outcome.reply
    # One attempt per send: the first send's five messages did not each try to bind.
    assert len(smsc.of("bind")) == 2
    assert smsc.of("submit_sm") == []


async def test_an_unreachable_smsc_is_transient(make_channel: MakeChannel) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    outcomes = await make_channel(port).send([sms("+79161234500", id=1), sms("+79161234501")])

    for outcome in outcomes:
        assert isinstance(outcome, TransientChannelError)
        assert f"cannot connect to the SMSC at 127.0.0.1:{port}" in outcome.reply


async def test_enquire_link_keeps_the_connection_and_is_answered(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    channel = make_channel(smsc.port, enquire_link_interval=0.05)
    accepted(await channel.send([sms("+79161234500")]))

    await smsc.wait_for(lambda: len(smsc.of("enquire_link")) >= 4)

    # smsc.js sends one enquire_link of its own after the bind; the client answered it.
    assert [event["status"] for event in smsc.of("enquire_link_resp")] == [0]
    accepted(await channel.send([sms("+79161234500")]))
    assert len(smsc.of("bind")) == 1


async def test_delivery_receipts_reach_on_receipt(smsc: Smsc, make_channel: MakeChannel) -> None:
    receipts = Receipts()
    channel = make_channel(smsc.port, on_receipt=receipts)

    delivered, undelivered, long = accepted(
        await channel.send(
            [
                sms("+79161234500", id=1),
                sms("+79161234513", id=2),
                sms("+79161234501", "z" * 200, id=3),
            ]
        )
    )
    await smsc.wait_for(lambda: len(smsc.of("deliver_sm_resp")) == 4)

    by_id = {receipt.peer_message_id: receipt for receipt in receipts}
    assert set(by_id) == {delivered.peer_message_id, undelivered.peer_message_id, *long.part_ids}
    assert delivered.peer_message_id is not None
    assert undelivered.peer_message_id is not None
    first = by_id[delivered.peer_message_id]
    assert (first.state, first.error) == ("DELIVRD", "000")
    assert first.raw_text.startswith(f"id:{delivered.peer_message_id} sub:001 dlvrd:001 ")
    failed = by_id[undelivered.peer_message_id]
    assert (failed.state, failed.error) == ("UNDELIV", "001")
    assert {event["status"] for event in smsc.of("deliver_sm_resp")} == {0}
    # Each names a part this channel was given: the inbox may wait for it to be recorded.
    assert [r.peer_message_id for r in receipts if not r.sent_here] == []


async def test_a_failing_on_receipt_is_logged_and_does_not_stop_the_reader(
    smsc: Smsc, make_channel: MakeChannel, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    async def broken(receipt: DeliveryReceipt) -> None:
        calls.append(receipt.peer_message_id)
        raise RuntimeError("database is down")

    channel = make_channel(smsc.port, on_receipt=broken)
    with caplog.at_level(logging.ERROR, logger="rassylka.channels.smpp"):
        [first] = accepted(await channel.send([sms("+79161234500")]))
        await smsc.wait_for(lambda: len(smsc.of("deliver_sm_resp")) == 1)
        [second] = accepted(await channel.send([sms("+79161234500")]))
        await smsc.wait_for(lambda: len(smsc.of("deliver_sm_resp")) == 2)

    assert calls == [first.peer_message_id, second.peer_message_id]
    # ESME_RX_T_APPN: a temporary application error, so the SMSC delivers the receipt again.
    assert [event["status"] for event in smsc.of("deliver_sm_resp")] == [0x64, 0x64]
    assert "database is down" in caplog.text
    assert len(smsc.of("bind")) == 1


async def test_close_unbinds_and_a_later_send_binds_again(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    channel = make_channel(smsc.port)
    accepted(await channel.send([sms("+79161234500")]))

    await channel.close()

    await smsc.wait_for(lambda: len(smsc.of("close")) == 1)
    assert len(smsc.of("unbind")) == 1
    accepted(await channel.send([sms("+79161234500")]))
    assert len(smsc.of("bind")) == 2


async def test_close_fails_the_messages_in_flight_and_returns(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    channel = make_channel(smsc.port, timeout=5.0)
    sending = asyncio.create_task(channel.send([sms("+79161234544")]))
    await smsc.wait_for(lambda: len(smsc.of("submit_sm")) == 1)

    started = time.monotonic()
    await channel.close()

    assert time.monotonic() - started < 1.0
    [outcome] = await asyncio.wait_for(sending, 1)
    assert isinstance(outcome, TransientChannelError)
    assert "no submit_sm_resp" in outcome.reply


@pytest.mark.parametrize("how", ["killed", "stopped"])
async def test_close_does_not_hang_when_the_smsc_is_gone(
    smsc: Smsc, make_channel: MakeChannel, how: str
) -> None:
    channel = make_channel(smsc.port, timeout=0.5)
    accepted(await channel.send([sms("+79161234500")]))

    if how == "killed":
        smsc.signal(signal.SIGKILL)
        await smsc.process.wait()
        await asyncio.sleep(0.1)  # the channel sees the connection go and tries to reconnect
    else:
        smsc.signal(signal.SIGSTOP)  # it keeps the socket but answers nothing, not even unbind
    started = time.monotonic()
    await asyncio.wait_for(channel.close(), 5)

    # Stopped: the unbind waits for its answer as long as ``timeout``, no longer.
    assert time.monotonic() - started < (0.5 if how == "killed" else 1.5)
    [outcome] = await channel.send([sms("+79161234500")])
    assert isinstance(outcome, TransientChannelError)


# --------------------------------------------------------------------------------------------
# A scripted SMSC, for what the Node server cannot stage


class ScriptedSmsc:
    """Binds anyone; answers submit_sm to "…99" with a garbled response; after the bind sends
    ``greeting`` PDUs (a number in it is a pause, in seconds, between writes); ignores
    enquire_link if told to. Records every PDU it receives."""

    def __init__(self, greeting: list[bytes | float], *, answer_enquire_link: bool = True) -> None:
        self.greeting = greeting
        self.answer_enquire_link = answer_enquire_link
        self.received: list[Pdu] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                pdu = await read_pdu(reader)
                self.received.append(pdu)
                if pdu.command is Command.BIND_TRANSCEIVER:
                    reply = Pdu(Command.BIND_TRANSCEIVER_RESP, pdu.sequence, params={})
                    writer.write(encode_pdu(reply))
                    for data in self.greeting:
                        if isinstance(data, float):
                            await writer.drain()
                            await asyncio.sleep(data)
                        else:
                            writer.write(data)
                elif pdu.command is Command.SUBMIT_SM:
                    if pdu.text("destination_addr").endswith("99"):
                        # message_id without its NUL: not a PDU the client can read.
                        body = b"abc"
                        header = struct.pack(">IIII", 16 + len(body), 0x80000004, 0, pdu.sequence)
                        writer.write(header + body)
                    else:
                        params = {"message_id": f"S{pdu.sequence}"}
                        writer.write(
                            encode_pdu(Pdu(Command.SUBMIT_SM_RESP, pdu.sequence, 0, params))
                        )
                elif pdu.command is Command.ENQUIRE_LINK and self.answer_enquire_link:
                    writer.write(encode_pdu(Pdu(Command.ENQUIRE_LINK_RESP, pdu.sequence)))
                elif pdu.command is Command.UNBIND:
                    writer.write(encode_pdu(Pdu(Command.UNBIND_RESP, pdu.sequence)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def start_scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedSmsc]]]:
    servers: list[ScriptedSmsc] = []

    async def start(greeting: list[bytes | float], **options: Any) -> ScriptedSmsc:
        server = ScriptedSmsc(greeting, **options)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def test_malformed_pdus_are_nacked_and_the_connection_lives(
    start_scripted: Callable[..., Awaitable[ScriptedSmsc]], make_channel: MakeChannel
) -> None:
    unknown = struct.pack(">IIII", 16, 0x00000999, 0, 100)
    truncated_deliver = struct.pack(">IIII", 19, 0x00000005, 0, 101) + b"\0\x01\x01"
    alert = struct.pack(">IIII", 17, 0x00000102, 0, 102) + b"\xff"
    receipts = Receipts()
    server = await start_scripted([unknown, truncated_deliver, alert])
    channel = make_channel(server.port, on_receipt=receipts)

    garbled, ok = await channel.send([sms("+79161234599", id=1), sms("+79161234500", id=2)])

    assert isinstance(garbled, TransientChannelError)
    assert "unreadable response" in garbled.reply
    assert "not NUL-terminated" in garbled.reply
    assert isinstance(ok, Accepted)
    nacks = [pdu for pdu in server.received if pdu.command is Command.GENERIC_NACK]
    assert [(nack.sequence, nack.status) for nack in nacks] == [
        (100, CommandStatus.ESME_RINVCMDID),
        (101, CommandStatus.ESME_RINVCMDLEN),
    ]  # and alert_notification, which takes no response, got none
    assert server.connections == 1
    assert receipts == []


async def test_a_receipt_handed_over_as_a_future_is_answered_when_it_is_done(
    start_scripted: Callable[..., Awaitable[ScriptedSmsc]], make_channel: MakeChannel
) -> None:
    """The inbox hands back a future, not a coroutine: the deliver_sm_resp waits for it (OK
    when it is done, ESME_RX_T_APPN when it failed). The first receipt comes in two writes and
    the second in the same write as its end: PDUs are split out of whatever the reads return."""

    def receipt(sequence: int, peer_id: str) -> bytes:
        text = f"id:{peer_id} sub:001 dlvrd:001 stat:DELIVRD err:000".encode()
        params = {"esm_class": 4, "short_message": text}
        return encode_pdu(Pdu(Command.DELIVER_SM, sequence, params=params))

    first, second = receipt(201, "R1"), receipt(202, "R2")
    server = await start_scripted([first[:10], 0.05, first[10:] + second])
    pending: dict[str, asyncio.Future[None]] = {}

    def on_receipt(receipt: DeliveryReceipt) -> asyncio.Future[None]:
        pending[receipt.peer_message_id] = asyncio.get_running_loop().create_future()
        return pending[receipt.peer_message_id]

    channel = make_channel(server.port, on_receipt=on_receipt)
    accepted(await channel.send([sms("+79161234500")]))

    def answers() -> dict[int, int]:
        return {
            pdu.sequence: pdu.status
            for pdu in server.received
            if pdu.command is Command.DELIVER_SM_RESP
        }

    deadline = time.monotonic() + 3
    while len(pending) < 2:
        assert time.monotonic() < deadline, "the receipts did not reach on_receipt"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert answers() == {}, "answered before the receipt was stored"

    pending["R1"].set_result(None)
    pending["R2"].set_exception(RuntimeError("database is down"))
    while len(answers()) < 2:
        assert time.monotonic() < deadline, "the receipts were not answered"
        await asyncio.sleep(0.01)
    assert answers() == {201: CommandStatus.ESME_ROK, 202: CommandStatus.ESME_RX_T_APPN}


async def test_an_unanswered_enquire_link_ends_the_connection(
    start_scripted: Callable[..., Awaitable[ScriptedSmsc]], make_channel: MakeChannel
) -> None:
    server = await start_scripted([], answer_enquire_link=False)
    channel = make_channel(server.port, enquire_link_interval=0.05, timeout=0.2)
    accepted(await channel.send([sms("+79161234500")]))

    deadline = time.monotonic() + 3
    while server.connections < 2:
        assert time.monotonic() < deadline, "the channel did not reconnect"
        await asyncio.sleep(0.01)

    accepted(await channel.send([sms("+79161234500")]))


# --------------------------------------------------------------------------------------------
# The codec, addresses, statuses, receipts, configuration


def test_enquire_link_is_a_bare_header() -> None:
    data = encode_pdu(Pdu(Command.ENQUIRE_LINK, sequence=7))
    assert data == bytes.fromhex("00000010 00000015 00000000 00000007")
    assert decode_pdu(data) == Pdu(Command.ENQUIRE_LINK, 7, 0, {}, ())


def test_submit_sm_layout() -> None:
    params = {
        "source_addr_ton": 5,
        "source_addr": "Shop",
        "dest_addr_ton": 1,
        "dest_addr_npi": 1,
        "destination_addr": "79161234567",
        "registered_delivery": 1,
        "data_coding": 8,
        "short_message": "Да".encode("utf-16-be"),
    }
    data = encode_pdu(Pdu(Command.SUBMIT_SM, sequence=0x0102, params=params))

    body = (
        b"\0"  # service_type
        + b"\x05\x00Shop\0"
        + b"\x01\x0179161234567\0"
        + b"\x00\x00\x00"  # esm_class, protocol_id, priority_flag
        + b"\0\0"  # schedule_delivery_time, validity_period
        + b"\x01\x00\x08\x00"  # registered_delivery, replace_if_present, data_coding, default id
        + b"\x04\x04\x14\x04\x30"  # sm_length, short_message
    )
    assert data == struct.pack(">IIII", 16 + len(body), 4, 0, 0x0102) + body


ROUND_TRIPS = [
    Pdu(
        Command.BIND_TRANSCEIVER,
        1,
        params={
            "system_id": "rassylka",
            "password": "pw",
            "system_type": "CRM",
            "interface_version": 0x34,
            "addr_ton": 0,
            "addr_npi": 0,
            "address_range": "",
        },
    ),
    Pdu(
        Command.BIND_TRANSCEIVER_RESP,
        1,
        params={"system_id": "SMSC"},
        tlvs=((Tlv.SC_INTERFACE_VERSION, b"\x34"),),
    ),
    Pdu(Command.SUBMIT_SM_RESP, 0x7FFFFFFF, params={"message_id": "0A1B2C"}),
    Pdu(Command.SUBMIT_SM_RESP, 9, status=0x58),
    Pdu(
        Command.DELIVER_SM,
        42,
        params={
            "service_type": "",
            "source_addr_ton": 1,
            "source_addr_npi": 1,
            "source_addr": "79161234567",
            "dest_addr_ton": 5,
            "dest_addr_npi": 0,
            "destination_addr": "Shop",
            "esm_class": 4,
            "protocol_id": 0,
            "priority_flag": 0,
            "schedule_delivery_time": "",
            "validity_period": "",
            "registered_delivery": 0,
            "replace_if_present_flag": 0,
            "data_coding": 0,
            "sm_default_msg_id": 0,
            "short_message": b"id:0A1B2C stat:DELIVRD err:000",
        },
        tlvs=((Tlv.RECEIPTED_MESSAGE_ID, b"0A1B2C\0"), (Tlv.MESSAGE_STATE, b"\x02"), (0x1400, b"")),
    ),
    Pdu(Command.DELIVER_SM_RESP, 42, params={"message_id": ""}),
    Pdu(Command.UNBIND, 3),
    Pdu(Command.UNBIND_RESP, 3),
    Pdu(Command.ENQUIRE_LINK_RESP, 8),
    Pdu(Command.GENERIC_NACK, 5, status=0x03),
]


@pytest.mark.parametrize("pdu", ROUND_TRIPS, ids=lambda pdu: pdu.command.label)
def test_pdus_round_trip(pdu: Pdu) -> None:
    assert decode_pdu(encode_pdu(pdu)) == pdu


def test_a_response_may_come_without_its_body() -> None:
    pdu = decode_pdu(struct.pack(">IIII", 16, 0x80000004, 0x0B, 12))

    assert (pdu.command, pdu.status, pdu.sequence) == (Command.SUBMIT_SM_RESP, 0x0B, 12)
    assert pdu.text("message_id") == ""


HEADER = struct.Struct(">IIII")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\0\0\0\x10\0\0", "at least 16 octets"),
        (HEADER.pack(20, 0x15, 0, 1), "does not match"),
        (HEADER.pack(17, 0x80000004, 0, 1) + b"x", "not NUL-terminated"),
        (HEADER.pack(19, 0x00000009, 0, 1) + b"a\0b", "not NUL-terminated"),
        (HEADER.pack(18, 0x00000009, 0, 1) + b"\0\0", "ends before system_type"),
        (HEADER.pack(16 + 19, 0x04, 0, 1) + b"\0" * 16 + b"\x05ab", "length 5 runs past"),
        (HEADER.pack(16 + 2, 0x80000009, 0, 1) + b"\0\x02", "1 stray octets"),
        (HEADER.pack(16 + 5, 0x80000009, 0, 1) + b"\0\x00\x1e\x00\x08", "TLV 0x001E length 8"),
    ],
)
def test_malformed_pdus_raise_the_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(SmppDecodeError, match=message):
        decode_pdu(data)


def test_an_unknown_command_names_its_header_for_the_nack() -> None:
    with pytest.raises(SmppDecodeError) as raised:
        decode_pdu(HEADER.pack(16, 0x00000103, 0, 77))

    assert raised.value.command_id == 0x103
    assert raised.value.sequence == 77
    assert raised.value.status == CommandStatus.ESME_RINVCMDID


@pytest.mark.parametrize(
    ("pdu", "message"),
    [
        (Pdu(Command.BIND_TRANSCEIVER, params={"system_id": "x" * 16}), "longer than 15"),
        (Pdu(Command.BIND_TRANSCEIVER, params={"password": "пароль"}), "not ASCII"),
        (Pdu(Command.BIND_TRANSCEIVER, params={"interface_version": 256}), "0..255"),
        (Pdu(Command.BIND_TRANSCEIVER, params={"system_id": 5}), "must be text"),
        (Pdu(Command.SUBMIT_SM, params={"short_message": b"x" * 255}), "at most 254"),
        (Pdu(Command.SUBMIT_SM, params={"message_id": "1"}), "no parameter message_id"),
        (Pdu(Command.ENQUIRE_LINK, sequence=-1), "out of range"),
    ],
)
def test_unencodable_pdus_raise(pdu: Pdu, message: str) -> None:
    with pytest.raises(SmppCodecError, match=message):
        encode_pdu(pdu)


@pytest.mark.parametrize("length", [0, 15, 0x7FFFFFFF])
async def test_an_impossible_command_length_is_a_framing_error(length: int) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(struct.pack(">I", length) + b"\0" * 32)

    with pytest.raises(SmppFramingError, match=f"command_length {length}"):
        await read_pdu(reader)


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("+79001112233", Address(1, 1, "79001112233")),
        ("79001112233", Address(0, 1, "79001112233")),
        ("900", Address(0, 1, "900")),
        ("Rassylka", Address(5, 0, "Rassylka")),
        ("Shop 24/7", Address(5, 0, "Shop 24/7")),
        ("", Address(0, 0, "")),
    ],
)
def test_source_addresses(sender: str, expected: Address) -> None:
    assert source_address(sender) == expected


@pytest.mark.parametrize("sender", ["TwelveLetter", "Рассылка", "+7900abc", "+", " Shop"])
def test_invalid_senders_are_refused_by_the_config(sender: str) -> None:
    with pytest.raises(ValueError, match="SMS sender"):
        SmppConfig(host="smsc", source_addr=sender)


def test_destination_must_be_e164() -> None:
    assert destination_address("+79161234567") == Address(1, 1, "79161234567")
    for to in ["79161234567", "+0916", "+7916123456789012", "tel:+79161234567"]:
        with pytest.raises(PermanentChannelError, match=r"E\.164"):
            destination_address(to)


def test_status_replies_and_classification() -> None:
    assert set(CommandStatus) == {CommandStatus(status) for status in CommandStatus}
    for status in CommandStatus:
        assert status.name in status_reply(Command.SUBMIT_SM_RESP, status)
    transient = [0x58, 0x14, 0x08, 0x45, 0x0D, 0x0E, 0x0F, 0x64, 0xFF, 0x04, 0x123, 0x401]
    permanent = [0x0B, 0x0A, 0x01, 0x104, 0x43, 0x48, 0x51, 0x62, 0x65, 0xC4]
    for status in transient:
        error = status_error(Command.SUBMIT_SM_RESP, status)
        assert isinstance(error, TransientChannelError), hex(status)
        assert error.code == status
    for status in permanent:
        assert isinstance(status_error(Command.SUBMIT_SM_RESP, status), PermanentChannelError)
    assert status_reply(Command.GENERIC_NACK, 0x03) == (
        "generic_nack 0x00000003 ESME_RINVCMDID: Invalid command ID"
    )
    assert status_reply(Command.SUBMIT_SM_RESP, 0x123) == (
        "submit_sm_resp 0x00000123 (a status SMPP 3.4 does not define)"
    )


def test_receipt_text_fields() -> None:
    text = (
        "id:0123456789 sub:001 dlvrd:001 submit date:2401311200 done date:2401311201 "
        "stat:DELIVRD err:000 text:id:fake stat:REJECTD"
    )

    assert parse_receipt_text(text) == {
        "id": "0123456789",
        "sub": "001",
        "dlvrd": "001",
        "submit date": "2401311200",
        "done date": "2401311201",
        "stat": "DELIVRD",
        "err": "000",
    }
    assert parse_receipt_text("ID:ab STAT:expired Err:5") == {
        "id": "ab",
        "stat": "expired",
        "err": "5",
    }


def deliver_sm(short_message: bytes, *tlvs: tuple[int, bytes], esm_class: int = 4) -> Pdu:
    return Pdu(
        Command.DELIVER_SM,
        1,
        params={"esm_class": esm_class, "short_message": short_message},
        tlvs=tlvs,
    )


def test_receipts_prefer_the_tlvs_to_the_text() -> None:
    from_text = parse_receipt(deliver_sm(b"id:77 sub:001 dlvrd:000 stat:expired err:0F2"))
    from_tlvs = parse_receipt(
        deliver_sm(
            b"id:77 stat:DELIVRD err:000",
            (Tlv.RECEIPTED_MESSAGE_ID, b"4D\0"),
            (Tlv.MESSAGE_STATE, b"\x08"),
        )
    )
    payload_only = parse_receipt(deliver_sm(b"", (Tlv.MESSAGE_PAYLOAD, b"id:X1 stat:UNDELIV")))
    network_error = parse_receipt(
        deliver_sm(b"", (Tlv.RECEIPTED_MESSAGE_ID, b"9"), (Tlv.NETWORK_ERROR_CODE, b"\x03\x00\x0b"))
    )

    assert from_text == DeliveryReceipt(
        "77", "EXPIRED", "0F2", "id:77 sub:001 dlvrd:000 stat:expired err:0F2"
    )
    assert from_tlvs is not None
    assert (from_tlvs.peer_message_id, from_tlvs.state) == ("4D", "REJECTD")
    assert from_tlvs.error == "000", "the text's err: with the TLVs' id and state"
    free_text_only = parse_receipt(
        deliver_sm(
            b"id:5 stat:DELIVRD Text:err:9",
            (Tlv.RECEIPTED_MESSAGE_ID, b"5"),
            (Tlv.MESSAGE_STATE, b"\x02"),
        )
    )
    assert free_text_only is not None
    assert (free_text_only.state, free_text_only.error) == ("DELIVRD", None)
    assert payload_only is not None
    assert (payload_only.peer_message_id, payload_only.state) == ("X1", "UNDELIV")
    assert network_error is not None
    assert (network_error.state, network_error.error) == ("UNKNOWN", "3:11")
    assert parse_receipt(deliver_sm(b"no id here")) is None
    # Whether the id is one this client was given lately.
    assert not from_text.sent_here
    assert parse_receipt(deliver_sm(b"id:77 stat:DELIVRD"), sent_here={"77"}) == DeliveryReceipt(
        "77", "DELIVRD", None, "id:77 stat:DELIVRD", sent_here=True
    )


def test_config_from_settings_and_its_limits() -> None:
    settings = Settings(
        smpp_host="smsc.example",
        smpp_port=2776,
        smpp_system_id="crm",
        smpp_password="pw",
        smpp_system_type="VMA",
        smpp_source_addr="+79001112233",
        smpp_window=3,
        smpp_enquire_link_interval=5.0,
        smpp_timeout=2.0,
    )

    config = SmppConfig.from_settings(settings)

    assert config == SmppConfig(
        host="smsc.example",
        port=2776,
        system_id="crm",
        password="pw",
        system_type="VMA",
        source_addr="+79001112233",
        window=3,
        enquire_link_interval=5.0,
        timeout=2.0,
    )
    with pytest.raises(ValueError, match="RASSYLKA_SMPP_HOST"):
        SmppConfig.from_settings(Settings(smpp_host=None))
    with pytest.raises(ValueError, match="password must be at most 8"):
        SmppConfig(host="smsc", password="123456789")
    with pytest.raises(ValueError, match="window"):
        SmppConfig(host="smsc", window=0)


@pytest.mark.parametrize(
    ("sender", "to", "esm_class", "data_coding", "short_message"),
    [
        ("Rassylka", "+79161234567", 0, 0, b"hello"),
        ("+79001234567", "+12025550123", 0x40, 8, bytes(range(140))),
        ("", "+79161234567", 0, 8, b""),
        ("1234", "+79161234567", 0, 0, b"x" * 254),
    ],
)
def test_a_submit_sm_is_built_as_the_codec_builds_it(
    sender: str, to: str, esm_class: int, data_coding: int, short_message: bytes
) -> None:
    source, destination = source_address(sender), destination_address(to)
    parameters = {
        "esm_class": esm_class,
        "data_coding": data_coding,
        "short_message": short_message,
    }
    general = encode_body(Command.SUBMIT_SM, submit_sm_fields(source, destination, **parameters))
    assert submit_sm_body(source, destination, **parameters) == general
    with pytest.raises(SmppCodecError, match="short_message"):
        submit_sm_body(source, destination, esm_class=0, data_coding=0, short_message=b"x" * 255)
    with pytest.raises(SmppCodecError, match="not ASCII"):
        submit_sm_body(
            Address(5, 0, "Рассылка"), destination, esm_class=0, data_coding=0, short_message=b""
        )


@pytest.mark.parametrize(
    "pdu",
    [
        Pdu(Command.SUBMIT_SM_RESP, 7, 0, {"message_id": "5A000"}),
        Pdu(Command.SUBMIT_SM_RESP, 0x7FFFFFFF, 0x58, {"message_id": "id with spaces"}),
        Pdu(Command.SUBMIT_SM_RESP, 8, 0, {"message_id": ""}),
        Pdu(Command.SUBMIT_SM_RESP, 9, 0, {"message_id": "X"}, ((0x1400, b"\0vendor"),)),
    ],
)
def test_a_submit_sm_resp_decodes_the_same_by_either_path(pdu: Pdu) -> None:
    assert decode_pdu(encode_pdu(pdu)) == pdu
    data = encode_pdu(pdu)
    with pytest.raises(SmppDecodeError):
        decode_pdu(data[:-1])  # command_length no longer matches
    refusal = pack_pdu(Command.SUBMIT_SM_RESP, b"", sequence=3, status=0x45)
    assert decode_pdu(refusal) == Pdu(Command.SUBMIT_SM_RESP, 3, 0x45)
