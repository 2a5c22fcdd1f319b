"""Container definitions: the small YAML files `deploy` turns into clusters.

    cluster:  zookeeper                  # required, a DNS-1123 label
    image:    paugamo/k8s-ec2-zookeeper  # required
    ports:    [2181, 2888, 3888]         # TCP ports, 1-65535, no duplicates
    settings: {tick: 2000}               # any data; the container gets it as JSON in $pod
    pods:     3                          # default replica count (`deploy -p` wins)
    env:      {JVM_OPTS: "-Xmx1g"}       # extra environment, name -> string
    resources: {requests: {cpu: 250m, memory: 256Mi}, limits: {memory: 512Mi}}
    command:  [/bin/sh, -c]              # replaces the image's entrypoint
    args:     ["exec zkServer.sh start-foreground"]
    labels:   {team: data}               # extra Kubernetes labels

The marshmallow schema below is the single definition of what is valid. Every
problem is reported, each naming the file and the field, so that a batch can
be fixed in one go.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import math
import os
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from marshmallow import Schema, ValidationError, fields, validates, validates_schema

from ocho.kube import labels as ocho_labels
from ocho.kube import safeyaml
from ocho.kube.names import (
    DNS1123_LABEL_RULE,
    is_dns1123_label,
    label_key_problem,
    label_value_problem,
)
from ocho.kube.patterns import ClusterPattern

FIELDS = ("cluster", "image", "ports", "settings", "pods", "env", "resources", "command", "args",
          "labels")
CONTROL_PORT = 8080  # Ochopod's own port, added to every container
# Environment variables Ochopod reads: set by deploy, so a definition may not.
RESERVED_ENV = ("pod", "ochopod_cluster", "ochopod_namespace", "ochopod_application")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
QUANTITY = re.compile(r"^(?P<number>(\d+(\.\d*)?|\.\d+))"
                      r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")
_SUFFIX_SCALE = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    **{suffix: Decimal(1024) ** (power + 1) for power, suffix in enumerate(
        ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


class DefinitionError(Exception):
    """Problems found in one definition file; each entry reads `file: field: problem`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclasses.dataclass(frozen=True)
class Definition:
    source: str
    cluster: str
    image: str
    ports: tuple[int, ...] = ()
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    pods: int | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    resources: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)


# -- fields that say what is allowed --------------------------------------------------------

def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return f"{value!r}"


