"""Bounded template rendering: a template (shipped with a published recipe, so untrusted) may not work or grow
without limit. Rendering counts steps (loop iterations, operators, calls, filters) against a budget and a
deadline, and no value it makes (a string, a list, a number) may pass a size; the first to pass stops the render
with one line. Operators, `join` and `replace` are computed only once their result's size is known to be within
bounds; templates cannot change the lists and dicts they are given, and have only the filters and string methods
whose output a size argument bounds (`FILTERS`, `STR_METHODS`)."""

from __future__ import annotations

import contextvars
import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any

from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

#: The most characters (or items) any value or the rendered text may hold.
MAX_SIZE = 4_000_000
#: The most bits an integer may hold (about 20,000 decimal digits).
MAX_INT_BITS = 65_536
#: The most steps (loop iterations, operators, calls, filters) one render may take, and its seconds.
MAX_STEPS = 1_000_000
DEADLINE = 5.0

#: The filters templates have: none of them makes more than a size argument or its input's size allows.
FILTERS = frozenset((
    "abs", "capitalize", "center", "count", "d", "default", "e", "escape", "first", "float", "int", "items", "join",
    "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace", "reverse", "round",
    "safe", "select", "selectattr", "sort", "string", "title", "tojson", "trim", "truncate", "unique", "upper",
    "wordcount"
))  # fmt: skip
#: Jinja's globals templates have: not `lipsum`, whose paragraphs no size argument bounds before they are made.
GLOBALS = frozenset(("range", "dict", "cycler", "joiner", "namespace"))
#: The string methods templates may call (no `join`, `replace`, `format` or `expandtabs`: their output is not
#: bounded by their arguments).
STR_METHODS = frozenset((
    "capitalize", "casefold", "center", "count", "endswith", "find", "index", "isalnum", "isalpha", "isdigit",
    "islower", "isspace", "istitle", "isupper", "ljust", "lower", "lstrip", "partition", "removeprefix",
    "removesuffix", "rfind", "rjust", "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith",
    "strip", "swapcase", "title", "upper", "zfill"
))  # fmt: skip
_LOOP, _CONCAT = "_popalign_loop", "_popalign_concat"
_WIDTH = re.compile(r"%[-+ #0]*(\*|\d+)?(?:\.(\*|\d+))?")


class TemplateBoundError(Exception):
    """A render passed one of the bounds; the message says which."""


class _Budget:
    def __init__(self) -> None:
        self.steps = 0
        self.deadline = time.monotonic() + DEADLINE

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > MAX_STEPS:
            raise TemplateBoundError(f"more than {MAX_STEPS:,} steps (loop iterations, operators, calls)")
        if self.steps % 1024 == 0 and time.monotonic() > self.deadline:
            raise TemplateBoundError(f"still rendering after {DEADLINE:g} s")


_BUDGET: contextvars.ContextVar[_Budget] = contextvars.ContextVar("popalign_template_budget")


def _step() -> None:
    budget = _BUDGET.get(None)
    if budget is not None:
        budget.step()


