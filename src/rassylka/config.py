"""The one Settings object; every value comes from the environment (prefix ``RASSYLKA_``)."""

from __future__ import annotations

from contextvars import ContextVar
from functools import lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RASSYLKA_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./rassylka.db"
    """SQLAlchemy URL; ``sqlite+aiosqlite://`` (embedded) or ``postgresql+asyncpg://`` (scaled)."""

    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated API keys. Empty: no authorisation, as the manual says (§2.1.1)."""

    max_body_bytes: int = 1024 * 1024
    """Largest request body accepted by ordinary endpoints; larger gets 413."""

    max_import_bytes: int = 64 * 1024 * 1024
    """Largest body of ``POST /client/import`` (100,000 clients fit with room to spare)."""

    max_import_rows: int = 100_000
    """Most clients one import request may carry."""

    default_phone_region: str = "RU"
    """Region for phone numbers written without ``+`` (ISO 3166 alpha-2)."""

    default_timezone: str = "UTC"
    """IANA zone of a mailing that names none; a bare ``event`` date is midnight there."""

    outbox_dir: str = "./outbox"
    """Where the outbox transport writes messages when neither SMTP nor SMPP is configured."""

    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    smtp_pool_size: int = Field(default=4, ge=1, le=256)
    smtp_timeout: float = Field(default=30.0, gt=0)
    email_from: str = "Rassylka <rassylka@localhost>"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

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
