"""``rassylka send-test``: one message through each transport this process's settings choose
(``channels.registry.open_channels``), to see that SMTP or SMPP is set up right before a
mailing depends on it. The API plays no part."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from rassylka.channels.base import (
    Accepted,
    Channel,
    ChannelError,
    ChannelKind,
    OutboundMessage,
    TransientChannelError,
)
from rassylka.channels.registry import open_channels
from rassylka.clients.schemas import normalize_phone
from rassylka.config import Settings
from rassylka.console.api import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, CliFailure
from rassylka.mailings.models import Channel as MailingChannel

SUBJECT = "Rassylka: тестовое письмо"
TEXT = "Это тестовое сообщение Rassylka ({host}). Если оно дошло — канал настроен верно."


@dataclass(frozen=True)
class Attempt:
    kind: ChannelKind
    to: str
    transport: str
    outcome: Accepted | ChannelError

    @property
    def code(self) -> int:
        """0 sent; 3 when the peer never answered (no reply code: refused, timed out, cut);
        1 when it answered no."""
        if isinstance(self.outcome, Accepted):
            return EXIT_OK
        if isinstance(self.outcome, TransientChannelError) and self.outcome.code is None:
            return EXIT_UNREACHABLE
        return EXIT_FAILED


def settings() -> Settings:
    """The environment's settings as they are now (not the process's cached copy)."""
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"RASSYLKA_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors()
        )
        raise CliFailure(f"Неверные настройки: {problems}", EXIT_REFUSED) from None


def where(settings: Settings, kind: ChannelKind, channel: Channel) -> str:
    """The transport and its peer, as the user configured them."""
    name = type(channel).__name__
    if kind is ChannelKind.EMAIL and settings.smtp_host:
        return f"SMTP {settings.smtp_host}:{settings.smtp_port}"
    if kind is ChannelKind.SMS and settings.smpp_host:
        return f"SMPP {settings.smpp_host}:{settings.smpp_port}"
    if kind is ChannelKind.SMS and settings.sms_http_url:
        return f"HTTP {settings.sms_http_url}"
    return f"{name} (папка {settings.outbox_dir}: ни SMTP, ни SMPP не настроены)"


async def send_test(settings: Settings, *, email: str | None, phone: str | None) -> list[Attempt]:
    if email is None and phone is None:
        raise CliFailure("Укажите --email, --phone или оба", EXIT_REFUSED)
    wanted: list[tuple[ChannelKind, str]] = []
    if email is not None:
        wanted.append((ChannelKind.EMAIL, email.strip()))
    if phone is not None:
        try:
            wanted.append((ChannelKind.SMS, normalize_phone(phone)))
        except ValueError as error:
            raise CliFailure(str(error), EXIT_REFUSED) from None
    channels = open_channels(settings)
    text = TEXT.format(host=socket.gethostname())
    attempts: list[Attempt] = []
    try:
        for kind, to in wanted:
            channel = channels[
                MailingChannel.EMAIL if kind is ChannelKind.EMAIL else MailingChannel.SMS
            ]
            message = OutboundMessage(
                id=0,
                kind=kind,
                to=to,
                text=text,
                subject=SUBJECT if kind is ChannelKind.EMAIL else None,
            )
            [outcome] = await channel.send([message])
            attempts.append(Attempt(kind, to, where(settings, kind, channel), outcome))
    finally:
        for channel in channels.values():
            await channel.close()
    return attempts


def report(attempts: list[Attempt], *, out: Console) -> int:
    """One line per message; the exit code is the worst of theirs."""
    for attempt in attempts:
        head = f"{attempt.kind.value} → {attempt.to} через {attempt.transport}:"
        if isinstance(attempt.outcome, Accepted):
            peer_id = attempt.outcome.peer_message_id
            said = attempt.outcome.reply + (f", id {peer_id}" if peer_id else "")
            out.print(
                f"{escape(head)} [green]отправлено[/] ({escape(said)})",
                highlight=False,
                soft_wrap=True,
            )
        else:
            out.print(
                f"{escape(head)} [red]ошибка[/]: {escape(attempt.outcome.reply)}",
                highlight=False,
                soft_wrap=True,
            )
    return max((attempt.code for attempt in attempts), default=EXIT_OK)
