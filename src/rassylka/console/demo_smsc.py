"""A demo SMSC: the smallest SMPP 3.4 peer that lets ``rassylka demo`` show SMS reaching
"delivered" on a machine with no SMS provider. Not for anything but the demo.

It speaks with the project's own PDU codec (``channels.smpp``): it accepts any
bind_transceiver, answers enquire_link and unbind, takes every submit_sm (a message id each)
and, a moment later, sends a deliver_sm delivery receipt saying DELIVRD for it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from rassylka.channels.smpp import (
    Command,
    CommandStatus,
    Pdu,
    SmppDecodeError,
    Tlv,
    encode_pdu,
    read_pdu,
)

log = logging.getLogger(__name__)
RECEIPT_DELAY = 0.2
RECEIPT_ESM_CLASS = 0x04  # SMSC delivery receipt
DELIVERED = 2  # message_state DELIVERED


class DemoSmsc:
    """``await start()`` listens on ``host``: a free port unless one is given; ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.submitted = 0
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> DemoSmsc:
        self._server = await asyncio.start_server(self._session, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _own(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        sequence = itertools.count(1)
        try:
            while True:
                try:
                    pdu = await read_pdu(reader)
                except SmppDecodeError as error:
                    if error.sequence is None:
                        return
                    writer.write(
                        encode_pdu(Pdu(Command.GENERIC_NACK, error.sequence, error.status))
                    )
                    continue
                if pdu.command is Command.BIND_TRANSCEIVER:
                    params = {"system_id": "demo-smsc"}
                    writer.write(encode_pdu(Pdu(pdu.command.response, pdu.sequence, 0, params)))
                elif pdu.command is Command.ENQUIRE_LINK:
                    writer.write(encode_pdu(Pdu(Command.ENQUIRE_LINK_RESP, pdu.sequence)))
                elif pdu.command is Command.SUBMIT_SM:
                    message_id = f"demo{next(self._ids)}"
                    self.submitted += 1
                    params = {"message_id": message_id}
                    writer.write(encode_pdu(Pdu(Command.SUBMIT_SM_RESP, pdu.sequence, 0, params)))
                    self._own(
                        self._receipt(writer, pdu, message_id, next(sequence)),
                        f"demo-smsc-receipt-{message_id}",
                    )
                elif pdu.command is Command.UNBIND:
                    writer.write(encode_pdu(Pdu(Command.UNBIND_RESP, pdu.sequence)))
                    await writer.drain()
                    return
                elif not pdu.command.is_response:  # nothing else is served here
                    status = CommandStatus.ESME_RINVCMDID
                    writer.write(encode_pdu(Pdu(Command.GENERIC_NACK, pdu.sequence, status)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    async def _receipt(
        self, writer: asyncio.StreamWriter, submit: Pdu, message_id: str, sequence: int
    ) -> None:
        await asyncio.sleep(RECEIPT_DELAY)
        stamp = datetime.now(UTC).strftime("%y%m%d%H%M")
        text = (
            f"id:{message_id} sub:001 dlvrd:001 submit date:{stamp} done date:{stamp}"
            " stat:DELIVRD err:000 text:"
        )
        receipt = Pdu(
            Command.DELIVER_SM,
            sequence,
            0,
            {
                "source_addr_ton": submit.number("dest_addr_ton"),
                "source_addr_npi": submit.number("dest_addr_npi"),
                "source_addr": submit.text("destination_addr"),
                "dest_addr_ton": submit.number("source_addr_ton"),
                "dest_addr_npi": submit.number("source_addr_npi"),
                "destination_addr": submit.text("source_addr"),
                "esm_class": RECEIPT_ESM_CLASS,
                "short_message": text.encode("ascii"),
            },
            (
                (Tlv.RECEIPTED_MESSAGE_ID, message_id.encode("ascii") + b"\0"),
                (Tlv.MESSAGE_STATE, bytes([DELIVERED])),
            ),
        )
        try:
            writer.write(encode_pdu(receipt))
            await writer.drain()
        except ConnectionError:
            log.info("demo SMSC: the receipt of %s found the connection closed", message_id)
