"""Query parameters of the HTTP API: their limits, and how one is read.

Invariants: a parameter given more than once is a 400 (which one counts would be
a guess); an empty value (`?wait=`) is the parameter left out; a number outside
its range is a 400 naming the parameter and the range.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flask import request

from ocho.errors import InvalidRequest

MAX_WAIT_S = 60
DEFAULT_OUTPUT_LIMIT = 1024 * 1024
DEFAULT_PAGE = 50
MAX_PAGE = 500
# Byte offsets and counts past this are not numbers a database column or a JavaScript
# client holds exactly; nothing is ever that large.
MAX_NUMBER = 2**53 - 1
OUTPUT_FORMATS = ("json", "text")

Number = TypeVar("Number", int, float)


def query_arg(name: str) -> str | None:
    """A query parameter given at most once (a repeated one is ambiguous: a 400)."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"{name} is given {len(values)} times; give it once", field=name)
    return values[0] if values else None


def int_arg(name: str, default: int, minimum: int, maximum: int) -> int:
    return _number_arg(name, default, minimum, maximum, int, "a whole number", "")


def float_arg(name: str, default: float, minimum: float, maximum: float) -> float:
    return _number_arg(name, default, minimum, maximum, float, "a number of seconds", " seconds")


def _number_arg(name: str, default: Number, minimum: Number, maximum: Number,
                parse: Callable[[str], Number], kind: str, unit: str) -> Number:
    raw = query_arg(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be {kind}", field=name) from None
    if not minimum <= value <= maximum:
        style = "g" if parse is float else "d"
        raise InvalidRequest(f"{name} must be between {minimum:{style}} and {maximum:{style}}"
                             f"{unit}", field=name)
    return value
