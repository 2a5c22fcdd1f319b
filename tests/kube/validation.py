"""The API server's validation of the objects the emulator accepts (→ 422).

Only what the portal's objects can get wrong is checked, with the API's own
wording: `<field>: Invalid value: <value>: <why>` or `<field>: Required value`.
"""

from __future__ import annotations

import re
from typing import Any

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
ENV_NAME = re.compile(r"^[^=\s]+$")  # 1.34+: any printable characters but '='

Cause = dict[str, str]


def invalid(field: str, value: Any, why: str) -> Cause:
    shown = f'"{value}"' if isinstance(value, str) else value
    return {"reason": "FieldValueInvalid", "field": field,
            "message": f"Invalid value: {shown}: {why}"}


def required(field: str) -> Cause:
    return {"reason": "FieldValueRequired", "field": field, "message": "Required value"}


def _labels(field: str, labels: Any) -> list[Cause]:
    causes = []
    if labels is None:
        return causes
    if not isinstance(labels, dict):
        return [invalid(field, labels, "must be a map of string keys to string values")]
    for key, value in labels.items():
        name = key.rpartition("/")[2]
        prefix = key.rpartition("/")[0]
        if (not LABEL_NAME.match(name) or len(name) > 63
                or (prefix and not DNS1123_SUBDOMAIN.match(prefix))):
            causes.append(invalid(field, key, "name part must consist of alphanumeric "
                                  "characters, '-', '_' or '.', and must start and end with an "
                                  "alphanumeric character"))
        if not isinstance(value, str) or (value and (not LABEL_NAME.match(value)
                                                     or len(value) > 63)):
            causes.append(invalid(field, value, "a valid label must be an empty string or "
                                  "consist of alphanumeric characters, '-', '_' or '.', and "
                                  "must start and end with an alphanumeric character"))
    return causes


def metadata(meta: Any) -> list[Cause]:
    if not isinstance(meta, dict):
        return [required("metadata")]
    causes = []
    name = meta.get("name")
    if not name:
        causes.append({"reason": "FieldValueRequired", "field": "metadata.name",
                       "message": "Required value: name or generateName is required"})
    elif not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        causes.append(invalid("metadata.name", name, "a lowercase RFC 1123 subdomain must "
                              "consist of lower case alphanumeric characters, '-' or '.', and "
                              "must start and end with an alphanumeric character"))
    causes += _labels("metadata.labels", meta.get("labels"))
    return causes


def pod_spec(field: str, spec: Any) -> list[Cause]:
    if not isinstance(spec, dict):
        return [required(field)]
    containers = spec.get("containers")
    if not containers or not isinstance(containers, list):
        return [required(f"{field}.containers")]
    causes = []
    names = set()
    for index, container in enumerate(containers):
        where = f"{field}.containers[{index}]"
        name = container.get("name")
        if not name:
            causes.append(required(f"{where}.name"))
        elif not DNS1123_LABEL.match(name) or len(name) > 63:
            causes.append(invalid(f"{where}.name", name, "a lowercase RFC 1123 label must "
                                  "consist of lower case alphanumeric characters or '-'"))
        elif name in names:
            causes.append({"reason": "FieldValueDuplicate", "field": f"{where}.name",
                           "message": f'Duplicate value: "{name}"'})
        names.add(name)
        if not container.get("image"):
            causes.append(required(f"{where}.image"))
        for port_index, port in enumerate(container.get("ports") or []):
            number = port.get("containerPort")
            if not isinstance(number, int) or not 1 <= number <= 65535:
                causes.append(invalid(f"{where}.ports[{port_index}].containerPort", number,
                                      "must be between 1 and 65535, inclusive"))
        for env_index, variable in enumerate(container.get("env") or []):
            if not ENV_NAME.match(str(variable.get("name", ""))):
                causes.append(invalid(f"{where}.env[{env_index}].name", variable.get("name"),
                                      "a valid environment variable name must consist only "
                                      "of printable ASCII characters other than '='"))
    return causes


def replication_controller(rc: dict[str, Any]) -> list[Cause]:
    causes = metadata(rc.get("metadata"))
    spec = rc.get("spec")
    if not isinstance(spec, dict):
        return [*causes, required("spec")]
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        causes.append(invalid("spec.replicas", replicas, "must be greater than or equal to 0"))
    selector = spec.get("selector") or {}
    template = spec.get("template")
    if not selector:
        causes.append(required("spec.selector"))
    if not isinstance(template, dict):
        return [*causes, required("spec.template")]
    template_labels = (template.get("metadata") or {}).get("labels") or {}
    causes += _labels("spec.template.metadata.labels", template_labels)
    if selector and any(template_labels.get(key) != value for key, value in selector.items()):
        shown = "map[string]string{" + ", ".join(
            f'"{key}":"{value}"' for key, value in sorted(template_labels.items())) + "}"
        causes.append({"reason": "FieldValueInvalid", "field": "spec.template.metadata.labels",
                       "message": f"Invalid value: {shown}: `selector` does not match "
                                  "template `labels`"})
    causes += pod_spec("spec.template.spec", template.get("spec"))
    return causes


def scale(body: dict[str, Any]) -> list[Cause]:
    replicas = (body.get("spec") or {}).get("replicas", 0)
    if not isinstance(replicas, int) or replicas < 0:
        return [invalid("spec.replicas", replicas, "must be greater than or equal to 0")]
    return []


def message(kind: str, name: str, causes: list[Cause]) -> str:
    """The Status message the API server writes for an Invalid object."""
    texts = [f"{cause['field']}: {cause['message']}" for cause in causes]
    listed = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return f'{kind} "{name}" is invalid: {listed}'
