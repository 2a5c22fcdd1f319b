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

`check_definition` below is the single definition of what is valid. Every
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
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

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
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*\Z")
QUANTITY = re.compile(r"^(?P<number>(\d+(\.\d*)?|\.\d+))"
                      r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?\Z")
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


class Invalid(Exception):
    """A value that breaks a rule: its problems as (path below the value, message)."""

    def __init__(self, message: str | list[str], path: str = "") -> None:
        super().__init__(message)
        messages = message if isinstance(message, list) else [message]
        self.problems = [(path, text) for text in messages]
        # What a container kept of its good items, so that rules on the whole
        # can still speak about those.
        self.kept: Any = None


# Each check takes a value as YAML gave it and returns it as the definition keeps
# it, or raises Invalid. A container's check reports every bad item at once.
Check = Callable[[Any], Any]


def text(what: str = "a string") -> Check:
    """A string and only a string (YAML turns `on`, `1.10` or `2024-01-01` into other types)."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be {what}, got {_type_name(value)}; "
                          "quote it if YAML read it as another type")
        return value
    return check


def whole_number(low: int, high: int | None = None, what: str = "a whole number") -> Check:
    def check(value: Any) -> int:
        in_range = (isinstance(value, int) and not isinstance(value, bool)
                    and value >= low and (high is None or value <= high))
        if not in_range:
            bounds = f"from {low}" if high is None else f"{low}-{high}"
            raise Invalid(f"must be {what} ({bounds}), got {_type_name(value)}")
        return value
    return check


def quantity(value: Any) -> str:
    """A Kubernetes quantity such as `250m`, `0.5`, `512Mi` or `1G`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        value = str(value)
    if not isinstance(value, str) or not QUANTITY.match(value):
        raise Invalid(f"must be a quantity such as 250m, 0.5, 512Mi or 2Gi, "
                      f"got {_type_name(value)}")
    return value


def json_data(value: Any) -> Any:
    """Nested plain data that JSON can carry: mappings with string keys, lists,
    strings, finite numbers, booleans and null. Dates become ISO strings."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Invalid(f"must be a mapping of settings, got {_type_name(value)}")
    return _plain(value, "")


def _plain(value: Any, path: str) -> Any:
    where = f"{path}: " if path else ""
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise Invalid(f"{where}key {key!r} must be a string; quote it")
            plain[key] = _plain(item, f"{path}.{key}" if path else key)
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(f"{where}{value} cannot be sent as JSON; use a string")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    raise Invalid(f"{where}{_type_name(value)} cannot be sent as JSON "
                  "(binary data and sets are not allowed)")


def list_of(item: Check, invalid: str) -> Check:
    def check(value: Any) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise Invalid(invalid)
        problems: list[tuple[str, str]] = []
        kept = []
        for index, element in enumerate(value):
            try:
                kept.append(item(element))
            except Invalid as exc:
                problems += _under(f"[{index}]", exc)
        if problems:
            raise _many(problems, kept)
        return kept
    return check


def mapping_of(key: Check, item: Check, invalid: str) -> Check:
    def check(value: Any) -> dict[Any, Any]:
        if not isinstance(value, Mapping):
            raise Invalid(invalid)
        problems: list[tuple[str, str]] = []
        kept = {}
        for name, element in value.items():
            checked = []
            for part, checker in ((name, key), (element, item)):
                try:
                    checked.append(checker(part))
                except Invalid as exc:  # a bad name and a bad value are both worth saying
                    problems += _under(f".{name}", exc)
            if len(checked) == 2:
                kept[checked[0]] = checked[1]
        if problems:
            raise _many(problems, kept)
        return kept
    return check


def fields_of(checks: dict[str, Check], *, required: dict[str, str] | None = None,
              allowed: Iterable[str] | None = None, nullable: Iterable[str] = (),
              then: Callable[[dict[str, Any]], None] | None = None) -> Check:
    """A mapping with the named fields, each checked; unknown fields and missing
    required ones are problems too. `then` checks the fields together, once each
    is valid on its own."""
    allowed_names = tuple(allowed or checks)

    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise Invalid(f"must be a mapping with {', '.join(allowed_names)}, "
                          f"got {_type_name(value)}")
        problems: list[tuple[str, str]] = []
        kept: dict[str, Any] = {}
        for name, field_check in checks.items():
            if name not in value:
                if required and name in required:
                    problems.append((f".{name}", required[name]))
                continue
            if value[name] is None and name not in nullable:
                problems.append((f".{name}", "is empty (null): give it a value or leave it out"))
                continue
            try:
                kept[name] = field_check(value[name])
            except Invalid as exc:
                problems += _under(f".{name}", exc)
        for name in value:
            if name not in checks:
                problems.append((f".{name}", f"unknown field; allowed fields are "
                                            f"{', '.join(allowed_names)}"))
        if not problems and then is not None:
            then(kept)
        if problems:
            raise _many(problems)
        return kept
    return check


def _under(prefix: str, exc: Invalid) -> list[tuple[str, str]]:
    """The problems of a part, with their paths under the part's own: a path is
    `.field`, `.key` and `[index]` steps (`.ports` + `[1]`)."""
    return [(prefix + path, message) for path, message in exc.problems]


def _many(problems: list[tuple[str, str]], kept: Any = None) -> Invalid:
    invalid = Invalid([])
    invalid.problems, invalid.kept = problems, kept
    return invalid


def then_checked(check: Check, *rules: Callable[[Any], None]) -> Check:
    """`check`, and then rules on the value it kept (a container's good items,
    if some were bad)."""
    def checked(value: Any) -> Any:
        problems: list[tuple[str, str]] = []
        try:
            kept = check(value)
        except Invalid as exc:
            if exc.kept is None:
                raise
            kept, problems = exc.kept, list(exc.problems)
        for rule in rules:
            try:
                rule(kept)
            except Invalid as exc:
                problems += exc.problems
        if problems:
            raise _many(problems)
        return kept
    return checked


# -- the rules ----------------------------------------------------------------------------

def _cluster_rule(value: str) -> None:
    if not is_dns1123_label(value):
        raise Invalid(f"{value!r} {DNS1123_LABEL_RULE}")


def _image_rule(value: str) -> None:
    if not value or any(char.isspace() for char in value):
        raise Invalid(f"{value!r} is not an image name: it must be non-empty "
                      "without spaces, e.g. 'redis:7'")


def _ports_rule(value: list[int]) -> None:
    duplicates = sorted({port for port in value if value.count(port) > 1})
    if duplicates:
        raise Invalid(f"port(s) {', '.join(map(str, duplicates))} listed more than once")


def _env_rule(value: dict[str, str]) -> None:
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
        raise Invalid(problems)


def _labels_rule(value: dict[str, str]) -> None:
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
        raise Invalid(problems)


def _requests_within_limits(resources: dict[str, Any]) -> None:
    for name, limit in (resources.get("limits") or {}).items():
        request = (resources.get("requests") or {}).get(name)
        if request is not None and quantity_value(request) > quantity_value(limit):
            raise Invalid(f"{request} is above limits.{name} ({limit})",
                          path=f".requests.{name}")


_resource_list = fields_of({"cpu": quantity, "memory": quantity})
_strings = list_of(text(), "must be a list of strings")

# What a definition may hold. Checked by hand, not by a schema library: a tool
# starts once per job, and importing marshmallow cost deploy half its start-up.
check_definition = fields_of(
    {
        "cluster": then_checked(text("the cluster name"), _cluster_rule),
        "image": then_checked(text("a Docker image name"), _image_rule),
        "ports": then_checked(list_of(whole_number(1, 65535, what="a TCP port number"),
                                      "must be a list of port numbers (1-65535)"), _ports_rule),
        "settings": json_data,
        "pods": whole_number(0, what="a pod count"),
        "env": then_checked(mapping_of(text("a variable name"), text(),
                                       "must be a mapping of variable name -> string"),
                            _env_rule),
        "resources": fields_of({"requests": _resource_list, "limits": _resource_list},
                               then=_requests_within_limits),
        "command": _strings,
        "args": _strings,
        "labels": then_checked(mapping_of(text("a label key"), text("a label value"),
                                          "must be a mapping of label key -> value"),
                               _labels_rule),
    },
    required={
        "cluster": "required: the Ochopod cluster name, e.g. 'zookeeper'",
        "image": "required: the Docker image to run, e.g. 'paugamo/k8s-ec2-zookeeper'",
    },
    allowed=FIELDS,
    nullable=("settings",),
)


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
        loaded = check_definition(data)
    except Invalid as exc:
        raise DefinitionError([f"{source}: {field.removeprefix('.')}: {problem}" if field
                               else f"{source}: {problem}"
                               for field, problem in exc.problems]) from None
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
