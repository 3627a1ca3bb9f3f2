"""DKIM signing of outgoing email (RFC 6376) with a project's key, through ``dkimpy``.

A project names its signing domain, selector and the path of a PEM private key on the sending
host; the key is read once per path (and again only when the file changes), so a message pays
for the signature alone.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Final

import dkim
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from rassylka.channels.base import PermanentChannelError

# RFC 6376 §5.4.1's list, as far as our messages carry them. Reply-To and List-Unsubscribe*
# are signed when present so a relay cannot add or change where replies and opt-outs go.
SIGNED_HEADERS: Final = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"reply-to",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)
# relaxed/relaxed: survives the re-folding and trailing-space changes relays make.
_CANONICALIZE: Final = (b"relaxed", b"relaxed")


@dataclass(frozen=True, slots=True)
class DkimKey:
    """Where a message's signature comes from: ``selector._domainkey.domain`` in DNS holds
    the public half of the key at ``key_path``."""

    domain: str
    selector: str
    key_path: str


class DkimKeyError(ValueError):
    """The key file is missing, unreadable, or not an RSA private key in PEM."""


# path → (mtime_ns, size, PEM bytes): a key replaced on disk is read again.
_keys: dict[str, tuple[int, int, bytes]] = {}


def read_key(path: str) -> bytes:
    """The PEM bytes of the RSA private key at ``path``, checked to parse; ``DkimKeyError`` if
    not (its message is English, for logs and a failed message's reason)."""
    try:
        status = os.stat(path)
        cached = _keys.get(path)
        if cached is not None and cached[:2] == (status.st_mtime_ns, status.st_size):
            return cached[2]
        if not stat.S_ISREG(status.st_mode):
            # A FIFO or a device (/dev/stdin) would block the process on read.
            raise DkimKeyError(f"the DKIM key {path} is not a regular file")
        with open(path, "rb") as file:
            pem = file.read(1 << 16)
    except OSError as error:
        raise DkimKeyError(f"cannot read the DKIM key {path}: {error.strerror or error}") from error
    check_key(pem, path=path)
    _keys[path] = (status.st_mtime_ns, status.st_size, pem)
    return pem


def check_key(pem: bytes, *, path: str) -> None:
    try:
        key = parse_pem_private_key(pem)
    except (UnparsableKeyError, ValueError, IndexError, TypeError) as error:
        raise DkimKeyError(f"{path} is not an RSA private key in PEM") from error
    if key["modulus"].bit_length() < 1024:
        raise DkimKeyError(f"{path}: an RSA key under 1024 bits is refused by receivers")


def usable(key: DkimKey) -> None:
    """``PermanentChannelError`` unless ``key`` can sign (read now, or cached)."""
    try:
        read_key(key.key_path)
    except DkimKeyError as error:
        raise PermanentChannelError(f"DKIM: {error}") from error


def sign(data: bytes, key: DkimKey) -> bytes:
    """``data`` (a whole message, CRLF line ends) with its DKIM-Signature header first.

    Raises ``PermanentChannelError`` when the key cannot be used: retrying the same message
    with the same key cannot help, and sending it unsigned is not what the project asked for.
    """
    try:
        pem = read_key(key.key_path)
        header: bytes = dkim.sign(
            data,
            key.selector.encode(),
            key.domain.encode(),
            pem,
            canonicalize=_CANONICALIZE,
            include_headers=_present(data),
        )
    except (DkimKeyError, dkim.DKIMException) as error:
        raise PermanentChannelError(f"DKIM: {error}") from error
    return header + data


def _present(data: bytes) -> list[bytes]:
    """The fields of ``SIGNED_HEADERS`` the head of ``data`` has: an absent one is left out
    (signing it would forbid adding it later, which a relay never does to ours anyway)."""
    head = b"\r\n" + data.split(b"\r\n\r\n", 1)[0].lower()
    return [name for name in SIGNED_HEADERS if b"\r\n" + name + b":" in head]
