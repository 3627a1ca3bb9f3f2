"""The one Settings object; every value comes from the environment (prefix ``RASSYLKA_``)."""

from __future__ import annotations

import re
from contextvars import ContextVar
from functools import lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
"""The base of unsubscribe links when ``RASSYLKA_PUBLIC_URL`` is unset: ``serve``'s default."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RASSYLKA_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./rassylka.db"
    """SQLAlchemy URL; ``sqlite+aiosqlite://`` (embedded) or ``postgresql+asyncpg://`` (scaled)."""

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Comma-separated API keys, each global (every project); with the keys made by
    ``rassylka apikey create`` (docs/security.md). None of either: no authorisation, as the
    manual says (§2.1.1), which ``serve``/``api`` allow only on a loopback address."""
    api_rate_limit: float = Field(default=0.0, ge=0)
    """Requests per second one caller (an API key; an address when no key is needed) may make
    to one API process; over it, 429 with Retry-After. 0: no limit."""
    api_rate_burst: float = Field(default=0.0, ge=0)
    """Requests a caller may make at once above the rate (the bucket's size); 0: one second's
    worth of the rate."""

    max_body_bytes: int = 1024 * 1024
    """Largest request body accepted by ordinary endpoints; larger gets 413."""

    max_import_bytes: int = 64 * 1024 * 1024
    """Largest body of ``POST /client/import`` (100,000 clients fit with room to spare)."""

    max_import_rows: int = 100_000
    """Most clients one import request may carry."""

    idempotency_ttl: float = Field(default=86400.0, gt=0)
    """Seconds an ``Idempotency-Key`` and its answer are kept; after that the key is new again
    (the worker deletes the old ones)."""
    # What a user's template may cost (docs/templates.md).
    max_template_bytes: int = Field(default=256 * 1024, ge=1024)
    """Largest text of one template field (UTF-8 bytes); larger gets 400."""
    max_render_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Most characters one field of one rendered message may have, and any value a template
    builds on the way; over it the template is refused (create) or the message fails."""
    max_render_seconds: float = Field(default=1.0, gt=0)
    """Most seconds one field of one message may take to render; the same then."""

    default_phone_region: str = "RU"
    """Region for phone numbers written without ``+`` (ISO 3166 alpha-2)."""

    default_timezone: str = "UTC"
    """IANA zone of a mailing that names none; a bare ``event`` date is midnight there."""

    outbox_dir: str = "./outbox"
    """Where the outbox transport writes messages when neither SMTP nor SMPP is configured."""

    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    smtp_pool_size: int = Field(default=4, ge=1, le=256)
    smtp_timeout: float = Field(default=30.0, gt=0)
    email_from: str = "Rassylka <rassylka@localhost>"
    email_reply_to: str | None = None
    """The Reply-To header of every email (``Отдел продаж <sales@example.ru>``); unset: none,
    replies go to the From address. Checked at start like ``email_from``."""

    # Email bounces (docs/bounces.md): VERP envelope senders and the inbound DSN listener.
    bounce_domain: str | None = None
    """Envelope senders become ``bounce+<token>@<domain>``; the domain's MX is the listener."""
    bounce_host: str = "127.0.0.1"
    bounce_port: int = Field(default=2525, ge=1, le=65535)
    bounce_max_size: int = Field(default=10 * 1024 * 1024, ge=1024)
    """Largest DSN the listener takes (bytes); larger gets 552."""
    secret_key: SecretStr | None = None
    """Signs the VERP tokens (required with a bounce domain) and the unsubscribe links, and
    keys the Message-IDs; the same in every process. Unset: the links are signed with a key
    made once and kept in the database (docs/deliverability.md)."""
    public_url: str | None = None
    """The base URL recipients reach this API at (``https://mail.example.ru``): unsubscribe
    links are ``{public_url}/unsubscribe/{token}``. Unset: ``DEFAULT_PUBLIC_URL`` (``rassylka
    serve`` sets its own address and port), reachable from this machine only."""

    # SMS over SMPP 3.4 (a transceiver bind to the SMSC).
    smpp_host: str | None = None
    smpp_port: int = 2775
    smpp_system_id: str = ""
    smpp_password: SecretStr = SecretStr("")
    smpp_system_type: str = ""
    smpp_source_addr: str = ""
    """Sender: digits (an international number) or up to 11 letters (an alphanumeric name)."""
    smpp_concatenation: Literal["udh", "payload"] = "udh"
    """A text longer than one SMS: ``udh`` (parts with a concatenation header each) or
    ``payload`` (one submit_sm, the whole text in ``message_payload``; the SMSC splits)."""
    sms_stop_words: str = "STOP,СТОП,ОТПИСКА"
    """Comma list: an inbound SMS whose whole text is one of these (any case, spaces and
    punctuation aside) opts its sender out of SMS (docs/sms.md)."""
    smpp_window: int = Field(default=10, ge=1, le=1000)
    """Most ``submit_sm`` awaiting their response at once on the bind."""
    smpp_enquire_link_interval: float = Field(default=30.0, gt=0)
    smpp_timeout: float = Field(default=10.0, gt=0)
    """Seconds to wait for a response PDU (bind, submit, enquire_link)."""

    # SMS through a provider's HTTP API, for providers without SMPP.
    sms_http_url: str | None = None
    sms_http_format: Literal["json", "form"] = "json"
    sms_http_headers: dict[str, str] = Field(default_factory=dict)
    """JSON object of extra request headers, e.g. ``{"Authorization": "Bearer …"}``."""
    sms_http_fields: dict[str, str] = Field(
        default_factory=lambda: {"to": "{to}", "text": "{text}", "from": "{source}"}
    )
    """JSON object: request field → value, with ``{to}``, ``{text}``, ``{source}``, ``{id}``."""
    sms_http_source: str = ""
    sms_http_success_field: str | None = None
    """Dotted path in the JSON answer that must equal ``sms_http_success_value`` (else only
    the 2xx status is checked)."""
    sms_http_success_value: str = "ok"
    sms_http_id_field: str | None = None
    """Dotted path in the JSON answer holding the provider's message id."""
    sms_http_timeout: float = Field(default=10.0, gt=0)
    sms_http_concurrency: int = Field(default=8, ge=1, le=256)
    # The provider's status callbacks (POST /webhook/sms/status).
    sms_http_callback_token: SecretStr | None = None
    """When set, a callback must carry it (``?token=…``), else 403."""
    sms_http_status_id_field: str = "id"
    """Dotted path (JSON) or field name (form) of the provider's message id in a callback."""
    sms_http_status_field: str = "status"
    sms_http_status_error_field: str = "error"
    sms_http_status_map: dict[str, str] = Field(default_factory=dict)
    """JSON object: the provider's status word → SMPP state (DELIVRD, UNDELIV, EXPIRED, …)."""
    # The provider's inbound texts (POST /webhook/sms/inbound), same token.
    sms_http_inbound_from_field: str = "from"
    """Field of the sending phone number in an inbound callback (JSON or form)."""
    sms_http_inbound_to_field: str = "to"
    """Field of our number or name the text was sent to (may be absent)."""
    sms_http_inbound_text_field: str = "text"

    # The dispatcher.
    dispatch_batch_size: int = Field(default=500, ge=1, le=10_000)
    """Messages one claim takes at most."""
    dispatch_lease: float = Field(default=300.0, gt=0)
    """Seconds a claim holds its messages; a dead worker's claims return to the queue then."""
    dispatch_poll_interval: float = Field(default=1.0, gt=0)
    """Seconds between looks for due work when no notification arrives."""
    email_concurrency: int = Field(default=16, ge=1, le=1024)
    sms_concurrency: int = Field(default=16, ge=1, le=1024)
    email_rate_limit: float = Field(default=0.0, ge=0)
    """Most emails sent per second by one worker; 0 means no limit."""
    sms_rate_limit: float = Field(default=0.0, ge=0)
    """Most SMS sent per second by one worker; 0 means no limit."""
    retry_max_attempts: int = Field(default=5, ge=1, le=100)
    retry_base_delay: float = Field(default=30.0, gt=0)
    """Seconds before the first retry; each next waits twice as long (with jitter)."""
    retry_max_delay: float = Field(default=3600.0, gt=0)
    retry_max_age: float = Field(default=86400.0, gt=0)
    """Seconds after its creation when a message stops being retried and fails."""
    error_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    """Share of failed sends among a mailing's latest ones at which it pauses itself."""
    error_rate_window: int = Field(default=50, ge=1, le=100_000)
    """How many of a mailing's latest sends (in one worker) the error rate is judged over;
    nothing is judged before that many."""

    # Outgoing webhooks: message events POSTed, signed, to the CRM (docs/webhooks.md).
    webhook_timeout: float = Field(default=10.0, gt=0)
    """Seconds one POST may take, all of it; longer counts as a failure and is retried."""
    webhook_concurrency: int = Field(default=8, ge=1, le=256)
    """POSTs in flight at once, per worker."""
    webhook_max_attempts: int = Field(default=10, ge=1, le=100)
    webhook_retry_base_delay: float = Field(default=30.0, gt=0)
    """Seconds before the first retry; each next waits twice as long (with jitter)."""
    webhook_retry_max_delay: float = Field(default=3600.0, gt=0)
    webhook_max_age: float = Field(default=86400.0, gt=0)
    """Seconds after an event when its delivery stops being retried (status failed)."""
    webhook_lease: float = Field(default=60.0, gt=0)
    """Seconds a claimed delivery is this worker's (at least twice the timeout plus 5)."""
    webhook_poll_interval: float = Field(default=0.5, gt=0)
    """Seconds between looks for new events and due retries when no notification arrives."""
    webhook_batch_size: int = Field(default=500, ge=1, le=10_000)
    """Events one look turns into deliveries per webhook at most."""

    # The live status stream (Server-Sent Events).
    sse_ping: float = Field(default=15.0, ge=0)
    """Seconds between heartbeat comments on an idle stream (keeps proxies from closing it);
    0 sends none."""
    sse_max_per_client: int = Field(default=20, ge=1)
    """Most live streams one caller (API key, else client address) may hold open; more
    gets 429."""
    sse_max_lifetime: float = Field(default=3600.0, gt=0)
    """Seconds a stream stays open; then it ends with ``event: reconnect`` and the client
    resumes with ``Last-Event-ID``."""

    # Prometheus metrics (docs/metrics.md). The API serves them at /metrics.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port where a standalone ``rassylka worker`` serves its /metrics (it has no HTTP server
    otherwise); unset: none. 0 picks a free port (logged)."""
    metrics_host: str = "127.0.0.1"
    """Address of the worker's metrics port. It takes no key, so the default is this machine
    only; ``0.0.0.0`` in a container whose network only the scraper shares."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("bounce_domain")
    @classmethod
    def _ascii_domain(cls, value: str | None) -> str | None:
        if value is None or not value.strip().strip("."):
            return None
        try:
            domain = value.strip().strip(".").lower().encode("idna").decode("ascii")
        except UnicodeError:
            domain = ""
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", domain):
            raise ValueError(f"invalid bounce domain {value!r}")
        return domain

    @model_validator(mode="after")
    def _bounces_need_a_key(self) -> Settings:
        # A key made up at start would differ between processes and restarts, and every
        # bounce to an address signed with another key would be refused.
        key = self.secret_key.get_secret_value().strip() if self.secret_key else ""
        if self.bounce_domain and len(key) < 16:
            raise ValueError(
                "RASSYLKA_BOUNCE_DOMAIN needs RASSYLKA_SECRET_KEY (at least 16 characters, "
                "the same in every process) to sign bounce addresses"
            )
        return self

    @field_validator("public_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        url = value.strip().rstrip("/")
        if not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", url):
            raise ValueError(f"RASSYLKA_PUBLIC_URL must be an http(s) base URL, not {value!r}")
        return url

    @property
    def public_base_url(self) -> str:
        """Where recipients reach the API: ``public_url``, else ``DEFAULT_PUBLIC_URL``."""
        return self.public_url or DEFAULT_PUBLIC_URL

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown IANA time zone {value!r}") from error
        return value

    @field_validator("default_phone_region")
    @classmethod
    def _upper_region(cls, value: str) -> str:
        return value.upper()


@lru_cache
def environment_settings() -> Settings:
    return Settings()


# The settings of the app serving the current request (set by create_app's middleware), so
# that two apps in one process (tests, embedding) each see their own.
current_settings: ContextVar[Settings | None] = ContextVar("rassylka_settings", default=None)


def get_settings() -> Settings:
    """The serving app's settings inside a request, else those of the environment."""
    return current_settings.get() or environment_settings()
