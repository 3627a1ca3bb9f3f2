"""Request and response bodies of the template endpoints (the manual's ``template_id``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from rassylka.config import get_settings
from rassylka.schemas import EntityId, Name, ReadModel, RequestModel, UpdateModel
from rassylka.templates.rendering import syntax_problem


def _valid_syntax(source: str) -> str:
    limit = get_settings().max_template_bytes
    # Characters first: no encoding of a text that is four times too long even in ASCII.
    if len(source) > limit or len(source.encode()) > limit:
        raise ValueError(f"Текст шаблона не больше {limit} байт (UTF-8)")
    if problem := syntax_problem(source):
        raise ValueError(problem)
    return source


Source = Annotated[str, AfterValidator(_valid_syntax)]


class TemplateContent(RequestModel):
    email_subject: Source | None = Field(
        default=None, description="Тема письма", examples=["Здравствуйте, {{ first_name }}!"]
    )
    email_html: Source | None = Field(default=None, description="HTML-текст письма")
    email_text: Source | None = Field(default=None, description="Текстовая версия письма")
    sms_text: Source | None = Field(
        default=None, description="Текст SMS", examples=["{{ first_name }}, ваш заказ готов"]
    )


class TemplateCreate(TemplateContent):
    project_id: EntityId | None = Field(default=None, description="Идентификатор проекта")
    project: str | None = Field(default=None, description="Код проекта (вместо project_id)")
    name: Name = Field(description="Название шаблона", examples=["Напоминание"])

    @model_validator(mode="after")
    def _names_a_project(self) -> TemplateCreate:
        if self.project_id is None and self.project is None:
            raise ValueError("Укажите project_id (или код проекта в project)")
        return self


class TemplateUpdate(TemplateContent, UpdateModel):
    """Only the fields present change; ``null`` clears a text."""

    name: Name | None = None


class TemplateRead(ReadModel):
    id: int
    project_id: int
    name: str
    email_subject: str | None
    email_html: str | None
    email_text: str | None
    sms_text: str | None
    created_at: datetime
    updated_at: datetime
