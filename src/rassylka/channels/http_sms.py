"""SMS through a provider's HTTP API, for providers without SMPP.

One POST per message to ``sms_http_url``: a JSON object (``sms_http_format=json``) or an HTML
form (``form``) of the configured fields, each a template where ``{to}``, ``{text}``,
``{source}`` (the project's sender, else ``sms_http_source``) and ``{id}`` (the message row id)
are replaced. Nothing else in a template is special and the values put in are not looked at
again, so a text with braces goes as it is; a field that comes out empty (no sender, say) is
left out, for the provider's default to apply. Up to ``concurrency`` requests run at once over
one keep-alive connection pool.

How an answer is judged:

    no connection, connection lost, timeout       transient: retried later
    408, 429, 5xx                                 transient; the reply keeps Retry-After
    other 4xx, 3xx (redirects are not followed)   permanent: the provider refuses this request
    2xx, success field set, and the answer is     permanent: the provider took the request but
      not JSON, lacks the field, or has another     says it will not send this message (a
      value in it                                   balance run out, a number it refuses), or
                                                    answers in a way we cannot read as success
    other 2xx                                     accepted; the provider's id from the id field

A 2xx answer we cannot read as success is permanent rather than transient on purpose: the
provider may well have sent the message (a configuration that expects JSON from a provider
answering ``OK``), and retrying would send it to the person again at every attempt; a failure
shows the answer in the message's reply and counts towards pausing the mailing. A timeout after
the request went out is transient all the same, so that message may arrive twice.

The reply kept is the status line and the answer's first 500 characters; it never holds the
URL's path or query, where some providers take the API key.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal

import httpx

from rassylka.channels.base import (
    Accepted,
    ChannelError,
    ChannelKind,
    DeliveryReport,
    OutboundMessage,
    Outcome,
    PermanentChannelError,
    TransientChannelError,
    send_each,
)
from rassylka.channels.sms_text import SmsTooLongError, encode_sms

if TYPE_CHECKING:
    from rassylka.config import Settings

HttpSmsFormat = Literal["json", "form"]

PLACEHOLDERS = ("to", "text", "source", "id")
DEFAULT_FIELDS: Mapping[str, str] = {"to": "{to}", "text": "{text}", "from": "{source}"}
REPLY_EXCERPT = 500

_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
# What looks like a placeholder, to catch a misspelt one when the configuration is read.
_NAMED_BRACES = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MISSING = object()


@dataclass(frozen=True)
class HttpSmsConfig:
    url: str
    format: HttpSmsFormat = "json"
    headers: Mapping[str, str] = field(default_factory=dict)
    """Sent with every request, e.g. ``{"Authorization": "Bearer …"}``."""
    fields: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_FIELDS))
    """Request field → template with ``{to}``, ``{text}``, ``{source}``, ``{id}``."""
    source: str = ""
    success_field: str | None = None
    """Dotted path in the JSON answer (``result.status``, ``messages.0.status``) whose value
    must be ``success_value``; ``None``: any 2xx answer is success."""
    success_value: str = "ok"
    """Compared as text; JSON ``true``, ``false``, ``null`` and numbers as JSON writes them."""
    id_field: str | None = None
    """Dotted path in the JSON answer of the provider's message id."""
    timeout: float = 10.0
    concurrency: int = 8

    def __post_init__(self) -> None:
        url = httpx.URL(self.url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"the SMS provider URL must be http(s)://host/…, not {self.url!r}")
        if self.format not in ("json", "form"):
            raise ValueError(f"unknown SMS provider request format {self.format!r}")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.timeout <= 0:
            raise ValueError("timeout must be positive")
        if not self.fields:
            raise ValueError("the SMS provider request needs at least one field")
        for name, template in self.fields.items():
            unknown = set(_NAMED_BRACES.findall(template)) - set(PLACEHOLDERS)
            if unknown:
                raise ValueError(
                    f"field {name!r} of the SMS provider request uses {{{min(unknown)}}}; "
                    f"only {', '.join('{' + p + '}' for p in PLACEHOLDERS)} are known"
                )
        for path in (self.success_field, self.id_field):
            if path is not None and not all(path.split(".")):
                raise ValueError(f"invalid dotted path {path!r}")
        # Own copies: the caller's dicts changing later must not change a frozen config.
        object.__setattr__(self, "headers", dict(self.headers))
        object.__setattr__(self, "fields", dict(self.fields))

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpSmsConfig:
        if not settings.sms_http_url:
            raise ValueError("RASSYLKA_SMS_HTTP_URL is not set")
        return cls(
            url=settings.sms_http_url,
            format=settings.sms_http_format,
            headers=settings.sms_http_headers,
            fields=settings.sms_http_fields,
            source=settings.sms_http_source,
            success_field=settings.sms_http_success_field,
            success_value=settings.sms_http_success_value,
            id_field=settings.sms_http_id_field,
            timeout=settings.sms_http_timeout,
            concurrency=settings.sms_http_concurrency,
        )


