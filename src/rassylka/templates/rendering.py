"""The sandboxed Jinja2 environments, syntax checks, and rendering of a template for one client.

Template text comes from the CRM's users, so it runs in Jinja2's sandbox with undefined names
as errors (a typo must fail the message, not send "Здравствуйте, !"). A template is compiled
once per version of its texts and reused for every recipient.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
html_environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)

TEXT_FIELDS = ("email_subject", "email_text", "sms_text")
HTML_FIELDS = ("email_html",)


def syntax_problem(source: str) -> str | None:
    """Why ``source`` is not a valid template, in words for the CRM's user; None if it is."""
    try:
        environment.compile(source)
    except TemplateSyntaxError as error:
        return f"Ошибка синтаксиса шаблона в строке {error.lineno}: {error.message}"
    return None


class RenderError(Exception):
    """One recipient's message could not be rendered; ``reason`` says why, for the operator."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = f"Шаблон, поле {field}: {reason}"


@dataclass(frozen=True)
class TemplateSources:
    email_subject: str | None = None
    email_html: str | None = None
    email_text: str | None = None
    sms_text: str | None = None


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str | None


class CompiledTemplate:
    def __init__(self, sources: TemplateSources) -> None:
        self._compiled: dict[str, Template] = {}
        globals_: dict[str, Any] = {}
        for name in TEXT_FIELDS + HTML_FIELDS:
            source = getattr(sources, name)
            if source is not None:
                chosen = html_environment if name in HTML_FIELDS else environment
                template = chosen.from_string(source)
                # Jinja's render() copies a template's globals (a ChainMap over the
                # environment's, slow to iterate) into a fresh dict, and its Context lists
                # their names, on every call, three times per email. Here they are copied
                # once, a message's names are laid over one copy of them that serves all of
                # its parts (see _variables), and the template keeps none of its own.
                globals_.update(template.globals)
                template.globals = {}
                self._compiled[name] = template
        self._globals = globals_

    def _variables(self, context: Mapping[str, Any]) -> dict[str, Any]:
        return {**self._globals, **context}

    def _render(self, name: str, variables: dict[str, Any]) -> str | None:
        """One part, from ``variables`` (the globals and the recipient's names): what
        ``Template.render`` does, without its copy of the globals; a template's ``{% set %}``
        writes to its own context, never to ``variables``."""
        template = self._compiled.get(name)
        if template is None:
            return None
        try:
            context = template.new_context(variables, shared=True)
            return template.environment.concat(template.root_render_func(context))
        except TemplateError as error:
            raise RenderError(name, error.message or type(error).__name__) from None
        except Exception as error:  # a filter or operation failing on this client's data
            raise RenderError(name, f"{type(error).__name__}: {error}") from None

    def render_email(self, context: Mapping[str, Any]) -> RenderedEmail:
        variables = self._variables(context)
        subject = self._render("email_subject", variables)
        html = self._render("email_html", variables)
        text = self._render("email_text", variables)
        if subject is None or (html is None and text is None):
            raise RenderError("email_subject", "в шаблоне нет письма (темы и текста)")
        # A mail with only HTML still carries a plain part: some clients show nothing else.
        return RenderedEmail(subject=subject.strip(), text=text or _plain(html or ""), html=html)

    def render_sms(self, context: Mapping[str, Any]) -> str:
        text = self._render("sms_text", self._variables(context))
        if text is None:
            raise RenderError("sms_text", "в шаблоне нет текста SMS")
        return text.strip()


@lru_cache(maxsize=256)
def compiled(sources: TemplateSources) -> CompiledTemplate:
    """The compiled template, from a cache keyed by the texts themselves: an edited template
    compiles anew, every recipient of one version shares one compilation."""
    return CompiledTemplate(sources)


def context_for(
    *, client: Mapping[str, Any], project: Mapping[str, Any], mailing: Mapping[str, Any]
) -> dict[str, Any]:
    """What a template sees: ``client``, ``project``, ``mailing``, and the client's fields
    at the top level too (``{{ first_name }}``, ``{{ attributes.city }}``)."""
    return {**client, "client": client, "project": project, "mailing": mailing}


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)


def _plain(html: str) -> str:
    collector = _TextCollector()
    collector.feed(html)
    return " ".join(" ".join(collector.chunks).split())
