"""Ochopod clusters as the tools see them: controllers and pods found by label.

A cluster (`<namespace>.<cluster>`) is every ReplicationController carrying its
labels (one per deploy) and the pods those controllers run. A pod with the
cluster's labels but no controlling owner is an orphan: its controller was
deleted with the Orphan policy, and nothing will ever remove it but `kill --orphans`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ocho.kube import labels
from ocho.kube.errors import KubeError
from ocho.kube.patterns import ClusterPattern, common_selector, parse_patterns

if TYPE_CHECKING:
    from ocho.kube.api import KubeApi


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time from the API (`2024-05-01T10:00:00Z`)."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class Controller:
    name: str
    namespace: str  # the Ochopod namespace, from the labels
    cluster: str
    job: str | None
    replicas: int  # desired
    current: int  # pods the controller has
    ready: int
    created: datetime | None
    resource_version: str | None
    definition: str | None
    deleting: bool

    @property
    def qualified(self) -> str:
        return f"{self.namespace}.{self.cluster}"

    @classmethod
    def from_json(cls, rc: dict[str, Any]) -> Controller:
        meta = rc.get("metadata") or {}
        found = meta.get("labels") or {}
        spec = rc.get("spec") or {}
        status = rc.get("status") or {}
        return cls(
            name=meta.get("name", "?"),
            namespace=found.get(labels.NAMESPACE, "?"),
            cluster=found.get(labels.CLUSTER, "?"),
            job=found.get(labels.JOB),
            replicas=spec.get("replicas", 1),
            current=status.get("replicas", 0),
            ready=status.get("readyReplicas", 0),
            created=(parse_time((meta.get("annotations") or {}).get(
                labels.DEPLOYED_AT_ANNOTATION)) or parse_time(meta.get("creationTimestamp"))),
            resource_version=meta.get("resourceVersion"),
            definition=(meta.get("annotations") or {}).get(labels.DEFINITION_ANNOTATION),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "cluster": self.qualified, "namespace": self.namespace, "name": self.cluster,
            "controller": self.name, "replicas": self.replicas, "current": self.current,
            "ready": self.ready, "job": self.job, "definition": self.definition,
            "created": self.created.isoformat() if self.created else None,
            "deleting": self.deleting,
        }


@dataclasses.dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    cluster: str
    application: str | None
    ip: str | None
    node: str | None
    phase: str
    ready: int
    containers: int
    restarts: int
    started: datetime | None
    deleting: bool
    orphaned: bool  # no controller owns it any more
    raw: dict[str, Any] = dataclasses.field(repr=False, compare=False)

    @property
    def qualified(self) -> str:
        return f"{self.namespace}.{self.cluster}"

    @classmethod
    def from_json(cls, pod: dict[str, Any]) -> Pod:
        meta = pod.get("metadata") or {}
        found = meta.get("labels") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        statuses = status.get("containerStatuses") or []
        return cls(
            name=meta.get("name", "?"),
            namespace=found.get(labels.NAMESPACE, "?"),
            cluster=found.get(labels.CLUSTER, "?"),
            application=found.get(labels.APPLICATION),
            ip=status.get("podIP"),
            node=spec.get("nodeName"),
            phase=status.get("phase") or "Unknown",
            ready=sum(1 for item in statuses if item.get("ready")),
            containers=len(spec.get("containers") or []),
            restarts=sum(item.get("restartCount", 0) for item in statuses),
            started=parse_time(status.get("startTime") or meta.get("creationTimestamp")),
            deleting=bool(meta.get("deletionTimestamp")),
            orphaned=not any(owner.get("controller") for owner in meta.get("ownerReferences")
                             or []),
            raw=pod,
        )


def _check_matched(patterns: Sequence[ClusterPattern], found: Sequence[tuple[str, str]],
                   what: str, k8s_namespace: str) -> None:
    for pattern in patterns:
        if not any(pattern.matches(namespace, cluster) for namespace, cluster in found):
            raise KubeError(f"no {what} matches {pattern.text!r} in Kubernetes namespace "
                            f"{k8s_namespace!r}")


def select_controllers(api: KubeApi, texts: Sequence[str],
                       orphans: Sequence[Pod] = ()) -> list[Controller]:
    """Controllers of the clusters the patterns name (all of them if there is none).

    Every pattern given must match a controller, or one of `orphans`: a typo
    fails instead of doing nothing.
    """
    patterns = parse_patterns(list(texts) or ["*"])
    controllers = [Controller.from_json(rc)
                   for rc in api.list_controllers(common_selector(patterns))]
    chosen = [rc for rc in controllers
              if any(pattern.matches(rc.namespace, rc.cluster) for pattern in patterns)]
    if texts:
        found = [(rc.namespace, rc.cluster) for rc in chosen]
        _check_matched(patterns, found + [(pod.namespace, pod.cluster) for pod in orphans],
                       "cluster", api.namespace)
    return sorted(chosen, key=lambda rc: (rc.qualified,
                                         rc.created.timestamp() if rc.created else 0.0, rc.name))


def select_orphans(api: KubeApi, texts: Sequence[str]) -> list[Pod]:
    """The orphaned pods of the clusters the patterns name; no pattern need match."""
    patterns = parse_patterns(list(texts) or ["*"])
    return sorted((pod for pod in map(Pod.from_json, api.list_pods(common_selector(patterns)))
                   if pod.orphaned and not pod.deleting
                   and any(pattern.matches(pod.namespace, pod.cluster) for pattern in patterns)),
                  key=lambda pod: (pod.qualified, pod.name))


def select_pods(api: KubeApi, texts: Sequence[str]) -> list[Pod]:
    """Pods of the clusters the patterns name (all of them if there is none)."""
    patterns = parse_patterns(list(texts) or ["*"])
    pods = [Pod.from_json(pod) for pod in api.list_pods(common_selector(patterns))]
    chosen = [pod for pod in pods
              if any(pattern.matches(pod.namespace, pod.cluster) for pattern in patterns)]
    if texts:
        _check_matched(patterns, [(pod.namespace, pod.cluster) for pod in chosen],
                       "pod of a cluster", api.namespace)
    return sorted(chosen, key=lambda pod: (pod.qualified, pod.name))