class HttpSmsChannel:
    """The ``Channel`` for SMS over an HTTP API; ``transport`` replaces httpx's own."""

    kind = ChannelKind.SMS

    def __init__(
        self, config: HttpSmsConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._config = config
        url = httpx.URL(config.url)
        # Scheme, host and port only: the path or query may hold an API key.
        self._origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        self._limit = asyncio.Semaphore(config.concurrency)
        self._client = httpx.AsyncClient(
            headers=dict(config.headers),
            timeout=config.timeout,
            limits=httpx.Limits(
                max_connections=config.concurrency,
                max_keepalive_connections=config.concurrency,
            ),
            transport=transport,
        )

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        return await send_each(messages, self._send_one, name="http-sms")

    async def close(self) -> None:
        await self._client.aclose()

    async def _send_one(self, message: OutboundMessage) -> Outcome:
        try:
            parts = _count_parts(message)
        except ChannelError as error:
            return error
        values = {
            "to": message.to,
            "text": message.text,
            "source": self._config.source if message.source is None else message.source,
            "id": str(message.id),
        }
        body = {
            name: value
            for name, template in self._config.fields.items()
            if (value := render(template, values))
        }
        content: dict[str, Any] = (
            {"json": body} if self._config.format == "json" else {"data": body}
        )
        async with self._limit:
            try:
                response = await self._client.post(self._config.url, **content)
            except httpx.TimeoutException as error:
                return TransientChannelError(
                    f"no answer from {self._origin} within {self._config.timeout:g} s"
                    f" ({type(error).__name__})"
                )
            except httpx.HTTPError as error:
                return TransientChannelError(
                    f"cannot reach {self._origin}: {error or type(error).__name__}"
                )
        return self._judge(response, parts)

    def _judge(self, response: httpx.Response, parts: int) -> Outcome:
        status = response.status_code
        reply = _reply(response)
        if status in (HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS) or status >= 500:
            return TransientChannelError(reply, code=status)
        if not 200 <= status < 300:
            return PermanentChannelError(reply, code=status)
        config = self._config
        answer: Any = _MISSING
        if config.success_field is not None or config.id_field is not None:
            try:
                answer = json.loads(response.content)
            except ValueError:
                answer = _MISSING
        if config.success_field is not None:
            if answer is _MISSING:
                return PermanentChannelError(
                    f"{reply} (not JSON; expected {config.success_field!r} in it)", code=status
                )
            value = _lookup(answer, config.success_field)
            if value is _MISSING:
                return PermanentChannelError(
                    f"{reply} (no {config.success_field!r} in the answer)", code=status
                )
            if _as_text(value) != config.success_value:
                return PermanentChannelError(reply, code=status)
        peer_id = None
        if config.id_field is not None and answer is not _MISSING:
            value = _lookup(answer, config.id_field)
            if value is not _MISSING and value is not None and not isinstance(value, dict | list):
                peer_id = _as_text(value)
        return Accepted(peer_message_id=peer_id, reply=reply, parts=parts)


def render(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each ``{to}``, ``{text}``, ``{source}``, ``{id}`` replaced, in one
    pass: whatever else has braces, in the template or in the values, stays as it is."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _lookup(answer: Any, path: str) -> Any:
    """The value at a dotted ``path`` (object keys, list indexes) in a JSON answer, or
    ``_MISSING``."""
    current = answer
    for key in path.split("."):
        if isinstance(current, dict) and key in current:
            current = current[key]
        elif isinstance(current, list) and key.isascii() and key.isdigit():
            index = int(key)
            if index >= len(current):
                return _MISSING
            current = current[index]
        else:
            return _MISSING
    return current


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _count_parts(message: OutboundMessage) -> int:
    if message.kind is not ChannelKind.SMS:
        raise PermanentChannelError(f"an {message.kind} message cannot go by SMS")
    try:
        return len(encode_sms(message.text).parts)
    except SmsTooLongError as error:
        raise PermanentChannelError(str(error)) from error
    except ValueError as error:  # a lone surrogate
        raise PermanentChannelError(f"cannot send the text as SMS: {error}") from error


def _reply(response: httpx.Response) -> str:
    """The status line, Retry-After or Location if given, and the start of the answer."""
    status = response.status_code
    phrase = response.reason_phrase
    if not phrase:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
    reply = f"{status} {phrase}".rstrip()
    for header in ("Retry-After", "Location"):
        if header in response.headers:
            reply += f" ({header}: {response.headers[header]})"
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        text = response.content.decode("utf-8", "replace")
    excerpt = " ".join(text.split())
    if len(excerpt) > REPLY_EXCERPT:
        excerpt = excerpt[: REPLY_EXCERPT - 1] + "…"
    return f"{reply}: {excerpt}" if excerpt else reply


# --------------------------------------------------------------------------------------------
# Status callbacks: the provider's report of a message's fate, posted to us later.

# A provider's status words, in lower case, as SMPP spells the states; what is not here (nor
# in the configured map) is an intermediate state that settles nothing.
STATUS_WORDS = {
    "delivered": "DELIVRD",
    "delivrd": "DELIVRD",
    "undelivered": "UNDELIV",
    "undeliverable": "UNDELIV",
    "undeliv": "UNDELIV",
    "failed": "UNDELIV",
    "rejected": "REJECTD",
    "rejectd": "REJECTD",
    "expired": "EXPIRED",
    "deleted": "DELETED",
    "accepted": "ACCEPTD",
    "acceptd": "ACCEPTD",
    "enroute": "ENROUTE",
    "sent": "ENROUTE",
    "queued": "ENROUTE",
}


@dataclass(frozen=True)
class StatusCallbackFormat:
    """Where a provider's status callback keeps the message id, the status and the error
    (dotted paths into a JSON object, or form field names), and its own status words."""

    id_field: str = "id"
    status_field: str = "status"
    error_field: str = "error"
    statuses: Mapping[str, str] = field(default_factory=dict)
    """Provider's word → SMPP state, over ``STATUS_WORDS`` (case is ignored)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> StatusCallbackFormat:
        return cls(
            id_field=settings.sms_http_status_id_field,
            status_field=settings.sms_http_status_field,
            error_field=settings.sms_http_status_error_field,
            statuses=dict(settings.sms_http_status_map),
        )


class CallbackError(ValueError):
    """A status callback we cannot read; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def parse_status_callback(payload: Any, spec: StatusCallbackFormat) -> list[DeliveryReport]:
    """The reports in a callback: one object, or a list of them (some providers batch)."""
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise CallbackError("body", "no status in the callback")
    words = {**STATUS_WORDS, **{k.lower(): v.upper() for k, v in spec.statuses.items()}}
    reports = []
    for index, item in enumerate(items):
        where = f"{index}." if isinstance(payload, list) else ""
        if not isinstance(item, dict):
            raise CallbackError(f"{where}body", "a status is an object")
        peer_id = _lookup(item, spec.id_field)
        if peer_id is _MISSING or peer_id in (None, ""):
            raise CallbackError(f"{where}{spec.id_field}", "no message id")
        status = _lookup(item, spec.status_field)
        if status is _MISSING or status in (None, ""):
            raise CallbackError(f"{where}{spec.status_field}", "no status")
        error = _lookup(item, spec.error_field)
        word = _as_text(status).strip()
        reports.append(
            DeliveryReport(
                peer_message_id=_as_text(peer_id),
                state=words.get(word.lower(), "UNKNOWN"),
                error=None if error is _MISSING or error is None else _as_text(error),
            )
        )
    return reports
