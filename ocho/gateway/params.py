"""Reading a request's query parameters through the schema that documents them
(ocho.gateway.schemas; gateway.openapi makes the document's parameters from the same
schemas).

Invariants: a parameter given more than once is a 400 (which one counts would be a
guess); an empty value (`?wait=`) is the parameter left out, so it takes the field's
default; fields are read in the order the schema declares them, and the first wrong
one is the 400, its message starting with the parameter's name.
"""

from __future__ import annotations

from typing import Any

from flask import request
from marshmallow import Schema, ValidationError, missing

from ocho.errors import InvalidRequest


def parse_query(schema: Schema) -> dict[str, Any]:
    """The query parameters `schema` declares, each parsed and checked, defaults filled."""
    values: dict[str, Any] = {}
    for name, field in schema.fields.items():
        raw = _query_arg(name)
        if raw is None or raw == "":
            default = field.load_default
            values[name] = (None if default is missing
                            else default() if callable(default) else default)
            continue
        try:
            values[name] = field.deserialize(raw)
        except ValidationError as exc:
            raise InvalidRequest(f"{name} {_first(exc.messages)}", field=name) from None
    return values


def _query_arg(name: str) -> str | None:
    """A query parameter given at most once (a repeated one is ambiguous: a 400)."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"{name} is given {len(values)} times; give it once", field=name)
    return values[0] if values else None


def _first(messages: Any) -> str:
    while not isinstance(messages, str):
        messages = next(iter(messages.values())) if isinstance(messages, dict) else messages[0]
    return messages