def _check(value: Any) -> Any:
    """`value`, if it is within the bounds."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise TemplateBoundError(f"a number of more than {MAX_INT_BITS:,} bits")
    if isinstance(value, str | bytes | list | tuple | dict | set) and len(value) > MAX_SIZE:
        raise TemplateBoundError(f"a value of more than {MAX_SIZE:,} characters or items")
    return value


def _check_arguments(args: Iterable[Any]) -> None:
    """Numbers given to a call or filter are sizes often enough (`center`, `ljust`, `indent`) to be held to the
    size bound before the call."""
    for value in args:
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
            raise TemplateBoundError(f"a size argument of {value:g}, over {MAX_SIZE:,}")


def _length(value: Any) -> int:
    return len(value) if isinstance(value, Sized) and not isinstance(value, int) else 1


def _predict(name: str, left: Any, right: Any) -> None:
    """Refuse an operator whose result would pass the bounds, before computing it."""
    if name == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(times, int) and not isinstance(seq, int | float) and _length(seq) * times > MAX_SIZE:
                raise TemplateBoundError(f"a value of more than {MAX_SIZE:,} characters or items")
    powers = name == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1
    if powers and abs(left).bit_length() * right > 2 * MAX_INT_BITS:
        raise TemplateBoundError(f"a number of more than {MAX_INT_BITS:,} bits")
    if name == "+" and _length(left) + _length(right) > MAX_SIZE:
        raise TemplateBoundError(f"a value of more than {MAX_SIZE:,} characters or items")
    if name == "%" and isinstance(left, str):
        for width, precision in _WIDTH.findall(left):
            if "*" in (width, precision) or max(int(width or 0), int(precision or 0)) > 10_000:
                raise TemplateBoundError("a %-format width or precision over 10,000")


def _predict_filter(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """`join` and `replace` make outputs their arguments do not bound: their size is worked out first."""
    value = args[0] if args else None
    if name == "join" and isinstance(value, list | tuple):
        separator = str(args[1] if len(args) > 1 else kwargs.get("d", ""))
        if sum(len(str(item)) for item in value) + len(separator) * len(value) > MAX_SIZE:
            raise TemplateBoundError(f"a value of more than {MAX_SIZE:,} characters or items")
    if name == "replace" and len(args) >= 3 and isinstance(value, str):
        old, new = str(args[1]), str(args[2])
        found = value.count(old) if old else len(value) + 1
        if len(value) + found * (len(new) - len(old)) > MAX_SIZE:
            raise TemplateBoundError(f"a value of more than {MAX_SIZE:,} characters or items")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """An immutable sandbox whose renders are bounded (see the module's docstring). Render through `render`."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _bounded(name, function) for name, function in self.filters.items() if name in FILTERS}
        self.globals = {name: value for name, value in self.globals.items() if name in GLOBALS}
        self.globals[_LOOP] = _loop
        self.globals[_CONCAT] = lambda *parts: "".join(map(str, parts))

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        _step()
        _predict(operator_name, left, right)
        return _check(super().call_binop(context, operator_name, left, right))

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and callable(value) and attr not in STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        _check_arguments([*args, *kwargs.values()])
        return _check(super().call(__context, __obj, *args, **kwargs))

    def bound(self, tree: nodes.Template) -> nodes.Template:
        """`tree` with every loop's iterable counted and every `~` concatenation checked."""
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.Name(_LOOP, "load"), [loop.iter], [], None, None)
        for concat in list(tree.find_all(nodes.Concat)):
            call = nodes.Call(nodes.Name(_CONCAT, "load"), list(concat.nodes), [], None, None)
            concat.nodes = [call]
        return tree


def render(template: Any, variables: dict[str, Any]) -> str:
    """Render `template` within the bounds.

    Raises:
        TemplateBoundError: the render passed a bound.
    """
    token = _BUDGET.set(_Budget())
    try:
        size, parts = 0, []
        for part in template.generate(**variables):
            size += len(part)
            if size > MAX_SIZE:
                raise TemplateBoundError(f"more than {MAX_SIZE:,} characters of output")
            parts.append(part)
        return "".join(parts)
    except (OverflowError, ValueError, MemoryError, RecursionError) as err:
        if isinstance(err, ValueError) and "integer string conversion" not in str(err):
            raise
        raise TemplateBoundError(f"a value too large to compute ({type(err).__name__})") from err
    finally:
        _BUDGET.reset(token)


def _loop(iterable: Iterable[Any]) -> Iterator[Any]:
    """A loop's items, each counted as a step."""
    for item in iterable:
        _step()
        yield item


def _bounded(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter held to the bounds like a call."""

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _step()
        _check_arguments([*args[1:], *kwargs.values()])
        values = tuple(arg for arg in args if not hasattr(arg, "environment") and not hasattr(arg, "globals"))
        _predict_filter(name, values, kwargs)
        return _check(function(*args, **kwargs))

    return bounded
