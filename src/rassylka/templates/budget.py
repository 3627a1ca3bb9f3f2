"""What one render of a user's template may cost: a time budget and an output size cap.

Jinja2's sandbox stops a template from reaching Python's internals, but not from spending the
process's time and memory: ``{% for a in range(100000) %}{% for b in range(100000) %}``,
``{{ 'x' * 10**9 }}`` or ``{{ 'x'|center(10**9) }}`` would stall the worker that renders them,
or take all of its memory. A pure Python deadline cannot interrupt one C-level operation, so
two guards work together (docs/templates.md):

- size: every operation that can allocate in proportion to a number or to its operands'
  sizes (``*``, ``**``, ``+``, ``%``, ``str.format``, the string filters and methods that take
  a width) is checked *before* it runs, so no single step builds more than the cap; the
  output is counted as it is generated;
- time: the deadline is checked at every step a template can repeat — each iteration of each
  ``for`` loop, each call (macros, methods, ``loop(...)``), each filter — so the many small
  steps of a runaway template end at the deadline.

The limits in force are in a context variable set around a render (``limited``); outside one
(a template rendered by other code) the defaults apply, without a deadline.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum
from markupsafe import Markup

DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_SECONDS = 1.0
# Integers a template computes stay below this many bits (about 20,000 decimal digits): the
# cost of arithmetic and of printing a number grows with its size.
MAX_INT_BITS = 65536
LOOP_FILTER = "rassylka:budget_iter"  # not a name a template can write: only _parse adds it

TOO_SLOW = "Шаблон выполняется слишком долго"
TOO_LARGE = "Результат шаблона слишком большой"


class RenderLimitExceeded(Exception):
    """A render went over its budget; ``message`` says which, in Russian."""

    message = ""

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.message}{f' ({detail})' if detail else ''}")


class RenderTooSlow(RenderLimitExceeded):
    message = TOO_SLOW


class RenderTooLarge(RenderLimitExceeded):
    message = TOO_LARGE


@dataclass(frozen=True)
class RenderLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    """Most characters one rendered field (and any value built on the way) may have."""
    max_seconds: float = DEFAULT_MAX_SECONDS
    """Most seconds one field's render may take."""


@dataclass
class _Budget:
    limits: RenderLimits
    deadline: float

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderTooSlow(f"дольше {self.limits.max_seconds:g} с")


_active: ContextVar[_Budget | None] = ContextVar("rassylka_render_budget", default=None)


def _budget() -> _Budget:
    return _active.get() or _Budget(RenderLimits(), float("inf"))


@contextmanager
def limited(limits: RenderLimits) -> Iterator[None]:
    """Renders inside this block are held to ``limits``, the clock starting now."""
    token = _active.set(_Budget(limits, time.monotonic() + limits.max_seconds))
    try:
        yield
    finally:
        _active.reset(token)


def generate_limited(chunks: Iterable[str]) -> str:
    """Joins a template's generated output, counting it against the active budget."""
    budget = _budget()
    cap = budget.limits.max_bytes
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > cap:
            raise RenderTooLarge(f"больше {cap} символов")
        budget.tick()
        out.append(chunk)
    return "".join(out)


# -- sizes -----------------------------------------------------------------------------------


def measure(value: Any, limit: int) -> int:
    """About how many characters ``str(value)`` makes, counting each element at least once;
    the walk stops as soon as the count passes ``limit``, so it costs at most that many steps
    whatever the value (a list that holds itself many times over included)."""
    budget = _budget()
    total = 0
    stack = [value]
    steps = 0
    while stack and total <= limit:
        item = stack.pop()
        steps += 1
        if steps % 4096 == 0:
            budget.tick()
        if isinstance(item, str | bytes):
            total += len(item) + 1
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            for key, inner in item.items():
                stack.append(key)
                stack.append(inner)
                if len(stack) > limit:
                    return limit + 1
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            if total > limit:
                break
            stack.extend(item)
        else:
            total += 16
    return total


def _check_size(size: int, what: str = "") -> None:
    cap = _budget().limits.max_bytes
    if size > cap:
        raise RenderTooLarge(what or f"больше {cap} символов")


def _check_small(*values: Any) -> None:
    cap = _budget().limits.max_bytes
    total = 0
    for value in values:
        total += measure(value, cap - total)
        _check_size(total)


def _check_number(value: Any) -> None:
    """An int argument (a width, a count) larger than the cap would ask for that much."""
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and abs(value) > _budget().limits.max_bytes
    ):
        raise RenderTooLarge(f"число {value if value.bit_length() < 64 else 'слишком велико'}")


