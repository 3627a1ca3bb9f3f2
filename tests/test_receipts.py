"""Delivery receipts back to messages: SMPP deliver_sm from a real SMSC (``tests/peers/smsc.js``)
through a worker into the database, and the matching rules on the database itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, literal_column, null, select
from sqlalchemy.ext.asyncio import AsyncEngine

from conftest import FAST_RETRY
from rassylka.channels.base import DeliveryReport
from rassylka.channels.smpp import SmppChannel
from rassylka.db import create_sessionmaker, utcnow
from rassylka.engine import dispatcher
from rassylka.engine.dispatcher import DispatchConfig
from rassylka.engine.receipts import ReceiptInbox
from rassylka.engine.scheduler import Scheduler
from rassylka.engine.worker import Worker, run_until_stopped
from rassylka.messages import queue, receipts
from rassylka.messages.models import Message, MessageEvent, MessagePart, Receipt
from smsc_peer import Smsc, start_smsc
from test_dispatcher import arrange, client, statuses, until
from test_stream import open_stream

LONG_TEXT = "Уважаемый клиент! " + "Ваш заказ готов к выдаче. " * 4  # two UCS-2 parts


@pytest.fixture
async def smsc() -> AsyncIterator[Smsc]:
    peer = await start_smsc()
    yield peer
    await peer.stop()


async def settled(engine: AsyncEngine) -> bool:
    """No SMS is queued, sending or merely sent any more: every receipt has been applied."""
    open_ = func.count().filter(
        Message.channel == 2, Message.status.in_(["queued", "sending", "sent"])
    )
    async with engine.connect() as connection:
        total, waiting = (await connection.execute(select(func.count(), open_))).one()
    return bool(total) and waiting == 0


async def send_until_settled(
    engine: AsyncEngine,
    smsc: Smsc,
    inbox: ReceiptInbox,
    config: DispatchConfig | None = None,
    *,
    seconds: float = 20,
) -> None:
    """A worker sending SMS to ``smsc``, its receipts into ``inbox``, until every one settled."""
    channel = SmppChannel(smsc.config(), on_receipt=inbox.receive)
    worker = Worker(
        engine, {2: channel}, config or DispatchConfig(poll_interval=0.05), receipts=inbox
    )
    task = asyncio.create_task(run_until_stopped(worker))
    try:
        await until(lambda: settled(engine), seconds=seconds)
    finally:
        worker.stop()
        await task


async def test_smpp_receipts_settle_each_message_by_its_parts(
    api: httpx.AsyncClient, engine: AsyncEngine, smsc: Smsc
) -> None:
    phones = {
        "+79161234500": "delivered",  # receipt with TLVs
        "+79161234513": "undelivered",  # UNDELIV err:001
        "+79161234514": "delivered",  # the receipt comes before the submit_sm_resp
        "+79161234515": "expired",  # EXPIRED err:002
        "+79161234516": "delivered",  # the receipt's text only, no TLVs
        "+79161234517": "undelivered",  # REJECTD err:003
        "+79161234518": "delivered",  # after a receipt for an id never given
    }
    mailing_id = await arrange(
        api,
        [client(n, None, phone=phone) for n, phone in enumerate(phones)],
        channels=[2],
        sms_text="Заказ готов",
    )
    inbox = ReceiptInbox(create_sessionmaker(engine), sweep_interval=0.2)
    await send_until_settled(
        engine, smsc, inbox, DispatchConfig(poll_interval=0.05, retry=FAST_RETRY)
    )

    found = await statuses(engine)
    assert {phone: found[phone]["status"] for phone in phones} == phones
    assert found["+79161234513"]["reason"] == "UNDELIV err:001"
    assert found["+79161234515"]["reason"] == "EXPIRED err:002"
    assert found["+79161234517"]["reason"] == "REJECTD err:003"
    assert found["+79161234500"]["reason"] == "DELIVRD err:000"
    first = smsc.of("submit_sm", destination_addr="79161234514")[0]
    assert found["+79161234514"]["peer_message_id"] == first["message_id"]
    # Every receipt was acknowledged with ESME_ROK, the stray one too: it is kept, not refused.
    answers = smsc.of("deliver_sm_resp")
    assert len(answers) == len(phones) + 1
    assert {answer["status"] for answer in answers} == {0}
    async with engine.connect() as connection:
        stray = (await connection.execute(select(Receipt.peer_message_id))).scalars().all()
        history = (
            await connection.execute(
                select(MessageEvent.old_status, MessageEvent.status, MessageEvent.reason)
                .join(Message, Message.id == MessageEvent.message_id)
                .where(Message.address == "+79161234514")
                .order_by(MessageEvent.id)
            )
        ).all()
    assert stray == [
        "STRAY" + smsc.of("submit_sm", destination_addr="79161234518")[0]["message_id"]
    ]
    assert inbox.counts["received"] == len(phones) + 1
    assert inbox.counts["settled"] == len(phones)
    # Stored events: a message made queued has no creation event (its history in the API
    # reads one from the row).
    assert [tuple(row) for row in history] == [
        ("sending", "sent", None),
        ("sent", "delivered", "DELIVRD err:000"),
    ]
    listed = (await api.get(f"/mailing/{mailing_id}/messages?status=delivered")).json()
    assert listed["data"]["total"] == 4


async def test_receipts_do_not_wait_for_the_writers_interval(
    api: httpx.AsyncClient, engine: AsyncEngine, smsc: Smsc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SMSC reports within milliseconds, before the writer has recorded what it sent: the
    receipts held for their parts make the writer write at once (the outcomes in hand, and
    those whose send was still finishing), so they settle although the writer's interval is
    made a minute here and no batch fills."""
    monkeypatch.setattr(dispatcher, "FLUSH_INTERVAL", 60.0)
    phones = [f"+791612345{n:02d}" for n in range(90, 96)]  # plain: accepted, DELIVRD
    await arrange(
        api,
        [client(n, None, phone=phone) for n, phone in enumerate(phones)],
        channels=[2],
        sms_text="Заказ готов",
    )
    await send_until_settled(engine, smsc, ReceiptInbox(create_sessionmaker(engine)), seconds=15)
    found = await statuses(engine)
    assert {found[phone]["status"] for phone in phones} == {"delivered"}


