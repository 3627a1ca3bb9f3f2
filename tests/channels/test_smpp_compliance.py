"""SMS compliance on the SMPP transport against the real SMSC (``tests/peers/smsc.js``): the
sender of each message, ``message_payload`` concatenation, escape pairs at part boundaries,
and texts handsets send (mobile-originated deliver_sm) handed to ``on_inbound``."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import ValidationError
from test_smpp import MakeChannel, accepted, make_channel, reassemble, smsc, split_udh

from rassylka.channels.base import ChannelKind, OutboundMessage, PermanentChannelError
from rassylka.channels.smpp import (
    Command,
    InboundSms,
    Pdu,
    SmppConfig,
    Tlv,
    decode_pdu,
    destination_address,
    pack_pdu,
    parse_inbound,
    source_address,
    submit_sm_body,
)
from rassylka.channels.sms_text import count_parts, decode_payload
from rassylka.config import Settings
from smsc_peer import Smsc

__all__ = ["make_channel", "smsc"]  # fixtures


def sms(to: str, text: str = "Hello", id: int = 1, source: str | None = None) -> OutboundMessage:
    return OutboundMessage(id=id, kind=ChannelKind.SMS, to=to, text=text, source=source)


class Inbound(list[InboundSms]):
    async def __call__(self, inbound: InboundSms) -> None:
        self.append(inbound)


# --------------------------------------------------------------------------------------------
# Senders


async def test_each_message_goes_from_its_own_sender_with_the_forms_ton_and_npi(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    channel = make_channel(smsc.port, source_addr="Rassylka")
    batch = [
        sms("+79161234501", id=1, source="SHOP"),
        sms("+79161234502", id=2, source="+79001112233"),
        sms("+79161234503", id=3, source="7900"),
        sms("+79161234504", id=4),  # no sender of its own: the configured one
        sms("+79161234505", id=5, source="SHOP"),
        sms("+79161234506", "Я" * 71, id=6, source="Bank"),  # every part from it
    ]

    accepted(await channel.send(batch))

    keys = ("destination_addr", "source_addr_ton", "source_addr_npi", "source_addr")
    sources = {tuple(submit[key] for key in keys) for submit in smsc.of("submit_sm")}
    assert sources == {
        ("79161234501", 5, 0, "SHOP"),
        ("79161234502", 1, 1, "79001112233"),
        ("79161234503", 0, 1, "7900"),
        ("79161234504", 5, 0, "Rassylka"),
        ("79161234505", 5, 0, "SHOP"),
        ("79161234506", 5, 0, "Bank"),
    }
    assert len(smsc.of("submit_sm", destination_addr="79161234506")) == 2


async def test_a_sender_of_no_form_fails_its_message_only(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    channel = make_channel(smsc.port)
    bad, good = await channel.send(
        [sms("+79161234501", id=1, source="+12 34"), sms("+79161234502", id=2, source="SHOP")]
    )

    assert isinstance(bad, PermanentChannelError)
    assert "+12 34" in bad.reply
    accepted([good])
    assert [submit["destination_addr"] for submit in smsc.of("submit_sm")] == ["79161234502"]


# --------------------------------------------------------------------------------------------
# Concatenation


@pytest.mark.parametrize(
    ("text", "coding", "segments"),
    [
        ("Sale {50%} on ~all~ [items] | €5 \\ ^ \f. " * 8, 0, 3),
        ("Распродажа: скидки до 50% на всё! 🎁 " * 6, 8, 4),
    ],
    ids=["gsm7", "ucs2"],
)
async def test_payload_mode_sends_the_whole_text_in_one_submit(
    smsc: Smsc, make_channel: MakeChannel, text: str, coding: int, segments: int
) -> None:
    assert count_parts(text) == segments
    channel = make_channel(smsc.port, concatenation="payload")

    [outcome] = accepted(await channel.send([sms("+79161234500", text)]))

    [submit] = smsc.of("submit_sm")
    assert submit["short_message"] == ""
    assert submit["esm_class"] == 0  # no UDH: the SMSC splits
    assert submit["data_coding"] == coding
    payload = bytes.fromhex(submit["message_payload"])
    assert decode_payload(payload, data_coding=coding) == text
    # The SMS it costs are counted; the one submit has one id, which its receipt names.
    assert outcome.parts == segments
    assert outcome.part_ids == (submit["message_id"],)
    await smsc.wait_for(lambda: len(smsc.of("deliver_sm_resp")) == 1)


async def test_payload_mode_leaves_a_one_part_text_in_short_message(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    channel = make_channel(smsc.port, concatenation="payload")

    [outcome] = accepted(await channel.send([sms("+79161234500", "a" * 160)]))

    [submit] = smsc.of("submit_sm")
    assert submit["message_payload"] is None
    assert bytes.fromhex(submit["short_message"]) == b"a" * 160
    assert outcome.parts == 1


def test_concatenation_mode_comes_from_the_settings_and_is_checked() -> None:
    assert SmppConfig.from_settings(Settings(smpp_host="h")).concatenation == "udh"
    chosen = Settings(smpp_host="h", smpp_concatenation="payload")
    assert SmppConfig.from_settings(chosen).concatenation == "payload"
    with pytest.raises(ValidationError):
        Settings(smpp_concatenation="split")
    with pytest.raises(ValueError, match="udh or payload"):
        SmppConfig(host="127.0.0.1", concatenation="split")  # type: ignore[arg-type]


@pytest.mark.parametrize("char", list("€[{|~^\\]}\f"))
async def test_an_escape_pair_at_a_part_boundary_moves_whole_to_the_next_part(
    smsc: Smsc, make_channel: MakeChannel, char: str
) -> None:
    # 152 septets, then a 2-septet character that would end at 154 > 153: it opens part 2.
    text = "a" * 152 + char + "b" * 20
    channel = make_channel(smsc.port)

    [outcome] = accepted(await channel.send([sms("+79161234500", text)]))

    parts = smsc.of("submit_sm")
    assert outcome.parts == len(parts) == 2
    first, second = (split_udh(part)[1] for part in parts)
    assert first == b"a" * 152  # no dangling escape
    assert second[:1] == b"\x1b"
    assert reassemble(parts) == text


# --------------------------------------------------------------------------------------------
# Inbound texts


@pytest.mark.parametrize(
    ("text", "coding", "in_payload"),
    [
        ("STOP {now} €", "gsm7", False),
        ("СТОП", "ucs2", False),
        ("Ärger ñ", "latin1", False),
        ("Отписка " * 30, "ucs2", True),
    ],
    ids=["gsm7", "ucs2", "latin1", "payload"],
)
async def test_an_inbound_text_is_decoded_and_answered_after_its_handler(
    smsc: Smsc, make_channel: MakeChannel, text: str, coding: str, in_payload: bool
) -> None:
    inbound = Inbound()
    channel = make_channel(smsc.port, on_inbound=inbound)
    accepted(await channel.send([sms("+79161234500")]))  # binds

    status = await smsc.send_mobile_originated(
        source="79161234567", destination="SHOP", text=text, coding=coding, in_payload=in_payload
    )

    assert status == 0
    assert inbound == [
        InboundSms(source="79161234567", source_ton=1, destination="SHOP", text=text)
    ]


async def test_a_failing_inbound_handler_is_answered_so_the_smsc_retries(
    smsc: Smsc, make_channel: MakeChannel, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    async def broken(inbound: InboundSms) -> None:
        seen.append(inbound.text)
        raise RuntimeError("database is down")

    channel = make_channel(smsc.port, on_inbound=broken)
    accepted(await channel.send([sms("+79161234500")]))
    with caplog.at_level(logging.ERROR, logger="rassylka.channels.smpp"):
        status = await smsc.send_mobile_originated(
            source="79161234567", destination="SHOP", text="STOP"
        )

    assert status == 0x64  # ESME_RX_T_APPN
    assert seen == ["STOP"]
    assert "database is down" in caplog.text
    # The connection lives on.
    accepted(await channel.send([sms("+79161234500")]))
    assert len(smsc.of("bind")) == 1


async def test_an_inbound_handler_that_is_slow_holds_the_answer(
    smsc: Smsc, make_channel: MakeChannel
) -> None:
    release = asyncio.Event()

    async def slow(inbound: InboundSms) -> None:
        await release.wait()

    channel = make_channel(smsc.port, on_inbound=slow)
    accepted(await channel.send([sms("+79161234500")]))
    answer = asyncio.create_task(
        smsc.send_mobile_originated(source="79161234567", destination="SHOP", text="STOP")
    )
    await smsc.wait_for(lambda: bool(smsc.of("mo")))
    await asyncio.sleep(0.2)
    assert not smsc.of("mo_resp")  # not answered while the handler works
    release.set()
    assert await answer == 0


async def test_without_a_handler_an_inbound_text_is_acknowledged_without_its_text_logged(
    smsc: Smsc, make_channel: MakeChannel, caplog: pytest.LogCaptureFixture
) -> None:
    channel = make_channel(smsc.port)
    accepted(await channel.send([sms("+79161234500")]))
    with caplog.at_level(logging.INFO, logger="rassylka.channels.smpp"):
        status = await smsc.send_mobile_originated(
            source="79161234567", destination="SHOP", text="secret words"
        )

    assert status == 0
    assert "inbound text" in caplog.text
    assert "secret" not in caplog.text


def test_parse_inbound_drops_a_udh_and_reads_each_coding() -> None:
    udh = bytes([0x05, 0x00, 0x03, 0x07, 0x02, 0x01])

    def mo(short_message: bytes, data_coding: int, esm_class: int = 0) -> Pdu:
        params = {
            "source_addr_ton": 0,
            "source_addr": "89161234567",
            "destination_addr": "7900",
            "esm_class": esm_class,
            "data_coding": data_coding,
            "short_message": short_message,
        }
        return Pdu(Command.DELIVER_SM, 1, params=params)

    assert parse_inbound(mo(udh + "стоп".encode("utf-16-be"), 8, 0x40)).text == "стоп"
    assert parse_inbound(mo(b"STOP\x1b\x65", 0)).text == "STOP€"
    assert parse_inbound(mo(b"Stop\xe9", 0)).text == "Stopé"  # 8-bit octets: read as Latin-1
    assert parse_inbound(mo(b"Stop", 1)).text == "Stop"
    empty = parse_inbound(mo(b"", 0))
    assert (empty.text, empty.source, empty.source_ton, empty.destination) == (
        "",
        "89161234567",
        0,
        "7900",
    )
    payload = Pdu(
        Command.DELIVER_SM,
        1,
        params={"data_coding": 8},
        tlvs=((Tlv.MESSAGE_PAYLOAD, "ОТПИСКА".encode("utf-16-be")),),
    )
    assert parse_inbound(payload).text == "ОТПИСКА"


def test_a_submit_sm_with_a_payload_round_trips_through_the_codec() -> None:
    body = submit_sm_body(
        source_address("SHOP"),
        destination_address("+79161234500"),
        esm_class=0,
        data_coding=8,
        short_message=b"",
        tlvs=((Tlv.MESSAGE_PAYLOAD, "Я".encode("utf-16-be") * 200),),
    )
    pdu = decode_pdu(pack_pdu(Command.SUBMIT_SM, body, sequence=5))
    assert pdu.octets("short_message") == b""
    assert pdu.text("source_addr") == "SHOP"
    assert pdu.tlv(Tlv.MESSAGE_PAYLOAD) == "Я".encode("utf-16-be") * 200