def _check_result(value: Any) -> Any:
    if isinstance(value, str | list | tuple):
        _check_size(len(value))
    return value


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBERS = re.compile(r"\d+")


def _check_percent_format(template: str, args: Any) -> None:
    """``'%999999999s' % x`` would allocate that many characters: widths and precisions are
    held to the cap; ``*`` (a width from the arguments) is refused."""
    cap = _budget().limits.max_bytes
    for match in _PERCENT_SPEC.finditer(template):
        for part in match.groups():
            if part == "*":
                raise RenderTooLarge("ширина «*» в формате не поддерживается")
            if part is not None and int(part) > cap:
                raise RenderTooLarge(f"ширина {part} в формате")
    _check_small(template, args)


def _check_format_string(template: str, args: Any, kwargs: Any) -> None:
    """The same for ``str.format``: numbers in a field's format spec are widths; nested
    fields (``{:{w}}``) are refused."""
    cap = _budget().limits.max_bytes
    for _literal, _field, spec, _conversion in string.Formatter().parse(template):
        if not spec:
            continue
        if "{" in spec:
            raise RenderTooLarge("вложенные поля в формате не поддерживаются")
        for number in _NUMBERS.findall(spec):
            if len(number) > 12 or int(number) > cap:
                raise RenderTooLarge(f"ширина {number} в формате")
    _check_small(template, args, kwargs)


# -- binary operators --------------------------------------------------------------------------


def _sized(value: Any) -> bool:
    return isinstance(value, str | list | tuple)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    cap = _budget().limits.max_bytes
    if operator == "*":
        if (_sized(left) and _int(right)) or (_sized(right) and _int(left)):
            sequence, count = (left, right) if _sized(left) else (right, left)
            if count > 0:
                if count > cap:
                    raise RenderTooLarge(f"повторение {count} раз")
                unit = (
                    len(sequence)
                    if isinstance(sequence, str)
                    else measure(sequence, cap // count + 1)
                )
                _check_size(unit * count)
        elif _int(left) and _int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise RenderTooLarge("слишком большое число")
    elif operator == "**":
        growing = _int(left) and _int(right) and right > 0 and abs(left) > 1
        if growing and left.bit_length() * right > MAX_INT_BITS:
            raise RenderTooLarge("слишком большое число")
    elif operator == "+":
        if _sized(left) and _sized(right):
            _check_size(measure(left, cap) + measure(right, cap))
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left, right)


# -- the environment ---------------------------------------------------------------------------


class _CodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # ``a ~ b`` stringifies and joins its operands: through the environment, which
        # measures them first (Jinja's own str_join/markup_join would not).
        self.write("environment.budget_concat(context.eval_ctx, (")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


# Filters that neither stringify their value nor build anything larger than it: their value
# is not measured (a ``|length`` in a loop over a long list stays cheap).
_CHEAP_FILTERS = frozenset(
    {
        "abs", "attr", "batch", "count", "d", "default", "dictsort", "first", "float",
        "groupby", "int", "items", "last", "length", "list", "map", "max", "min", "random",
        "reject", "rejectattr", "reverse", "round", "select", "selectattr", "slice", "sort",
        "sum", "unique", LOOP_FILTER,
    }
)  # fmt: skip


def _lines(text: str) -> int:
    return text.count("\n") + 1


# Filters whose integer arguments are counts or widths they allocate or loop by (a money
# amount passed to ``format`` is not one: that is checked by its format's widths).
_COUNTING_FILTERS = frozenset({"center", "batch", "slice"})