async def test_a_long_sms_is_delivered_when_every_part_is(
    api: httpx.AsyncClient, engine: AsyncEngine, smsc: Smsc
) -> None:
    await arrange(
        api,
        [client(1, None, phone="+79161234500"), client(2, None, phone="+79161234513")],
        channels=[2],
        sms_text=LONG_TEXT,
    )
    await send_until_settled(engine, smsc, ReceiptInbox(create_sessionmaker(engine)))
    found = await statuses(engine)
    assert found["+79161234500"]["status"] == "delivered"
    assert found["+79161234500"]["parts"] == 2
    assert found["+79161234513"]["status"] == "undelivered"
    async with engine.connect() as connection:
        parts = (
            await connection.execute(
                select(MessagePart.peer_message_id, MessagePart.state).order_by(MessagePart.id)
            )
        ).all()
    given = [submit["message_id"] for submit in smsc.of("submit_sm")]
    assert sorted(peer_id for peer_id, _ in parts) == sorted(given)
    assert len(parts) == 4
    assert {state for _, state in parts} == {"DELIVRD", "UNDELIV"}


async def _claimed_sms(api: httpx.AsyncClient, engine: AsyncEngine) -> queue.Claimed:
    """One SMS message, claimed (``sending``)."""
    await arrange(api, [client(1, None, phone="+79161234500")], channels=[2], sms_text="Привет")
    sessionmaker = create_sessionmaker(engine)
    await Scheduler(sessionmaker).tick()
    now = utcnow()
    async with sessionmaker() as session, session.begin():
        [claimed] = await queue.claim(
            session, channel=2, limit=10, now=now, lease_until=now + timedelta(minutes=5)
        )
    return claimed


