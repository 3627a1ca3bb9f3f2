"""CPU per email composed: the stdlib ``EmailMessage`` composer it replaced against ours.

A typical message of a mailing: From with a Cyrillic display name, To, a Cyrillic Subject of ~40
characters, Date, Message-ID, a List-Unsubscribe header, ~1 KB of Cyrillic text — alone, and
with an HTML alternative. Each is composed and flattened (as DATA carries it to a server with
8BITMIME) N times per composer, timed by CPU time (``time.process_time``), best of a few rounds.

    .venv/bin/python bench/compose.py [--messages N] [--rounds R]

``old_compose`` below is the composer as it was (kept here only, for this comparison and for
``tests/channels/test_email_message.py``, which checks the new one parses back the same).
"""

from __future__ import annotations

import argparse
import io
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.errors import NonASCIILocalPartDefect
from email.generator import BytesGenerator
from email.headerregistry import Address, AddressHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime

from rassylka.channels.base import ChannelKind, OutboundMessage, PermanentChannelError
from rassylka.channels.email_message import compose, parse_sender

_RESERVED_HEADERS = re.compile(r"(?i)^(content-.*|mime-version|bcc|resent-bcc)$")
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")
_HEADER_REGISTRY = HeaderRegistry()

SENDER = "Рассылка магазина <news@shop.example.ru>"
SUBJECT = "Скидка 20% только сегодня — не пропустите!"
PARAGRAPH = (
    "Здравствуйте, Иван Петрович! Мы подготовили для вас специальное предложение: "
    "скидка на все товары каталога действует до конца недели.\n"
)
TEXT = PARAGRAPH * 7  # ~1 KB of characters
HTML = "<html><body>" + "".join(f"<p>{line}</p>\n" for line in TEXT.splitlines()) + "</body></html>"


def old_compose(message: OutboundMessage, *, sender: str) -> tuple[EmailMessage, bool]:
    """The stdlib composer as it was: the message and whether it needs SMTPUTF8."""
    if message.kind is not ChannelKind.EMAIL:
        raise PermanentChannelError(f"an {message.kind} message cannot go by email")
    from_header = _ascii_domain(_parse_address(sender, "sender"))
    recipient = _ascii_domain(_parse_address(message.to, "recipient"))
    message_id = f"<{uuid.uuid4().hex}@{from_header.domain}>"
    mail = EmailMessage(policy=policy.SMTP)
    try:
        mail["From"] = from_header
        mail["To"] = recipient
        if message.subject is not None:
            mail["Subject"] = message.subject
        mail["Date"] = format_datetime(datetime.now(UTC))
        mail["Message-ID"] = message_id
        for name, value in message.headers.items():
            if not _FIELD_NAME.match(name) or _RESERVED_HEADERS.match(name):
                raise PermanentChannelError(f"header {name!r} cannot be set on a message")
            del mail[name]
            mail[name] = value
        mail.set_content(message.text)
        if message.html is not None:
            mail.add_alternative(message.html, subtype="html")
    except ValueError as error:
        raise PermanentChannelError(f"cannot build the message: {error}") from error
    utf8 = not (recipient.addr_spec.isascii() and from_header.addr_spec.isascii())
    return mail, utf8


def old_flatten(mail: EmailMessage, *, utf8: bool, eight_bit: bool) -> bytes:
    chosen = policy.SMTPUTF8 if utf8 else policy.SMTP
    if not eight_bit:
        chosen = chosen.clone(cte_type="7bit")
    buffer = io.BytesIO()
    BytesGenerator(buffer, policy=chosen).flatten(mail)
    return buffer.getvalue()


def _parse_address(value: str, role: str) -> Address:
    try:
        header = _HEADER_REGISTRY("To", value)
    except (ValueError, IndexError) as error:
        raise PermanentChannelError(f"invalid {role} address {value!r}") from error
    addresses = header.addresses if isinstance(header, AddressHeader) else ()
    defects = [d for d in header.defects if not isinstance(d, NonASCIILocalPartDefect)]
    if len(addresses) != 1 or defects:
        raise PermanentChannelError(f"{role} must be one valid address, not {value!r}")
    address = addresses[0]
    if not address.username or not address.domain:
        raise PermanentChannelError(f"invalid {role} address {value!r}")
    return address


def _ascii_domain(address: Address) -> Address:
    if address.domain.isascii():
        return address
    try:
        domain = address.domain.encode("idna").decode("ascii")
    except UnicodeError as error:
        raise PermanentChannelError(f"invalid domain in {address.addr_spec!r}") from error
    return Address(address.display_name, address.username, domain)


def messages(count: int, *, html: bool) -> list[OutboundMessage]:
    return [
        OutboundMessage(
            id=number,
            kind=ChannelKind.EMAIL,
            to=f"client-{number}@example.ru",
            subject=SUBJECT,
            text=TEXT,
            html=HTML if html else None,
            headers={"List-Unsubscribe": f"<mailto:unsubscribe+{number}@shop.example.ru>"},
        )
        for number in range(count)
    ]


def run_old(batch: list[OutboundMessage]) -> int:
    size = 0
    for message in batch:
        mail, utf8 = old_compose(message, sender=SENDER)
        size += len(old_flatten(mail, utf8=utf8, eight_bit=True))
    return size


def run_new(batch: list[OutboundMessage]) -> int:
    sender = parse_sender(SENDER)  # once per channel, as the transports do
    size = 0
    for message in batch:
        size += len(compose(message, sender=sender).as_bytes(eight_bit=True))
    return size


def cpu_per_message(
    run: Callable[[list[OutboundMessage]], int], batch: list[OutboundMessage], rounds: int
) -> tuple[float, int]:
    best = float("inf")
    size = 0
    for _ in range(rounds):
        started = time.process_time()
        size = run(batch)
        best = min(best, time.process_time() - started)
    return best / len(batch), size // len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print(f"compose + as_bytes, {args.messages:,} messages, CPU time, best of {args.rounds}")
    print()
    print(f"{'message':<14}{'composer':<10}{'bytes':>7}{'µs/msg':>10}{'msg/s':>10}{'ratio':>8}")
    print("-" * 59)
    for label, html in (("text", False), ("text + html", True)):
        batch = messages(args.messages, html=html)
        old, old_size = cpu_per_message(run_old, batch, args.rounds)
        new, new_size = cpu_per_message(run_new, batch, args.rounds)
        print(f"{label:<14}{'stdlib':<10}{old_size:>7,}{old * 1e6:>10.1f}{1 / old:>10,.0f}")
        print(
            f"{'':<14}{'direct':<10}{new_size:>7,}{new * 1e6:>10.1f}{1 / new:>10,.0f}"
            f"{old / new:>7.1f}×"
        )


if __name__ == "__main__":
    main()
