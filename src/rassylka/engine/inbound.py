"""Inbound SMS (texts handsets send to our senders): a STOP word opts the number out of SMS.

The SMPP channel hands every mobile-originated deliver_sm to ``InboundTexts.receive`` and
answers the SMSC only when it is done, so an opt-out is committed before the SMSC hears "OK"
(if it fails, the SMSC is told to try again; the opt-out is idempotent).

Which texts are STOP: the whole text, upper- or lower-case, without spaces and punctuation,
is one of the stop words (``RASSYLKA_SMS_STOP_WORDS``): «стоп!», « Stop », «С Т О П» are;
«STOP 123» and «не стоп» are not (the words a text holds besides the stop word could mean
anything: only an unambiguous reply opts out).

Which projects: those whose own ``sms_sender`` is the number or name the text was sent to
(``+`` and digits compare by their digits, a name by its letters in any case); if none is,
every project without its own sender (they all send as the configured one). Each project's
opt-out is its own transaction (``clients.optout.opt_out`` writes its events last).

Any other text is acknowledged and logged without its content (privacy).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import phonenumbers
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rassylka.channels.smpp import TON_INTERNATIONAL, InboundSms
from rassylka.clients.optout import opt_out
from rassylka.db import utcnow
from rassylka.mailings.models import Channel
from rassylka.projects import repository as projects

if TYPE_CHECKING:
    from rassylka.config import Settings

logger = logging.getLogger(__name__)


def _squeezed(text: str) -> str:
    """``text`` as stop words compare: letters and digits only, case folded."""
    return "".join(char for char in text if char.isalnum()).casefold()


@dataclass(frozen=True)
class StopWords:
    """The stop words, by their compared form → as configured (for the opt-out's source)."""

    words: dict[str, str]

    @classmethod
    def parse(cls, setting: str) -> StopWords:
        """From the comma list of ``RASSYLKA_SMS_STOP_WORDS``; blank items are ignored."""
        words: dict[str, str] = {}
        for item in setting.split(","):
            word = item.strip()
            if key := _squeezed(word):
                words.setdefault(key, word)
        return cls(words)

    def match(self, text: str) -> str | None:
        """The stop word ``text`` is (as configured), or None."""
        return self.words.get(_squeezed(text))


def sender_key(sender: str) -> str:
    """A sender as the destination of an inbound text is compared with it: a number by its
    digits (``+79001112233`` and ``79001112233`` are one), a name case-insensitively."""
    stripped = sender.strip()
    digits = stripped.removeprefix("+")
    if digits.isdigit():
        return digits
    return stripped.casefold()


def phone_of(inbound: InboundSms, region: str) -> str:
    """The sending number in E.164: an international one (TON 1) as ``+`` and its digits,
    another read in ``region``; as given if it is no valid number."""
    address = inbound.source.strip()
    if inbound.source_ton == TON_INTERNATIONAL and address.isdigit():
        address = f"+{address}"
    try:
        number = phonenumbers.parse(address, region)
    except phonenumbers.NumberParseException:
        return address
    if not phonenumbers.is_valid_number(number):
        return address
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def projects_written_to(senders: Iterable[tuple[int, str | None]], destination: str) -> list[int]:
    """The projects an inbound text to ``destination`` was meant for (see the docstring)."""
    senders = list(senders)
    key = sender_key(destination)
    own = [project_id for project_id, sender in senders if sender and sender_key(sender) == key]
    if own:
        return own
    return [project_id for project_id, sender in senders if not sender]


@dataclass(frozen=True)
class Handled:
    """What an inbound text did: the stop word it is (None: none), the projects it was meant
    for and those of them where it changed something (a repeat changes nothing)."""

    word: str | None
    projects: tuple[int, ...] = ()
    changed: tuple[int, ...] = ()


class InboundTexts:
    """The handler of inbound SMS: ``receive`` is the SMPP channel's ``on_inbound``; the HTTP
    provider's inbound callback calls ``handle``."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        stop_words: StopWords,
        region: str,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._stop_words = stop_words
        self._region = region

    @classmethod
    def from_settings(
        cls, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
    ) -> InboundTexts:
        return cls(
            sessionmaker,
            stop_words=StopWords.parse(settings.sms_stop_words),
            region=settings.default_phone_region,
        )

    async def receive(self, inbound: InboundSms) -> None:
        """Opt the sender out if the text is a stop word; returns once that is committed."""
        await self.handle(inbound)

    async def handle(self, inbound: InboundSms) -> Handled:
        """``receive``, saying what it did."""
        word = self._stop_words.match(inbound.text)
        if word is None:
            logger.info(
                "inbound SMS from %s to %r (%d characters): not a stop word; nothing to do",
                inbound.source,
                inbound.destination,
                len(inbound.text),
            )
            return Handled(None)
        phone = phone_of(inbound, self._region)
        async with self._sessionmaker() as session:
            project_ids = projects_written_to(
                await projects.sms_senders(session), inbound.destination
            )
        source = f"SMS «{word}»"
        changed = []
        for project_id in project_ids:
            async with self._sessionmaker() as session, session.begin():
                done = await opt_out(
                    session,
                    project_id=project_id,
                    channel=Channel.SMS,
                    address=phone,
                    source=source,
                    now=utcnow(),
                )
            if done.changed:
                changed.append(project_id)
        logger.info(
            "inbound SMS %s from %s to %r: opted out of SMS in projects %s (changed: %s)",
            source,
            phone,
            inbound.destination,
            project_ids,
            changed,
        )
        return Handled(word, tuple(project_ids), tuple(changed))
