"""Rendering a template for one client: sandboxed, strict about undefined names, per message."""

from __future__ import annotations

from typing import Any

import pytest

from rassylka.templates.rendering import (
    RenderError,
    TemplateSources,
    compiled,
    context_for,
    plain_text,
)

CLIENT: dict[str, Any] = {
    "guid": "c-1",
    "first_name": "Иван",
    "last_name": "Иванов",
    "middle_name": "Иванович",
    "email": "ivan@example.com",
    "phone": "+79161234567",
    "tags": ["vip"],
    "attributes": {"city": "Москва", "orders": 3},
}
CONTEXT = context_for(
    client=CLIENT,
    project={"id": 1, "code": "010", "name": "OCM"},
    mailing={"id": 7, "name": "M"},
    unsubscribe_url="https://mail.example.ru/unsubscribe/7-abcdefghijklmnop",
)


def test_email_with_client_project_and_mailing_in_scope() -> None:
    sources = TemplateSources(
        email_subject="{{ first_name }}, новости {{ project.name }}",
        email_html="<p>{{ client.last_name }} из {{ attributes.city }}</p>",
        email_text="Рассылка {{ mailing.id }}{% if 'vip' in tags %}, VIP{% endif %}",
    )
    email = compiled(sources).render_email(CONTEXT)
    assert email.subject == "Иван, новости OCM"
    assert email.html == "<p>Иванов из Москва</p>"
    assert email.text == "Рассылка 7, VIP"


def test_html_is_escaped_and_text_is_not() -> None:
    context = context_for(
        client={**CLIENT, "first_name": "<b>&</b>"}, project={}, mailing={}, unsubscribe_url=""
    )
    sources = TemplateSources(email_subject="{{ first_name }}", email_html="{{ first_name }}")
    email = compiled(sources).render_email(context)
    assert email.html == "&lt;b&gt;&amp;&lt;/b&gt;"
    assert email.subject == "<b>&</b>"
    assert email.text == "<b>&</b>", "the plain part made from HTML carries its text"


def test_sms() -> None:
    assert (
        compiled(TemplateSources(sms_text=" {{ first_name }}, заказ готов ")).render_sms(CONTEXT)
        == "Иван, заказ готов"
    )


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ("{{ attributes.missing }}", "sms_text"),
        ("{{ nobody }}", "sms_text"),
        ("{{ attributes.orders / 0 }}", "sms_text"),
        ("{{ first_name.__class__.__mro__ }}", "sms_text"),
    ],
)
def test_a_render_error_names_the_field_and_why(source: str, field: str) -> None:
    with pytest.raises(RenderError) as raised:
        compiled(TemplateSources(sms_text=source)).render_sms(CONTEXT)
    assert raised.value.field == field
    assert raised.value.reason.startswith("Шаблон, поле sms_text: ")
    assert len(raised.value.reason) > len("Шаблон, поле sms_text: ")


def test_the_sandbox_refuses_unsafe_access() -> None:
    sources = TemplateSources(sms_text="{{ ''.__class__.__subclasses__() }}")
    with pytest.raises(RenderError, match=r"unsafe|__class__"):
        compiled(sources).render_sms(CONTEXT)


def test_a_missing_channel_text_is_a_render_error() -> None:
    with pytest.raises(RenderError):
        compiled(TemplateSources(sms_text="x")).render_email(CONTEXT)
    with pytest.raises(RenderError):
        compiled(TemplateSources(email_subject="s", email_text="t")).render_sms(CONTEXT)


def test_one_compilation_per_version() -> None:
    first = TemplateSources(sms_text="{{ first_name }}!")
    assert compiled(first) is compiled(TemplateSources(sms_text="{{ first_name }}!"))
    assert compiled(first) is not compiled(TemplateSources(sms_text="{{ first_name }}?"))


def test_the_plain_part_made_from_html_keeps_its_lines_and_leaves_out_styles() -> None:
    html = (
        "<html><head><title>Письмо</title><style>p { color: red }</style></head><body>"
        "<h1>Здравствуйте, Анна!</h1><p>Скидка\n   <b>20%</b> <i>до пятницы</i>.</p>"
        "<p>Адрес:<br>Москва,<br/>Тверская 1</p><ul><li>один</li><li>два</li></ul>"
        "<script>track()</script></body></html>"
    )
    assert plain_text(html) == (
        "Здравствуйте, Анна!\n\nСкидка 20% до пятницы.\n\nАдрес:\nМосква,\nТверская 1\n\nодин\nдва"
    )
    assert plain_text("<p>&lt;b&gt; &amp; </p>") == "<b> &"
