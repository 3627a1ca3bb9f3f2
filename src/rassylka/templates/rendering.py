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

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError

from rassylka.templates.budget import (
    BudgetedEnvironment,
    RenderLimitExceeded,
    RenderLimits,
    RenderTooSlow,
    generate_limited,
    limited,
)

environment = BudgetedEnvironment(undefined=StrictUndefined, autoescape=False)
html_environment = BudgetedEnvironment(undefined=StrictUndefined, autoescape=True)

TEXT_FIELDS = ("email_subject", "email_text", "sms_text")
HTML_FIELDS = ("email_html",)


CLIENT_FIELDS = (
    "id",
    "guid",
    "first_name",
    "last_name",
    "middle_name",
    "email",
    "phone",
    "timezone",
    "tags",
    "attributes",
)
"""A client's fields as its templates see them (at dispatch and in the dashboard's preview)."""


def syntax_problem(source: str) -> str | None:
    """Why ``source`` is not a valid template, in words for the CRM's user; None if it is."""
    try:
        environment.compile(source)
    except TemplateSyntaxError as error:
        return f"Ошибка синтаксиса шаблона в строке {error.lineno}: {error.message}"
    except RecursionError:  # Jinja's parser recurses per bracket: "{" * 81 is too deep for it
        return "Ошибка синтаксиса шаблона: слишком глубокая вложенность скобок"
    return None


class RenderError(Exception):
    """One recipient's message could not be rendered; ``reason`` says why, for the operator.
    ``over_budget``: the template went over its time or size limit, or reached for what the
    sandbox forbids (not a fault of this recipient's data)."""

    def __init__(self, field: str, problem: str, *, over_budget: bool = False) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.over_budget = over_budget
        self.reason = f"Шаблон, поле {field}: {problem}"


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
        # A field that once ran out of time fails for every later recipient at once: a
        # runaway loop must not cost each message of a mailing its full time budget.
        self._too_slow: dict[str, RenderError] = {}
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

    def _render(
        self, name: str, variables: dict[str, Any], limits: RenderLimits | None = None
    ) -> str | None:
        """One part, from ``variables`` (the globals and the recipient's names): what
        ``Template.render`` does, without its copy of the globals; a template's ``{% set %}``
        writes to its own context, never to ``variables``. Held to ``limits``
        (``templates.budget``), the defaults if None."""
        template = self._compiled.get(name)
        if template is None:
            return None
        if (known := self._too_slow.get(name)) is not None:
            raise known
        try:
            with limited(limits or RenderLimits()):
                context = template.new_context(variables, shared=True)
                return generate_limited(template.root_render_func(context))
        except RenderTooSlow as error:
            self._too_slow[name] = RenderError(name, str(error), over_budget=True)
            raise self._too_slow[name] from None
        except RenderLimitExceeded as error:
            raise RenderError(name, str(error), over_budget=True) from None
        except SecurityError as error:
            problem = f"недопустимая операция в шаблоне: {error.message or error}"
            raise RenderError(name, problem, over_budget=True) from None
        except RecursionError:
            problem = "слишком глубокая рекурсия (макрос вызывает сам себя)"
            raise RenderError(name, problem, over_budget=True) from None
        except MemoryError:
            raise RenderError(name, "не хватило памяти", over_budget=True) from None
        except UndefinedError as error:  # a name or field this recipient's data lacks
            raise RenderError(name, f"нет такого имени или поля ({error.message})") from None
        except TemplateError as error:
            raise RenderError(name, error.message or type(error).__name__) from None
        except Exception as error:  # a filter or operation failing on this client's data
            raise RenderError(name, f"{type(error).__name__}: {error}") from None

    def trial_problems(self, context: Mapping[str, Any], limits: RenderLimits) -> dict[str, str]:
        """Each field that goes over ``limits`` or breaks the sandbox when rendered for
        ``context`` (a sample client), with the reason; other errors are the sample data's."""
        variables = self._variables(context)
        problems: dict[str, str] = {}
        for name in self._compiled:
            try:
                self._render(name, variables, limits)
            except RenderError as error:
                if error.over_budget:
                    problems[name] = error.problem
        return problems

    def render_parts(
        self, context: Mapping[str, Any], limits: RenderLimits | None = None
    ) -> tuple[dict[str, str], dict[str, RenderError]]:
        """Every part rendered for ``context`` on its own (a preview: one part's error does
        not hide the others), as a message's parts are: the subject and the SMS stripped."""
        variables = self._variables(context)
        rendered: dict[str, str] = {}
        failed: dict[str, RenderError] = {}
        for name in self._compiled:
            try:
                text = self._render(name, variables, limits)
            except RenderError as error:
                failed[name] = error
                continue
            assert text is not None  # the part is compiled
            rendered[name] = text.strip() if name in {"email_subject", "sms_text"} else text
        return rendered, failed

    def render_email(
        self, context: Mapping[str, Any], limits: RenderLimits | None = None
    ) -> RenderedEmail:
        variables = self._variables(context)
        subject = self._render("email_subject", variables, limits)
        html = self._render("email_html", variables, limits)
        text = self._render("email_text", variables, limits)
        if subject is None or (html is None and text is None):
            raise RenderError("email_subject", "в шаблоне нет письма (темы и текста)")
        # A mail with only HTML still carries a plain part: some clients show nothing else.
        return RenderedEmail(
            subject=subject.strip(), text=text or plain_text(html or ""), html=html
        )

    def render_sms(self, context: Mapping[str, Any], limits: RenderLimits | None = None) -> str:
        text = self._render("sms_text", self._variables(context), limits)
        if text is None:
            raise RenderError("sms_text", "в шаблоне нет текста SMS")
        return text.strip()


