"""Request and response bodies of the project endpoints (manual §3.1.1, §3.1.7)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from rassylka.schemas import Name, ReadModel, RequestModel, UpdateModel

Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class ProjectCreate(RequestModel):
    name: Name = Field(description="The project name", examples=["OCM"])
    code: Code = Field(description="The project code", examples=["010"])


class ProjectUpdate(UpdateModel):
    name: Name | None = Field(default=None, description="Наименование проекта", examples=["ОСМ"])
    code: Code | None = Field(default=None, description="Код проекта (уникальный)")

    @model_validator(mode="after")
    def _something_to_change(self) -> ProjectUpdate:
        if self.name is None and self.code is None:
            raise ValueError("Укажите name (или code), чтобы было что обновить")
        return self


class ProjectRead(ReadModel):
    id: int
    name: str
    code: str
    created_at: datetime
    updated_at: datetime
