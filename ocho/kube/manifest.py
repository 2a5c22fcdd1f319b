"""A definition turned into a core/v1 ReplicationController manifest.

What Ochopod needs is added transparently: the `ochopod_*` variables, the
settings as JSON in `pod`, and the control port 8080. The labels of
`ocho.kube.labels` go on the controller, in its selector and on its pods.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ocho.kube import labels
from ocho.kube.definition import CONTROL_PORT, Definition
from ocho.kube.names import controller_name, discriminator

# The largest controller deploy sends, as JSON. etcd refuses requests over
# 1.5 MiB (the API server then answers 500 "etcdserver: request is too large"),
# and a batch must never fail halfway for it: deploy refuses bigger ones first.
MAX_CONTROLLER_BYTES = 1024 * 1024


def cluster_labels(namespace: str, cluster: str, application: str,
                   job_id: str | None) -> dict[str, str]:
    found = {labels.NAMESPACE: namespace, labels.CLUSTER: cluster, labels.APPLICATION: application}
    if job_id:
        found[labels.JOB] = job_id
    return found


def settings_json(definition: Definition) -> str:
    return json.dumps(definition.settings, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def build_controller(definition: Definition, *, namespace: str, pods: int,
                     job_id: str | None, when: datetime) -> dict[str, Any]:
    """The ReplicationController for `definition`, as the JSON/YAML the API takes."""
    name = controller_name(namespace, definition.cluster, when, discriminator(job_id))
    selector = cluster_labels(namespace, definition.cluster, name, job_id)
    all_labels = {**definition.labels, labels.MANAGED_BY: labels.MANAGED_BY_VALUE, **selector}
    env = [{"name": key, "value": value} for key, value in definition.env.items()]
    env += [
        {"name": "ochopod_cluster", "value": definition.cluster},
        {"name": "ochopod_namespace", "value": namespace},
        {"name": "ochopod_application", "value": name},
        {"name": "pod", "value": settings_json(definition)},
    ]
    ports = list(definition.ports)
    if CONTROL_PORT not in ports:
        ports.append(CONTROL_PORT)
    container: dict[str, Any] = {
        "name": definition.cluster,
        "image": definition.image,
        "env": env,
        "ports": [{"containerPort": port, "protocol": "TCP"} for port in ports],
    }
    if definition.command is not None:
        container["command"] = list(definition.command)
    if definition.args is not None:
        container["args"] = list(definition.args)
    if definition.resources:
        container["resources"] = {kind: dict(values)
                                  for kind, values in definition.resources.items()}
    return {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": {
            "name": name,
            "labels": all_labels,
            "annotations": {labels.DEFINITION_ANNOTATION: definition.source,
                            labels.DEPLOYED_AT_ANNOTATION: when.isoformat()},
        },
        "spec": {
            "replicas": pods,
            "selector": dict(selector),
            "template": {
                "metadata": {"labels": dict(all_labels)},
                "spec": {"containers": [container]},
            },
        },
    }


def serialized_size(manifest: dict[str, Any]) -> int:
    return len(json.dumps(manifest, separators=(",", ":"), ensure_ascii=False).encode())


def size_problem(manifest: dict[str, Any]) -> str | None:
    """Why this controller is too large to deploy, or None."""
    size = serialized_size(manifest)
    if size <= MAX_CONTROLLER_BYTES:
        return None
    return (f"its ReplicationController would be {size / 1024:.0f} KiB as JSON, over deploy's "
            f"limit of {MAX_CONTROLLER_BYTES // 1024} KiB per controller (Kubernetes' etcd "
            "refuses objects over 1.5 MiB); make its `settings`, `env` or overrides smaller")
