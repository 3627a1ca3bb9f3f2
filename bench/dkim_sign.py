"""CPU per email signed with DKIM, beside the CPU to compose it.

A typical message of a mailing (bench/compose.py's: Cyrillic From, Subject and ~1 KB of text,
with an HTML alternative) is composed, then signed with an RSA key the way the SMTP transport
signs it (``channels.dkim.sign``: relaxed/relaxed, the key cached), N times each, timed by CPU
time (``time.process_time``), best of a few rounds. dkimpy does RSA in pure Python, so the
signature, not the hashing, is most of the cost; a 2048-bit key is the size receivers expect.

    .venv/bin/python bench/dkim_sign.py [--messages N] [--rounds R] [--bits 2048]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from compose import HTML, SENDER, SUBJECT, TEXT

from rassylka.channels import dkim
from rassylka.channels.base import ChannelKind, OutboundMessage
from rassylka.channels.email_message import compose, parse_sender


def best(rounds: int, count: int, work: Callable[[], object]) -> float:
    """The least CPU seconds per call over ``rounds`` rounds of ``count`` calls."""
    figures = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(count):
            work()
        figures.append((time.process_time() - started) / count)
    return min(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bits", type=int, default=2048)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "key.pem"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(path), str(options.bits)],
            check=True,
            capture_output=True,
        )
        key = dkim.DkimKey("shop.example.ru", "rassylka", str(path))
        sender = parse_sender(SENDER)
        message = OutboundMessage(
            id=1,
            kind=ChannelKind.EMAIL,
            to="ivan.petrov@example.ru",
            subject=SUBJECT,
            text=TEXT,
            html=HTML,
            headers={"List-Unsubscribe": "<https://shop.example.ru/u/abc>"},
            dkim=key,
        )
        data = compose(message, sender=sender).as_bytes(eight_bit=True)
        composing = best(
            options.rounds,
            options.messages,
            lambda: compose(message, sender=sender).as_bytes(eight_bit=True),
        )
        signing = best(options.rounds, options.messages, lambda: dkim.sign(data, key))
    print(f"message: {len(data)} bytes, RSA {options.bits} bits, {options.messages} messages")
    print(f"compose: {composing * 1e3:.3f} ms CPU per message")
    print(f"sign:    {signing * 1e3:.3f} ms CPU per message")
    print(f"messages/s one core can sign: {1 / signing:,.0f}")
    print(f"sign ÷ compose: {signing / composing:.1f}")


if __name__ == "__main__":
    main()