async def _sent_sms(api: httpx.AsyncClient, engine: AsyncEngine, *, parts: tuple[str, ...]) -> int:
    """One SMS message claimed and recorded as sent with these part ids; its id."""
    claimed = await _claimed_sms(api, engine)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await queue.record(
            session,
            sent=[queue.SentResult(claimed.id, parts[0], "OK", len(parts), parts)],
            retries=[],
            failed=[],
            now=utcnow(),
        )
    return claimed.id


async def test_a_receipt_stored_before_its_part_is_matched_when_the_part_comes(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """Across processes: one stores the receipt (its SMPP session got it first), another
    records the sent message afterwards; matching then settles it."""
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await receipts.store(
            session,
            reports=[DeliveryReport("A1", "DELIVRD", "000"), DeliveryReport("A2", "ENROUTE")],
            now=utcnow(),
        )
        early = await receipts.match(session, now=utcnow())
    assert early.receipts == 0
    message_id = await _sent_sms(api, engine, parts=("A1", "A2"))
    async with sessionmaker() as session, session.begin():
        partial = await receipts.match(session, now=utcnow(), peer_ids=["A1", "A2"])
    assert partial.receipts == 2
    assert partial.settled == [], "part 2 is only en route"
    async with sessionmaker() as session, session.begin():
        await receipts.store(session, reports=[DeliveryReport("A2", "DELIVRD")], now=utcnow())
        # A late intermediate report never undoes a final one.
        await receipts.store(session, reports=[DeliveryReport("A1", "ENROUTE")], now=utcnow())
        done = await receipts.match(session, now=utcnow())
    assert done.settled == [message_id]
    async with sessionmaker() as session, session.begin():
        # A duplicate receipt after the message is delivered changes nothing.
        await receipts.store(session, reports=[DeliveryReport("A2", "UNDELIV", "9")], now=utcnow())
        again = await receipts.match(session, now=utcnow())
        left = await receipts.waiting(session)
    assert again.receipts == 1
    assert again.settled == []
    assert left == 0
    found = await statuses(engine)
    assert found["+79161234500"]["status"] == "delivered"


async def test_receipts_for_unknown_ids_are_kept_then_dropped_and_counted(
    engine: AsyncEngine,
) -> None:
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await receipts.store(
            session, reports=[DeliveryReport("NOPE", "DELIVRD")], now=utcnow() - timedelta(days=2)
        )
    clock_now = utcnow()
    inbox = ReceiptInbox(sessionmaker, keep=3600, sweep_interval=0.05, clock=lambda: clock_now)
    stop = asyncio.Event()
    task = asyncio.create_task(inbox.run(stop))
    try:
        await until(lambda: _none_waiting(engine), seconds=5)
    finally:
        stop.set()
        await task
    assert inbox.counts["unknown"] == 1


async def _none_waiting(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        return not await connection.scalar(select(func.count()).select_from(Receipt))


@pytest.mark.parametrize(
    ("parts", "verdict"),
    [
        ([("DELIVRD", "000")], ("delivered", "DELIVRD err:000")),
        ([("DELIVRD", None), ("DELIVRD", None)], ("delivered", "DELIVRD")),
        ([("DELIVRD", None), (None, None)], None),
        ([("DELIVRD", None), ("ENROUTE", None)], None),
        ([("EXPIRED", "2"), ("UNDELIV", "5")], ("undelivered", "UNDELIV err:5")),
        ([("DELIVRD", None), ("EXPIRED", None)], ("expired", "EXPIRED")),
        ([("DELETED", None)], ("undelivered", "DELETED")),
        ([("ACCEPTD", None)], None),
    ],
)
def test_how_parts_settle_a_message(
    parts: list[tuple[str | None, str | None]], verdict: tuple[str, str] | None
) -> None:
    assert receipts.verdict_of(parts) == verdict


async def test_receipts_in_hand_are_applied_without_being_stored(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """``apply``: the parts recorded take their receipts at once (no ``receipt`` row), the
    rest are stored to wait; finals are not undone; the message settles when all parts do."""
    message_id = await _sent_sms(api, engine, parts=("B1", "B2"))
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        first = await receipts.apply(
            session,
            reports=[
                DeliveryReport("B1", "delivrd", "000"),
                DeliveryReport("B1", "ENROUTE"),  # late and intermediate: changes nothing
                DeliveryReport("ELSEWHERE", "DELIVRD"),
                DeliveryReport(" ", "DELIVRD"),  # names nothing: not kept
            ],
            now=utcnow(),
        )
        stored = (await session.execute(select(Receipt.peer_message_id))).scalars().all()
    assert first.receipts == 2
    assert first.settled == [], "part 2 has no receipt yet"
    assert stored == ["ELSEWHERE"]
    async with sessionmaker() as session, session.begin():
        second = await receipts.apply(
            session, reports=[DeliveryReport("B2", "DELIVRD", "000")], now=utcnow()
        )
    assert (second.receipts, second.settled) == (1, [message_id])
    async with sessionmaker() as session, session.begin():
        again = await receipts.apply(
            session, reports=[DeliveryReport("B2", "UNDELIV", "9")], now=utcnow()
        )
    assert (again.receipts, again.settled) == (1, [])
    async with engine.connect() as connection:
        parts = (
            await connection.execute(
                select(MessagePart.peer_message_id, MessagePart.state, MessagePart.error).order_by(
                    MessagePart.part
                )
            )
        ).all()
        events = (
            await connection.execute(
                select(MessageEvent.old_status, MessageEvent.status, MessageEvent.reason).where(
                    MessageEvent.message_id == message_id, MessageEvent.old_status == "sent"
                )
            )
        ).all()
    assert [tuple(part) for part in parts] == [("B1", "DELIVRD", "000"), ("B2", "DELIVRD", "000")]
    assert [tuple(event) for event in events] == [("sent", "delivered", "DELIVRD err:000")]


class _Receipt:
    """What the SMPP channel hands the inbox (``DeliveryReceipt``'s fields)."""

    def __init__(self, peer_id: str, *, sent_here: bool) -> None:
        self.peer_message_id = peer_id
        self.state = "DELIVRD"
        self.error = "000"
        self.raw_text = ""
        self.sent_here = sent_here


async def test_a_receipt_for_a_part_sent_here_waits_in_memory_for_the_part(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The inbox holds such a receipt unanswered until the writer says the part is recorded,
    then applies it directly; one whose part never comes is stored after ``hold``."""
    message_id = await _sent_sms(api, engine, parts=("C1",))  # the inbox is not told yet
    sessionmaker = create_sessionmaker(engine)
    inbox = ReceiptInbox(sessionmaker, hold=1.0)
    told: list[bool] = []
    inbox.on_waiting = lambda: told.append(True)
    stop = asyncio.Event()
    task = asyncio.create_task(inbox.run(stop))
    try:
        early = inbox.receive(_Receipt("C1", sent_here=True))  # type: ignore[arg-type]
        lost = inbox.receive(_Receipt("C9", sent_here=True))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        assert not early.done(), "it waits for its part"
        assert told, "the writer was asked to write at once"
        inbox.parts_recorded(["C1"])
        await asyncio.wait_for(early, 5)
        assert not lost.done()
        assert await _waiting_rows(engine) == [], "applied, never stored"
        await asyncio.wait_for(lost, 5)
        assert await _waiting_rows(engine) == ["C9"]
        # Recorded lately: a receipt naming it goes straight to its part.
        duplicate = inbox.receive(_Receipt("C1", sent_here=True))  # type: ignore[arg-type]
        await asyncio.wait_for(duplicate, 5)
    finally:
        stop.set()
        await task
    assert await _waiting_rows(engine) == ["C9"]
    assert inbox.counts["received"] == 3
    assert inbox.counts["matched"] == 2
    assert inbox.counts["settled"] == 1
    found = await statuses(engine)
    assert found["+79161234500"]["status"] == "delivered"
    async with engine.connect() as connection:
        delivered = await connection.scalar(
            select(func.count()).where(
                MessageEvent.message_id == message_id, MessageEvent.status == "delivered"
            )
        )
    assert delivered == 1


async def test_held_receipts_are_written_when_the_inbox_stops(engine: AsyncEngine) -> None:
    inbox = ReceiptInbox(create_sessionmaker(engine), hold=60)
    stop = asyncio.Event()
    task = asyncio.create_task(inbox.run(stop))
    held = inbox.receive(_Receipt("D1", sent_here=True))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert not held.done()
    stop.set()
    await asyncio.wait_for(task, 5)
    assert held.done()
    assert held.exception() is None
    assert await _waiting_rows(engine) == ["D1"]


async def _waiting_rows(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(select(Receipt.peer_message_id).order_by(Receipt.id))
        return list(rows.scalars())


# -- receipts in hand when the writer records the sent ------------------------------------------


async def _history(engine: AsyncEngine, address: str) -> list[tuple[object, ...]]:
    """A message's events: (old status, status, reason, created at, the transaction's id on
    PostgreSQL — ``xmin``, the same for rows one transaction wrote — else None)."""
    is_postgresql = engine.dialect.name == "postgresql"
    transaction = literal_column("message_event.xmin::text") if is_postgresql else null()
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(
                MessageEvent.old_status,
                MessageEvent.status,
                MessageEvent.reason,
                MessageEvent.created_at,
                transaction,
            )
            .join(Message, Message.id == MessageEvent.message_id)
            .where(Message.address == address)
            .order_by(MessageEvent.id)
        )
        return [tuple(row) for row in rows]


async def _streamed(api: httpx.AsyncClient, mailing_id: int, count: int) -> list[tuple[str, str]]:
    """The first ``count`` status events of the mailing on its live stream, from the start."""
    async with open_stream(api, f"/mailing/{mailing_id}/events?since=0") as stream:
        return [
            (event["old_status"], event["status"])
            for event in [await stream.next_status() for _ in range(count)]
        ]


async def test_a_receipt_in_hand_is_recorded_with_the_sent_in_one_transaction(
    api: httpx.AsyncClient, engine: AsyncEngine, smsc: Smsc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SMSC reports 10 ms after its submit_sm_resp, before the writer (its interval made a
    minute here) has recorded the message; the held receipt has the writer write at once, and
    it writes ``sent`` and ``delivered`` in one transaction: one row write, both events in
    order, the part with its state; the receipt is acknowledged after that commit."""
    monkeypatch.setattr(dispatcher, "FLUSH_INTERVAL", 60.0)
    mailing_id = await arrange(
        api, [client(1, None, phone="+79161234590")], channels=[2], sms_text="Заказ готов"
    )
    inbox = ReceiptInbox(create_sessionmaker(engine))
    await send_until_settled(engine, smsc, inbox, seconds=15)

    found = await statuses(engine)
    assert found["+79161234590"]["status"] == "delivered"
    assert found["+79161234590"]["reason"] == "DELIVRD err:000"
    assert inbox.counts["with_sent"] == 1, "written with the sent, not after it"
    assert (inbox.counts["received"], inbox.counts["matched"], inbox.counts["settled"]) == (1, 1, 1)
    history = await _history(engine, "+79161234590")
    assert [row[:3] for row in history] == [
        ("sending", "sent", None),
        ("sent", "delivered", "DELIVRD err:000"),
    ]
    (_, _, _, sent_at, sent_in), (_, _, _, delivered_at, delivered_in) = history
    assert sent_at == delivered_at, "stamped by one write"
    assert sent_in == delivered_in, "one transaction (PostgreSQL: the same xmin)"
    async with engine.connect() as connection:
        message = (
            await connection.execute(select(Message.sent_at, Message.updated_at, Message.id))
        ).one()
        part = (await connection.execute(select(MessagePart.state, MessagePart.receipt_at))).one()
    assert message.sent_at == message.updated_at == sent_at
    assert tuple(part) == ("DELIVRD", message.sent_at)
    assert await _waiting_rows(engine) == []
    assert [answer["status"] for answer in smsc.of("deliver_sm_resp")] == [0]
    assert await _streamed(api, mailing_id, 2) == [
        ("sending", "sent"),
        ("sent", "delivered"),
    ]


async def test_a_receipt_that_comes_after_the_sent_is_recorded_still_settles(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The SMSC reports a second after its submit_sm_resp: the writer has recorded the message
    ``sent`` by then (every 0.2 s), and the receipt is written in a transaction of its own."""
    smsc = await start_smsc(receipt_delay_ms=1000)
    try:
        mailing_id = await arrange(
            api, [client(1, None, phone="+79161234513")], channels=[2], sms_text="Заказ готов"
        )
        inbox = ReceiptInbox(create_sessionmaker(engine))
        await send_until_settled(engine, smsc, inbox, seconds=15)
        answers = [answer["status"] for answer in smsc.of("deliver_sm_resp")]
    finally:
        await smsc.stop()
    found = await statuses(engine)
    assert found["+79161234513"]["status"] == "undelivered"
    assert found["+79161234513"]["reason"] == "UNDELIV err:001"
    assert inbox.counts["with_sent"] == 0
    assert (inbox.counts["received"], inbox.counts["matched"], inbox.counts["settled"]) == (1, 1, 1)
    history = await _history(engine, "+79161234513")
    assert [row[:3] for row in history] == [
        ("sending", "sent", None),
        ("sent", "undelivered", "UNDELIV err:001"),
    ]
    assert history[0][3] < history[1][3], "two writes"
    assert answers == [0]
    assert await _streamed(api, mailing_id, 2) == [
        ("sending", "sent"),
        ("sent", "undelivered"),
    ]


async def test_receipts_in_hand_follow_the_rules_of_parts(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """``queue.record`` with the receipts in hand for some parts of a long SMS: the message
    stays ``sent`` until every part is delivered (the later receipt settles it the usual way);
    a final state is not undone by a later intermediate report in the same hand."""
    claimed = await _claimed_sms(api, engine)
    parts = ("L1", "L2")
    states, settled = receipts.in_hand(
        parts,
        {"L1": [DeliveryReport("L1", "delivrd", "000"), DeliveryReport("L1", "ENROUTE")]},
    )
    assert states == (("DELIVRD", "000"), (None, None))
    assert settled is None, "part 2 is not reported yet"
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        written = await queue.record(
            session,
            sent=[queue.SentResult(claimed.id, "L1", "OK", 2, parts, states, settled)],
            retries=[],
            failed=[],
            now=utcnow(),
        )
    assert written == {claimed.id}
    found = await statuses(engine)
    assert found["+79161234500"]["status"] == "sent"
    async with engine.connect() as connection:
        recorded = (
            await connection.execute(
                select(MessagePart.peer_message_id, MessagePart.state).order_by(MessagePart.part)
            )
        ).all()
    assert [tuple(row) for row in recorded] == [("L1", "DELIVRD"), ("L2", None)]
    async with sessionmaker() as session, session.begin():
        later = await receipts.apply(
            session, reports=[DeliveryReport("L2", "DELIVRD", "000")], now=utcnow()
        )
    assert later.settled == [claimed.id]
    assert [row[:2] for row in await _history(engine, "+79161234500")] == [
        ("sending", "sent"),
        ("sent", "delivered"),
    ]
    # Any part undelivered settles the message at once, the others unreported.
    assert receipts.in_hand(parts, {"L2": [DeliveryReport("L2", "UNDELIV", "001")]})[1] == (
        "undelivered",
        "UNDELIV err:001",
    )


async def test_receipts_in_hand_for_a_message_no_longer_sending_are_not_written(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A claim that another worker has taken over is that worker's to record: ``record``
    leaves the row, reports the receipts unwritten (the inbox gives them back to its usual
    path) and writes the parts without their states."""
    claimed = await _claimed_sms(api, engine)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await queue.release(session, ids=[claimed.id], now=utcnow())
    states, settled = receipts.in_hand(("N1",), {"N1": [DeliveryReport("N1", "DELIVRD")]})
    async with sessionmaker() as session, session.begin():
        written = await queue.record(
            session,
            sent=[queue.SentResult(claimed.id, "N1", "OK", 1, ("N1",), states, settled)],
            retries=[],
            failed=[],
            now=utcnow(),
        )
    assert written == set()
    found = await statuses(engine)
    assert found["+79161234500"]["status"] == "queued"
    async with engine.connect() as connection:
        state = await connection.scalar(select(MessagePart.state))
    assert state is None
    assert await _history(engine, "+79161234500") == [], "no event: nothing changed"


async def test_receipts_taken_but_not_written_go_back_to_the_inbox(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The writer took a held receipt, but its batch could not record the message (no longer
    ``sending``): ``committed`` gives it back, and the inbox writes it to its part the usual
    way and answers it. One the writer drops (cancelled) is left unanswered for the SMSC."""
    claimed = await _claimed_sms(api, engine)
    sessionmaker = create_sessionmaker(engine)
    async with sessionmaker() as session, session.begin():
        await queue.release(session, ids=[claimed.id], now=utcnow())
    inbox = ReceiptInbox(sessionmaker, hold=60)
    stop = asyncio.Event()
    task = asyncio.create_task(inbox.run(stop))
    try:
        answer = inbox.receive(_Receipt("G1", sent_here=True))  # type: ignore[arg-type]
        dropped = inbox.receive(_Receipt("G2", sent_here=True))  # type: ignore[arg-type]
        assert inbox.take(["G9"]) is None, "nothing held for it"
        in_hand = inbox.take(["G1"])
        assert in_hand is not None
        assert [report.state for report in in_hand.reports["G1"]] == ["DELIVRD"]
        assert inbox.take(["G1"]) is None, "taken once"
        states, settled = receipts.in_hand(("G1",), in_hand.reports)
        async with sessionmaker() as session, session.begin():
            written = await queue.record(
                session,
                sent=[queue.SentResult(claimed.id, "G1", "OK", 1, ("G1",), states, settled)],
                retries=[],
                failed=[],
                now=utcnow(),
            )
        assert written == set()
        in_hand.committed([], settled=0)
        await asyncio.wait_for(answer, 5)
        assert answer.exception() is None
        other = inbox.take(["G2"])
        assert other is not None
        other.cancel()
        assert dropped.cancelled()
    finally:
        stop.set()
        await task
    async with engine.connect() as connection:
        state = await connection.scalar(select(MessagePart.state))
    assert state == "DELIVRD", "written by the inbox"
    assert inbox.counts["with_sent"] == 0
    assert (inbox.counts["received"], inbox.counts["matched"]) == (1, 1)
    found = await statuses(engine)
    assert found["+79161234500"]["status"] == "queued", "only a sent message settles"


async def test_a_receipt_that_comes_while_its_part_is_written_is_not_held_back(
    api: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The writer took the receipt held for a part; another receipt for that part (or for
    another part of the message) comes while the batch is being written and is held too.
    Once the batch commits it goes at once, not after ``hold``."""
    message_id = await _sent_sms(api, engine, parts=("H1",))  # recorded, the inbox not told
    sessionmaker = create_sessionmaker(engine)
    inbox = ReceiptInbox(sessionmaker, hold=60)
    stop = asyncio.Event()
    task = asyncio.create_task(inbox.run(stop))
    try:
        first = inbox.receive(_Receipt("H1", sent_here=True))  # type: ignore[arg-type]
        in_hand = inbox.take(["H1"])
        assert in_hand is not None
        copy = inbox.receive(_Receipt("H1", sent_here=True))  # type: ignore[arg-type]
        in_hand.committed(["H1"], settled=0)  # as if written with the sent
        assert first.done()
        await asyncio.wait_for(copy, 5)
        assert copy.exception() is None
    finally:
        stop.set()
        await task
    assert inbox.counts["with_sent"] == 1
    found = await statuses(engine)
    assert found["+79161234500"]["status"] == "delivered", "the copy settled it"
    assert message_id