@lru_cache(maxsize=256)
def compiled(sources: TemplateSources) -> CompiledTemplate:
    """The compiled template, from a cache keyed by the texts themselves: an edited template
    compiles anew, every recipient of one version shares one compilation."""
    return CompiledTemplate(sources)


def context_for(
    *,
    client: Mapping[str, Any],
    project: Mapping[str, Any],
    mailing: Mapping[str, Any],
    unsubscribe_url: str,
) -> dict[str, Any]:
    """What a template sees: ``client``, ``project``, ``mailing``, the client's fields at the
    top level too (``{{ first_name }}``, ``{{ attributes.city }}``), and ``unsubscribe_url``,
    the message's own link that opts the recipient out of its channel."""
    return {
        **client,
        "client": client,
        "project": project,
        "mailing": mailing,
        "unsubscribe_url": unsubscribe_url,
    }


# Where the HTML breaks the text: a paragraph (a blank line) or a line. Text inside the
# skipped elements is never read (a stylesheet in the plain part reads as junk, and looks like
# spam to filters).
_PARAGRAPHS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol"}
)
_LINES = frozenset({"br", "div", "li", "tr", "hr"})
_SKIPPED = frozenset({"script", "style", "title", "template"})
_WHITE_SPACE = str.maketrans("\r\n\t\f\v", "     ")


class _TextCollector(HTMLParser):
    """The text, and between its pieces the breaks the tags make: 1 a line, 2 a paragraph."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str | int] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self.skipping += 1
        elif tag in _PARAGRAPHS:
            self.chunks.append(2)
        elif tag in _LINES:
            self.chunks.append(1)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _PARAGRAPHS:
            self.chunks.append(2)
        elif tag in _LINES:
            self.chunks.append(1)

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            # A line break in HTML source is white space: only tags break the text.
            self.chunks.append(data.translate(_WHITE_SPACE))


def plain_text(html: str) -> str:
    """The plain part of an email that has only HTML: its text, a line per block element
    (``<br>``, ``<div>``, ``<li>``) and a blank line between paragraphs, runs of white space
    as one space, as a browser shows it; scripts, styles and the title left out."""
    collector = _TextCollector()
    collector.feed(html)
    collector.close()
    pieces: list[str] = []
    pending = 0  # the strongest break since the last text: breaks side by side are one
    for chunk in collector.chunks:
        if isinstance(chunk, int):
            pending = max(pending, chunk)
        elif chunk.strip():
            if pending and pieces:
                pieces.append("\n" * pending)
            pending = 0
            pieces.append(chunk)
        elif pieces and not pending:
            pieces.append(" ")  # white space between two inline elements
    lines = "".join(pieces).split("\n")
    return "\n".join(" ".join(line.split()) for line in lines)