def _check_filter(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """What a filter would build, estimated from its arguments before it runs."""
    cap = _budget().limits.max_bytes
    if name in _COUNTING_FILTERS:
        for argument in (*args, *kwargs.values()):
            _check_number(argument)
    if name not in _CHEAP_FILTERS:
        _check_small(value)
    text = value if isinstance(value, str) else None
    if name == "center" and args:
        _check_number(args[0])
    elif name == "indent" and text is not None:
        width = args[0] if args else kwargs.get("width", 4)
        step = len(width) if isinstance(width, str) else width if _int(width) else 0
        _check_size(len(text) + _lines(text) * max(step, 0))
    elif name == "replace" and text is not None and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        count = text.count(old)
        if len(args) > 2 and _int(args[2]) and args[2] >= 0:
            count = min(count, args[2])
        _check_size(len(text) + count * max(len(new) - len(old), 0))
    elif name == "join":
        separator = args[0] if args else kwargs.get("d", "")
        items = len(value) if isinstance(value, list | tuple | str) else 0
        _check_size(measure(value, cap) + items * len(str(separator)))
    elif name == "wordwrap" and text is not None:
        width = args[0] if args else kwargs.get("width", 79)
        wrap = args[3] if len(args) > 3 else kwargs.get("wrapstring") or "\n"
        if _int(width) and width > 0:
            _check_size(len(text) + (len(text) // width + 1) * len(str(wrap)))
    elif name == "format" and text is not None:
        _check_percent_format(text, (args, kwargs))
    elif name in {"pprint", "tojson", "string", "urlencode", "xmlattr"}:
        _check_small(value, args, kwargs)


def _guard_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    passes_first = getattr(function, "jinja_pass_arg", None) is not None

    @wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _budget().tick()
        own = args[1:] if passes_first else args
        value, rest = (own[0], own[1:]) if own else (None, ())
        _check_filter(name, value, tuple(rest), kwargs)
        result = function(*args, **kwargs)
        if isinstance(result, Iterator):
            return _counted(result)
        return _check_result(result)

    return guarded


def _counted(items: Iterator[Any]) -> Iterator[Any]:
    """A filter's lazy result (``map``, ``select``, …), measured as it is consumed: whoever
    consumes it (``join``, ``list``, a loop) gets at most the cap's worth of items."""
    budget = _budget()
    cap = budget.limits.max_bytes
    total = 0
    for item in items:
        budget.tick()
        total += measure(item, cap - total)
        if total > cap:
            raise RenderTooLarge(f"больше {cap} символов")
        yield item


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:
    """Jinja's ``lipsum``, with its counts bounded (``lipsum(10**6)`` would write ~500 MB)."""
    if not all(_int(number) and 0 <= number <= 100 for number in (n, min, max)):
        raise RenderTooLarge("lipsum: не больше 100 абзацев и слов")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def _budget_iter(iterable: Any) -> Iterator[Any]:
    """A loop's iterable, with the deadline checked before each iteration."""
    budget = _budget()
    for item in iterable:
        budget.tick()
        yield item


_STR_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja2's sandbox, immutable (a template cannot change the lists and dicts it is given,
    ``[].append`` included), with every costly step held to the active ``RenderLimits``."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    # What joins the output of a macro, a {% set %} block or a {% call %}: counted too, so a
    # block that captures itself twice over per iteration cannot double past the cap.
    concat = staticmethod(generate_limited)

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=self._finalize, **options)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters[LOOP_FILTER] = _budget_iter
        self.globals["lipsum"] = _lipsum

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        # Every loop's iterable passes through _budget_iter: the one place a template repeats
        # steps without a call (an empty nested loop calls nothing).
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, LOOP_FILTER, [], [], None, None, lineno=loop.lineno)
        return tree

    @staticmethod
    def _finalize(value: Any) -> Any:
        # What ``{{ … }}`` prints: a list or dict is stringified whole, so it is measured.
        if isinstance(value, str):
            _check_size(len(value))
        else:
            _check_small(value)
        return value

    def budget_concat(self, eval_ctx: Any, values: tuple[Any, ...]) -> str:
        _budget().tick()
        _check_small(*values)
        joined = markup_join(values) if eval_ctx.autoescape else str_join(values)
        return _check_result(joined)  # type: ignore[no-any-return]

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _budget().tick()
        _check_binop(operator, left, right)
        return _check_result(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _budget().tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            method = getattr(__obj, "__name__", "")
            if method in _STR_WIDTH_METHODS | {"expandtabs"} and args and _int(args[0]):
                _check_number(args[0])
                tabs = owner.count("\t") if method == "expandtabs" else 1
                _check_size(len(owner) + tabs * args[0])
            elif method == "replace" and len(args) >= 2:
                _check_filter("replace", owner, args, {})
            elif method == "join" and args:
                items = args[0]
                count = len(items) if isinstance(items, list | tuple | str) else 0
                _check_size(measure(items, _budget().limits.max_bytes) + count * len(owner))
            elif method in {"translate", "encode"}:
                _check_small(owner, args)
                if method == "translate":
                    _check_size(len(owner) * max(1, measure(args, 0xFFFF) if args else 1))
        return _check_result(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        template = value.__self__
        is_format_map = value.__name__ == "format_map"

        @wraps(wrapper)
        def checked(*args: Any, **kwargs: Any) -> str:
            _budget().tick()
            _check_format_string(template, args if not is_format_map else (), kwargs or args)
            return _check_result(wrapper(*args, **kwargs))  # type: ignore[no-any-return]

        return checked


__all__ = [
    "TOO_LARGE",
    "TOO_SLOW",
    "BudgetedEnvironment",
    "Markup",
    "RenderLimitExceeded",
    "RenderLimits",
    "RenderTooLarge",
    "RenderTooSlow",
    "generate_limited",
    "limited",
]
