"""A reference description of what a container definition may hold, as a marshmallow
schema, used only by tests to keep ocho.kube.definition (checked by hand for start-up
speed) answering the same.

Written from the rules as the README and ocho.kube.definition's docstring state
them, with marshmallow's own fields and validators where they fit and whole-string
regexes (fullmatch); it shares no code with the validator under test.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
RESERVED_ENV = ("pod", "ochopod_cluster", "ochopod_namespace", "ochopod_application")
QUANTITY = re.compile(r"(?P<number>\d+(\.\d*)?|\.\d+)"
                      r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?")
DECIMAL_SUFFIX = {"": 0, "n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15,
                  "E": 18}
BINARY_SUFFIX = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}


def _fullmatch(pattern: str, value: str, message: str) -> None:
    if not re.fullmatch(pattern, value):
        raise ValidationError(message)


def _dns_label(value: str) -> None:
    if len(value) > 63:
        raise ValidationError("longer than 63")
    _fullmatch(DNS_LABEL, value, "not a DNS-1123 label")


def _label_key(key: str) -> None:
    if key.startswith("ocho.io/") or key == "app.kubernetes.io/managed-by":
        raise ValidationError("reserved")
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253
                  or not re.fullmatch(rf"{DNS_LABEL}(\.{DNS_LABEL})*", prefix)):
        raise ValidationError("bad prefix")
    if len(name) > 63:
        raise ValidationError("name longer than 63")
    _fullmatch(NAME, name, "bad name")


def _label_value(value: str) -> None:
    if value and (len(value) > 63 or not re.fullmatch(NAME, value)):
        raise ValidationError("bad label value")


def _env_name(name: str) -> None:
    if name in RESERVED_ENV:
        raise ValidationError("reserved")
    _fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", name, "bad variable name")


def _unique(ports: list[int]) -> None:
    if len(set(ports)) != len(ports):
        raise ValidationError("duplicate ports")


def quantity_decimal(text: str) -> Decimal:
    match = QUANTITY.fullmatch(text)
    assert match is not None
    number, suffix = Decimal(match["number"]), match["suffix"] or ""
    if suffix in BINARY_SUFFIX:
        return number * Decimal(1024) ** BINARY_SUFFIX[suffix]
    if suffix in DECIMAL_SUFFIX:
        return number.scaleb(DECIMAL_SUFFIX[suffix])
    return number.scaleb(int(suffix[1:]))


class Strict(fields.String):
    """Only a str: marshmallow's String would also take bytes."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str):
            raise ValidationError("not a string")
        return super()._deserialize(value, attr, data, **kwargs)


class Quantity(fields.Field):
    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            value = str(value)
        if not isinstance(value, str) or not QUANTITY.fullmatch(value):
            raise ValidationError("not a quantity")
        return value


class JsonData(fields.Field):
    """What JSON carries: str-keyed mappings, lists, str, finite numbers, bool, null; and
    dates, which become strings."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, Mapping) or not _json_able(value):
            raise ValidationError("not JSON data")
        return value


def _json_able(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _json_able(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_json_able(item) for item in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool, datetime.date))


def _port() -> fields.Integer:
    return fields.Integer(strict=True, validate=validate.Range(1, 65535))


class ResourceList(Schema):
    cpu = Quantity()
    memory = Quantity()


class Resources(Schema):
    requests = fields.Nested(ResourceList)
    limits = fields.Nested(ResourceList)

    @validates_schema
    def requests_within_limits(self, data: dict[str, Any], **_: Any) -> None:
        for name, limit in data.get("limits", {}).items():
            request = data.get("requests", {}).get(name)
            if request is not None and quantity_decimal(request) > quantity_decimal(limit):
                raise ValidationError("request above limit", field_name=f"requests.{name}")


class DefinitionSchema(Schema):
    cluster = Strict(required=True, validate=_dns_label)
    image = Strict(required=True, validate=validate.Regexp(r"\A\S+\Z"))
    ports = fields.List(_port(), validate=_unique)
    settings = JsonData(allow_none=True)
    pods = fields.Integer(strict=True, validate=validate.Range(min=0))
    env = fields.Dict(keys=Strict(validate=_env_name), values=Strict())
    resources = fields.Nested(Resources)
    command = fields.List(Strict())
    args = fields.List(Strict())
    labels = fields.Dict(keys=Strict(validate=_label_key), values=Strict(validate=_label_value))


def fields_in_error(data: Any) -> set[str] | None:
    """None if the reference accepts `data`, else the top-level fields its errors name."""
    try:
        _SCHEMA.load(data)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        return {str(name) for name in messages}
    return None


_SCHEMA = DefinitionSchema()