class Text(fields.Field):
    """A string and only a string (YAML turns `on`, `1.10` or `2024-01-01` into other types)."""

    def __init__(self, what: str = "a string", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.what = what

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError(f"must be {self.what}, got {_type_name(value)}; "
                                  "quote it if YAML read it as another type")
        return value


class WholeNumber(fields.Field):
    def __init__(self, low: int, high: int | None = None, what: str = "a whole number",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.low, self.high, self.what = low, high, what

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        in_range = (isinstance(value, int) and not isinstance(value, bool)
                    and value >= self.low and (self.high is None or value <= self.high))
        if not in_range:
            bounds = f"from {self.low}" if self.high is None else f"{self.low}-{self.high}"
            raise ValidationError(f"must be {self.what} ({bounds}), got {_type_name(value)}")
        return value


class Quantity(fields.Field):
    """A Kubernetes quantity such as `250m`, `0.5`, `512Mi` or `1G`."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            value = str(value)
        if not isinstance(value, str) or not QUANTITY.match(value):
            raise ValidationError(f"must be a quantity such as 250m, 0.5, 512Mi or 2Gi, "
                                  f"got {_type_name(value)}")
        return value


class JsonData(fields.Field):
    """Nested plain data that JSON can carry: mappings with string keys, lists,
    strings, finite numbers, booleans and null. Dates become ISO strings."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValidationError(f"must be a mapping of settings, got {_type_name(value)}")
        return _plain(value, "")


def _plain(value: Any, path: str) -> Any:
    where = f"{path}: " if path else ""
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{where}key {key!r} must be a string; quote it")
            plain[key] = _plain(item, f"{path}.{key}" if path else key)
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"{where}{value} cannot be sent as JSON; use a string")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    raise ValidationError(f"{where}{_type_name(value)} cannot be sent as JSON "
                          "(binary data and sets are not allowed)")


def _unknown(allowed: Iterable[str]) -> dict[str, str]:
    return {"unknown": f"unknown field; allowed fields are {', '.join(allowed)}"}


# -- the schema -------------------------------------------------------------------------

class ResourceListSchema(Schema):
    error_messages = _unknown(("cpu", "memory"))
    cpu = Quantity()
    memory = Quantity()


class ResourcesSchema(Schema):
    error_messages = _unknown(("requests", "limits"))
    requests = fields.Nested(ResourceListSchema)
    limits = fields.Nested(ResourceListSchema)

    @validates_schema
    def _requests_within_limits(self, data: dict[str, Any], **_: Any) -> None:
        for name, limit in (data.get("limits") or {}).items():
            request = (data.get("requests") or {}).get(name)
            if request is not None and quantity_value(request) > quantity_value(limit):
                raise ValidationError(f"{request} is above limits.{name} ({limit})",
                                      field_name=f"requests.{name}")


class DefinitionSchema(Schema):
    error_messages = _unknown(FIELDS)

    cluster = Text(required=True, what="the cluster name",
                   error_messages={"required": "required: the Ochopod cluster name, e.g. "
                                               "'zookeeper'"})
    image = Text(required=True, what="a Docker image name",
                 error_messages={"required": "required: the Docker image to run, e.g. "
                                             "'paugamo/k8s-ec2-zookeeper'"})
    ports = fields.List(WholeNumber(1, 65535, what="a TCP port number"),
                        error_messages={"invalid": "must be a list of port numbers (1-65535)"})
    settings = JsonData(allow_none=True)
    pods = WholeNumber(0, what="a pod count")
    env = fields.Dict(keys=Text(what="a variable name"), values=Text(),
                      error_messages={"invalid": "must be a mapping of variable name -> string"})
    resources = fields.Nested(ResourcesSchema)
    command = fields.List(Text(), error_messages={"invalid": "must be a list of strings"})
    args = fields.List(Text(), error_messages={"invalid": "must be a list of strings"})
    labels = fields.Dict(keys=Text(what="a label key"), values=Text(what="a label value"),
                         error_messages={"invalid": "must be a mapping of label key -> value"})

    @validates("cluster")
    def _check_cluster(self, value: str, **_: Any) -> None:
        if not is_dns1123_label(value):
            raise ValidationError(f"{value!r} {DNS1123_LABEL_RULE}")

    @validates("image")
    def _check_image(self, value: str, **_: Any) -> None:
        if not value or any(char.isspace() for char in value):
            raise ValidationError(f"{value!r} is not an image name: it must be non-empty "
                                  "without spaces, e.g. 'redis:7'")

    @validates("ports")
    def _check_ports(self, value: list[int], **_: Any) -> None:
        duplicates = sorted({port for port in value if value.count(port) > 1})
        if duplicates:
            raise ValidationError(f"port(s) {', '.join(map(str, duplicates))} listed more "
                                  "than once")

    @validates("env")
    def _check_env(self, value: dict[str, str], **_: Any) -> None:
        problems = []
        for name in value:
            if name in RESERVED_ENV:
                problems.append(f"{name!r} is set by deploy (reserved: "
                                f"{', '.join(RESERVED_ENV)}); put container settings under "
                                "'settings'")
            elif not ENV_NAME.match(name):
                problems.append(f"{name!r} is not a variable name: letters, digits, '_', '-' "
                                "or '.', not starting with a digit")
        if problems:
            raise ValidationError(problems)

    @validates("labels")
    def _check_labels(self, value: dict[str, str], **_: Any) -> None:
        problems = []
        for key, label in value.items():
            if key.startswith(ocho_labels.PREFIX) or key == ocho_labels.MANAGED_BY:
                problems.append(f"{key!r} is set by deploy; the {ocho_labels.PREFIX} prefix is "
                                "reserved")
            elif problem := label_key_problem(key):
                problems.append(f"key {key!r}: {problem}")
            elif problem := label_value_problem(label):
                problems.append(f"value {label!r} of {key!r} {problem}")
        if problems:
            raise ValidationError(problems)


_schema = DefinitionSchema()


def quantity_value(text: str) -> Decimal:
    match = QUANTITY.match(text)
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    suffix = match["suffix"] or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(match["number"] + suffix)
        return Decimal(match["number"]) * _SUFFIX_SCALE[suffix]
    except InvalidOperation:  # pragma: no cover - the regex admits only numbers
        raise ValueError(f"not a quantity: {text!r}") from None


def validate(data: Any, source: str) -> Definition:
    """Check parsed YAML against the schema; raise DefinitionError listing every problem."""
    if data is None:
        raise DefinitionError([f"{source}: is empty; a definition needs at least 'cluster' "
                               "and 'image'"])
    if not isinstance(data, Mapping):
        raise DefinitionError([f"{source}: must be a mapping of fields ({', '.join(FIELDS)}), "
                               f"got {_type_name(data)}"])
    try:
        loaded = _schema.load(dict(data))
    except ValidationError as exc:
        raise DefinitionError([f"{source}: {field}: {problem}" if field else f"{source}: {problem}"
                               for field, problem in flatten_errors(exc.messages)]) from None
    return Definition(
        source=source,
        cluster=loaded["cluster"],
        image=loaded["image"],
        ports=tuple(loaded.get("ports") or ()),
        settings=loaded.get("settings") or {},
        pods=loaded.get("pods"),
        env=dict(loaded.get("env") or {}),
        resources={kind: dict(values) for kind, values in (loaded.get("resources") or {}).items()
                   if values},
        command=tuple(loaded["command"]) if loaded.get("command") is not None else None,
        args=tuple(loaded["args"]) if loaded.get("args") is not None else None,
        labels=dict(loaded.get("labels") or {}),
    )


def flatten_errors(messages: Any, path: str = "") -> list[tuple[str, str]]:
    """marshmallow's nested error dict as (field path, message) pairs: `ports[1]`, `env.X`."""
    if isinstance(messages, Mapping):
        found = []
        for key, value in messages.items():
            if key == "_schema":
                found += flatten_errors(value, path)
            elif isinstance(key, int):
                found += flatten_errors(value, f"{path}[{key}]")
            elif key in ("key", "value") and path and isinstance(value, list):
                # A Dict field's problem with one entry's key or value.
                found += flatten_errors(value, path)
            else:
                found += flatten_errors(value, f"{path}.{key}" if path else str(key))
        return found
    if isinstance(messages, list):
        return [pair for message in messages for pair in flatten_errors(message, path)]
    return [(path, str(messages))]


# -- overrides ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Overrides:
    """An overrides file: merged deeply into every definition before validation.

    Top-level keys with a dot are `<namespace>.<cluster>` patterns (globs allowed);
    their value is merged only into the definitions of matching clusters, after
    the plain keys. For example:

        settings: {debug: false}     # every definition
        dev.web-server:              # only cluster web-server in namespace dev
          pods: 2
          settings: {debug: true}
    """

    common: dict[str, Any] = dataclasses.field(default_factory=dict)
    scoped: tuple[tuple[ClusterPattern, dict[str, Any]], ...] = ()

    def apply(self, data: Any, namespace: str) -> Any:
        if not isinstance(data, Mapping):
            return data  # validation reports the shape
        merged = deep_merge(data, self.common)
        for pattern, fragment in self.scoped:
            cluster = merged.get("cluster")
            if isinstance(cluster, str) and pattern.matches(namespace, cluster):
                merged = deep_merge(merged, fragment)
        return merged


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else in `override` replaces what `base` had."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_overrides(path: str) -> Overrides:
    try:
        data = _read_yaml(path)
    except safeyaml.YamlProblem as exc:
        raise DefinitionError([f"{path}: {exc}"]) from None
    if data is None:
        return Overrides()
    if not isinstance(data, Mapping):
        raise DefinitionError([f"{path}: an overrides file must be a mapping of definition "
                               f"fields, got {_type_name(data)}"])
    common: dict[str, Any] = {}
    scoped: list[tuple[ClusterPattern, dict[str, Any]]] = []
    problems = []
    for key, value in data.items():
        if isinstance(key, str) and "." in key:
            try:
                pattern = ClusterPattern.parse(key)
            except Exception as exc:  # noqa: BLE001 - reported with the file name
                problems.append(f"{path}: {key}: {exc}")
                continue
            if not isinstance(value, Mapping):
                problems.append(f"{path}: {key}: must be a mapping of definition fields, got "
                                f"{_type_name(value)}")
                continue
            scoped.append((pattern, dict(value)))
        else:
            common[key] = value
    if problems:
        raise DefinitionError(problems)
    return Overrides(common=common, scoped=tuple(scoped))


# -- files --------------------------------------------------------------------------------

# Set by the worker: the tool runs as a portal job, in a directory of the job's uploads.
JOB_ID_VARIABLE = "OCHO_JOB_ID"
OUTSIDE_THE_JOB = ("only the job's own files can be read: name an uploaded file, without "
                   "a leading '/' or '..'")


def _outside_the_job(path: str) -> bool:
    """In a portal job, whether `path` leaves the job's directory (absolute, '..', or a
    symlink out). A job must never read the worker's files (/proc/<worker>/environ, a
    service-account token) and print them back in an error. Outside a job, any path."""
    if not os.environ.get(JOB_ID_VARIABLE):
        return False
    if os.path.isabs(path) or ".." in Path(path).parts:
        return True
    here = os.path.realpath(".")
    return os.path.commonpath([here, os.path.realpath(path)]) != here


def _read_yaml(path: str) -> Any:
    if _outside_the_job(path):
        raise safeyaml.YamlProblem(OUTSIDE_THE_JOB)
    return safeyaml.load_file(path)


def expand_paths(arguments: Iterable[str]) -> tuple[list[str], list[str]]:
    """Expand glob arguments ourselves (tools get no shell): (paths, problems)."""
    paths: list[str] = []
    problems: list[str] = []
    for argument in arguments:
        if glob.has_magic(argument) and _outside_the_job(argument):
            problems.append(f"{argument}: {OUTSIDE_THE_JOB}")
        elif glob.has_magic(argument):
            matches = sorted(glob.glob(argument))
            if not matches:
                problems.append(f"{argument}: no file matches this pattern")
            paths += matches
        else:
            paths.append(argument)
    return list(dict.fromkeys(paths)), problems


def load_definition(path: str, overrides: Overrides, namespace: str) -> Definition:
    try:
        data = _read_yaml(path)
    except safeyaml.YamlProblem as exc:
        raise DefinitionError([f"{path}: {exc}"]) from None
    return validate(overrides.apply(data, namespace), source=Path(path).as_posix())


def load_definitions(paths: Iterable[str], overrides: Overrides,
                     namespace: str) -> tuple[list[Definition], list[str]]:
    """Load every file; (definitions, problems). Definitions are only usable if no problems."""
    definitions: list[Definition] = []
    problems: list[str] = []
    first_source: dict[str, str] = {}
    for path in paths:
        try:
            definition = load_definition(path, overrides, namespace)
        except DefinitionError as exc:
            problems += exc.problems
            continue
        earlier = first_source.setdefault(definition.cluster, definition.source)
        if earlier != definition.source:
            problems.append(f"{definition.source}: cluster: {namespace}.{definition.cluster} is "
                            f"also deployed by {earlier}; one job deploys a cluster once")
            continue
        definitions.append(definition)
    return definitions, problems
