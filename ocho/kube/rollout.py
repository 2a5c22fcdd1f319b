"""Waiting for freshly deployed controllers to have their pods running and ready.

Watches the pods (one streaming request) instead of polling, and stops as soon
as every controller has as many ready pods as it wants, or at the deadline.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ocho.kube import labels

if TYPE_CHECKING:
    from ocho.kube.api import KubeApi


def is_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    return (status.get("phase") == "Running" and bool(statuses)
            and all(item.get("ready") for item in statuses)
            and not (pod.get("metadata") or {}).get("deletionTimestamp"))


def wait_until_ready(api: KubeApi, wanted: dict[str, int], timeout: float) -> dict[str, int]:
    """Ready pods per controller name once all of `wanted` are met or `timeout` passes."""
    ready_pods: dict[str, str] = {}  # pod name -> its controller, for pods that are ready

    def counts() -> dict[str, int]:
        found = dict.fromkeys(wanted, 0)
        for application in ready_pods.values():
            found[application] = found.get(application, 0) + 1
        return found

    def done() -> bool:
        current = counts()
        return all(current[name] >= replicas for name, replicas in wanted.items())

    if not wanted or done():
        return counts()
    selector = f"{labels.APPLICATION} in ({','.join(sorted(wanted))})"
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        # A watch may end early (server timeouts, proxies); start another until the deadline.
        ready_pods.clear()  # a new watch begins with ADDED events for every current pod
        for event_type, pod in api.watch_pods(selector, max(1, int(remaining))):
            name = (pod.get("metadata") or {}).get("name", "")
            application = ((pod.get("metadata") or {}).get("labels") or {}).get(labels.APPLICATION)
            if event_type != "DELETED" and is_ready(pod) and application in wanted:
                ready_pods[name] = application
            else:
                ready_pods.pop(name, None)
            if done():
                return counts()
    return counts()
