"""The one Jinja2 environment: sandboxed, since template text comes from the CRM's users."""

from __future__ import annotations

from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
html_environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


def syntax_problem(source: str) -> str | None:
    """Why ``source`` is not a valid template, in words for the CRM's user; None if it is."""
    try:
        environment.compile(source)
    except TemplateSyntaxError as error:
        return f"Ошибка синтаксиса шаблона в строке {error.lineno}: {error.message}"
    return None
