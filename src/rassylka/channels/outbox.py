"""The outbox transport: messages written to a directory instead of sent.

It carries email and SMS when neither SMTP nor SMPP is configured (the embedded default, ``make
run``); what it has written counts as sent. Under the outbox directory:

    email/2025-03-01/142501.123456-42-1.eml   an email: the bytes SMTP would carry (CRLF)
    sms.jsonl                                 one JSON object per line per SMS

An email file is named by the UTC time it was written (so a listing is in order), the message
row id and a number that keeps the name unique. It is written under a hidden temporary name,
fsynced, then hard-linked to its final name, which fails instead of replacing a file that is
there already (a retry, another worker, the clock set back), and the next number is tried.
Where the file system has no hard links the name is reserved with ``O_EXCL`` and the temporary
file renamed over it, so a reader may see it empty for an instant. Either way a reader never
sees half a message and nothing is overwritten.

An SMS line is ``{"id", "to", "source", "text", "parts", "coding", "at"}``: the message row
id, the recipient, the sender (the project's, else the configured one) and text as given, the
parts and coding an SMSC would get (``sms_text``), and the UTC
time of writing. Each line goes in one ``write`` to the file opened for appending, under a lock
per channel; a batch is fsynced before it counts as sent.

The file work of a batch runs in one worker thread. A disk error (permission denied, disk full,
read-only file system) is a ``TransientChannelError`` with the system's message; a message that
cannot be built (an invalid address, an SMS longer than 255 parts) is a
``PermanentChannelError``. A cancelled ``send`` cannot stop its thread, so what it was writing
may still appear: the messages are then retried and written twice, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rassylka.channels import dkim
from rassylka.channels.base import (
    Accepted,
    ChannelError,
    ChannelKind,
    OutboundMessage,
    Outcome,
    PermanentChannelError,
    TransientChannelError,
)
from rassylka.channels.email_message import MessageIds, Senders, compose
from rassylka.channels.sms_text import SmsTooLongError, encode_sms

if TYPE_CHECKING:
    from rassylka.config import Settings

EMAIL_DIRECTORY = "email"
SMS_FILE = "sms.jsonl"
DEFAULT_SENDER = "Rassylka <rassylka@localhost>"

# os.link's errors on a file system without hard links (FAT, some network and FUSE mounts).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
# Line breaks to str.splitlines that JSON leaves raw in a string: escaped, so that a line of
# sms.jsonl is a line to any reader.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class OutboxChannel:
    """The ``Channel`` of ``kind`` writing to ``directory`` (created when first written to).

    ``sender`` is the From of emails, as ``RASSYLKA_EMAIL_FROM``, ``reply_to`` their Reply-To
    and ``message_ids`` how their Message-IDs are made; ``sms_source`` the sender recorded for
    an SMS without its project's own; ``clock`` gives the time of writing (UTC), for tests.
    """

    def __init__(
        self,
        kind: ChannelKind,
        directory: Path | str,
        *,
        sender: str = DEFAULT_SENDER,
        reply_to: str | None = None,
        message_ids: MessageIds | None = None,
        sms_source: str = "",
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.kind = ChannelKind(kind)
        self._sms_source = sms_source
        self._directory = Path(directory).absolute()
        self._clock = clock
        self._senders: Senders | None = None
        if self.kind is ChannelKind.EMAIL:
            self._senders = Senders(sender, reply_to=reply_to, message_ids=message_ids)
        self._hard_links = True
        self._sms_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, kind: ChannelKind) -> OutboxChannel:
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        return cls(
            kind,
            settings.outbox_dir,
            sender=settings.email_from,
            reply_to=settings.email_reply_to,
            message_ids=MessageIds.keyed(secret),
            sms_source=settings.smpp_source_addr or settings.sms_http_source,
        )

    @property
    def directory(self) -> Path:
        return self._directory

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        if not messages:
            return []
        if self.kind is ChannelKind.EMAIL:
            return await asyncio.to_thread(self._write_emails, list(messages))
        outcomes: list[Outcome | None] = [None] * len(messages)
        lines: list[tuple[int, bytes, int]] = []
        now = self._clock()
        for index, message in enumerate(messages):
            try:
                line, parts = _sms_line(message, now, self._sms_source)
            except ChannelError as error:
                outcomes[index] = error
            else:
                lines.append((index, line, parts))
        if lines:
            async with self._sms_lock:
                written = await asyncio.to_thread(self._append_sms, lines)
            for index, outcome in written:
                outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    async def close(self) -> None:
        """Nothing stays open between batches."""

    def _write_emails(self, messages: list[OutboundMessage]) -> list[Outcome]:
        assert self._senders is not None
        outcomes: list[Outcome] = []
        written: dict[Path, list[int]] = {}  # directory → indexes of the files written there
        for message in messages:
            try:
                composed = compose(message, sender=self._senders.of(message))
                data = composed.as_bytes()
                if message.dkim is not None:
                    data = dkim.sign(data, message.dkim)
            except ChannelError as error:
                outcomes.append(error)
                continue
            now = self._clock()
            directory = self._directory / EMAIL_DIRECTORY / f"{now:%Y-%m-%d}"
            try:
                if directory not in written:
                    directory.mkdir(parents=True, exist_ok=True)
                    written[directory] = []
                path = self._publish(directory, f"{now:%H%M%S.%f}-{message.id}", data)
            except OSError as error:
                outcomes.append(_disk_error(error))
                continue
            written[directory].append(len(outcomes))
            reply = path.relative_to(self._directory).as_posix()
            outcomes.append(Accepted(peer_message_id=composed.message_id, reply=reply))
        for directory, indexes in written.items():
            if not indexes:
                continue
            try:
                _fsync_directory(directory)
            except OSError as error:
                # The files may not survive a crash, so they do not count as sent; a retry
                # writes them again under new names.
                for index in indexes:
                    outcomes[index] = _disk_error(error)
        return outcomes

    def _publish(self, directory: Path, stem: str, data: bytes) -> Path:
        """Write the message to ``<stem>-<n>.eml`` with the lowest ``n`` not taken."""
        temporary = directory / f".{stem}.{uuid.uuid4().hex}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o666)
        try:
            with open(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            number = 1
            while True:
                path = directory / f"{stem}-{number}.eml"
                try:
                    if self._hard_links:
                        os.link(temporary, path)
                    else:
                        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                        os.replace(temporary, path)
                    return path
                except FileExistsError:
                    number += 1
                except OSError as error:
                    if not (self._hard_links and error.errno in _NO_HARD_LINKS):
                        raise
                    self._hard_links = False
        finally:
            # Gone when renamed into place; if it cannot be removed, a stray temporary file
            # is left, and the message itself is in place or failed all the same.
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def _append_sms(self, lines: list[tuple[int, bytes, int]]) -> list[tuple[int, Outcome]]:
        path = self._directory / SMS_FILE
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_CLOEXEC, 0o666)
        except OSError as error:
            failure = _disk_error(error)
            return [(index, failure) for index, _, _ in lines]
        results: list[tuple[int, Outcome]] = []
        accepted: list[int] = []  # positions in ``results``
        try:
            for position, (index, line, parts) in enumerate(lines):
                try:
                    offset = _append_line(descriptor, line)
                except OSError as error:
                    # Disk full or the like: the rest of the batch would fail alike.
                    failure = _disk_error(error)
                    results.extend((rest, failure) for rest, _, _ in lines[position:])
                    break
                accepted.append(len(results))
                reply = f"{SMS_FILE} at byte {offset}"
                results.append((index, Accepted(peer_message_id=None, reply=reply, parts=parts)))
            if accepted:
                try:
                    os.fsync(descriptor)
                except OSError as error:
                    failure = _disk_error(error)
                    for position in accepted:
                        results[position] = (results[position][0], failure)
        finally:
            os.close(descriptor)
        return results


def _sms_line(message: OutboundMessage, now: datetime, source: str) -> tuple[bytes, int]:
    """The line of one SMS; ``source`` is the sender when the message names none."""
    if message.kind is not ChannelKind.SMS:
        raise PermanentChannelError(f"an {message.kind} message cannot go by SMS")
    try:
        encoded = encode_sms(message.text)
    except SmsTooLongError as error:
        raise PermanentChannelError(str(error)) from error
    except ValueError as error:  # a lone surrogate
        raise PermanentChannelError(f"cannot send the text as SMS: {error}") from error
    record = {
        "id": message.id,
        "to": message.to,
        "source": message.source if message.source is not None else source,
        "text": message.text,
        "parts": len(encoded.parts),
        "coding": encoded.coding.value,
        "at": now.astimezone(UTC).isoformat(timespec="milliseconds"),
    }
    text = json.dumps(record, ensure_ascii=False).translate(_LINE_BREAKS)
    return (text + "\n").encode("utf-8"), len(encoded.parts)


def _append_line(descriptor: int, line: bytes) -> int:
    """Append ``line`` in one write; its offset in the file. A short write (the disk filled
    up midway) is cut off again, so that no half line is left for the next one to follow
    (another process appending at that very moment would lose its line too)."""
    count = os.write(descriptor, line)
    end = os.lseek(descriptor, 0, os.SEEK_CUR)
    if count != len(line):
        os.ftruncate(descriptor, end - count)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return end - count


def _fsync_directory(directory: Path) -> None:
    """Make the new names in ``directory`` durable (POSIX; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _disk_error(error: OSError) -> TransientChannelError:
    return TransientChannelError(f"cannot write to the outbox: {error}")
