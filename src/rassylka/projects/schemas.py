"""Request and response bodies of the project endpoints (manual §3.1.1, §3.1.7)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from rassylka.schemas import Name, ReadModel, RequestModel, UpdateModel

Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DkimDomain = Annotated[
    str, StringConstraints(max_length=253, pattern=rf"^{_LABEL}(?:\.{_LABEL})+$")
]
DkimSelector = Annotated[
    str, StringConstraints(max_length=63, pattern=rf"^{_LABEL}(?:\.{_LABEL})*$")
]
KeyPath = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
DKIM_FIELDS = ("dkim_domain", "dkim_selector", "dkim_key_path")
_DKIM_TOGETHER = "Укажите dkim_domain, dkim_selector и dkim_key_path вместе"


class _Dkim(RequestModel):
    """DKIM signing of the project's email (docs/deliverability.md): the three fields together,
    or none of them."""

    dkim_domain: DkimDomain | None = Field(
        default=None, description="Домен подписи DKIM (d=)", examples=["shop.example.ru"]
    )
    dkim_selector: DkimSelector | None = Field(
        default=None, description="Селектор DKIM (s=)", examples=["rassylka"]
    )
    dkim_key_path: KeyPath | None = Field(
        default=None,
        description="Путь к закрытому ключу RSA (PEM) на сервере отправки",
        examples=["/etc/rassylka/dkim/shop.pem"],
    )

    @model_validator(mode="after")
    def _dkim_together(self) -> _Dkim:
        given = {name for name in DKIM_FIELDS if getattr(self, name) is not None}
        if given and len(given) != len(DKIM_FIELDS):
            raise ValueError(_DKIM_TOGETHER)
        return self


class ProjectCreate(_Dkim):
    name: Name = Field(description="The project name", examples=["OCM"])
    code: Code = Field(description="The project code", examples=["010"])


class ProjectUpdate(UpdateModel, _Dkim):
    name: Name | None = Field(default=None, description="Наименование проекта", examples=["ОСМ"])
    code: Code | None = Field(default=None, description="Код проекта (уникальный)")

    @model_validator(mode="after")
    def _something_to_change(self) -> ProjectUpdate:
        named = {name for name in DKIM_FIELDS if name in self.model_fields_set}
        if named and len(named) != len(DKIM_FIELDS):
            # null in all three turns signing off; one of them alone means nothing
            raise ValueError(_DKIM_TOGETHER)
        if self.name is None and self.code is None and not named:
            raise ValueError("Укажите name (или code), чтобы было что обновить")
        return self


class ProjectRead(ReadModel):
    id: int
    name: str
    code: str
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_key_path: str | None = None
    created_at: datetime
    updated_at: datetime
