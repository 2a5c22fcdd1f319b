"""What the control plane does behind the API: the ReplicationController
manager, the garbage collector and the kubelet's part (pods run and log).

It runs in a thread that wakes on every write to the store, so, as in a real
cluster, pods appear shortly after a controller is created, not within the
create call. The rules followed:
- an RC owns the pods with its uid as controller ownerReference; orphans whose
  labels match its selector are adopted; it creates or deletes pods until it
  owns spec.replicas of them, then reports status (replicas, ready, ...);
- an object being deleted (deletionTimestamp) with the `orphan` finalizer has
  the ownerReferences to it removed from its pods; with `foregroundDeletion`
  its pods are deleted first; it goes once its finalizers are done;
- a pod whose controller no longer exists is deleted (background deletion).
"""

from __future__ import annotations

import bisect
import itertools
import random
import string
import threading
from datetime import UTC, datetime
from typing import Any

from tests.kube import selectors
from tests.kube.store import Object, Store, now_rfc3339

POD_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # as the apiserver's generateName
NODE_NAME = "emulated-node-1"


class PodLogs:
    """Each pod's log: (time, line) entries kept in time order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (time, sequence, line): lines written in the same instant keep their order
        self._lines: dict[tuple[str, str], list[tuple[datetime, int, str]]] = {}
        self._sequence = itertools.count()

    def append(self, namespace: str, pod: str, line: str, at: datetime | None = None) -> None:
        with self._lock:
            entries = self._lines.setdefault((namespace, pod), [])
            bisect.insort(entries, (at or datetime.now(UTC), next(self._sequence), line))

    def read(self, namespace: str, pod: str) -> list[tuple[datetime, str]]:
        with self._lock:
            return [(at, line) for at, _, line in self._lines.get((namespace, pod), [])]

    def drop(self, namespace: str, pod: str) -> None:
        with self._lock:
            self._lines.pop((namespace, pod), None)


def controller_ref(obj: Object) -> dict[str, Any] | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


class ControlPlane(threading.Thread):
    def __init__(self, store: Store, logs: PodLogs) -> None:
        super().__init__(name="kube-emulator-controllers", daemon=True)
        self.store = store
        self.logs = logs
        self._stopping = threading.Event()
        self._ips = itertools.count(2)
        self._random = random.Random()
        # Pods of these images stay Pending (as if still pulling) until released.
        self.held_images: set[str] = set()

    def stop(self) -> None:
        self._stopping.set()
        with self.store.changed:
            self.store.changed.notify_all()

    def run(self) -> None:
        seen = -1
        while not self._stopping.is_set():
            with self.store.changed:
                if self.store.revision == seen:
                    self.store.changed.wait(timeout=0.2)
            with self.store.lock:
                before = None
                while before != self.store.revision:  # until a pass changes nothing
                    before = self.store.revision
                    self.reconcile()
                seen = self.store.revision

    def reconcile(self) -> None:
        with self.store.lock:
            self._finalize_deletions()
            self._collect_garbage()
            for rc in self.store.list("replicationcontrollers"):
                if not rc["metadata"].get("deletionTimestamp"):
                    self._sync(rc)
            self._run_released_pods()

    # -- garbage collection ---------------------------------------------------------------
    def _owned_pods(self, rc: Object) -> list[Object]:
        uid = rc["metadata"]["uid"]
        namespace = rc["metadata"]["namespace"]
        return [pod for pod in self.store.list("pods", namespace)
                if (controller_ref(pod) or {}).get("uid") == uid]

    def _finalize_deletions(self) -> None:
        for rc in self.store.list("replicationcontrollers"):
            meta = rc["metadata"]
            if not meta.get("deletionTimestamp"):
                continue
            finalizers = list(meta.get("finalizers") or [])
            if "orphan" in finalizers:
                for pod in self._owned_pods(rc):
                    pod["metadata"]["ownerReferences"] = [
                        ref for ref in pod["metadata"].get("ownerReferences") or []
                        if ref.get("uid") != meta["uid"]]
                    if not pod["metadata"]["ownerReferences"]:
                        del pod["metadata"]["ownerReferences"]
                    self.store.update("pods", meta["namespace"], pod)
                finalizers.remove("orphan")
            if "foregroundDeletion" in finalizers:
                owned = self._owned_pods(rc)
                for pod in owned:
                    self.delete_pod(meta["namespace"], pod["metadata"]["name"])
                finalizers.remove("foregroundDeletion")
            if finalizers != (meta.get("finalizers") or []):
                meta["finalizers"] = finalizers
                if not finalizers:
                    del meta["finalizers"]
                rc = self.store.update("replicationcontrollers", meta["namespace"], rc)
            if not rc["metadata"].get("finalizers"):
                self.store.delete("replicationcontrollers", meta["namespace"], meta["name"])

    def _collect_garbage(self) -> None:
        live = {rc["metadata"]["uid"] for rc in self.store.list("replicationcontrollers")}
        for pod in self.store.list("pods"):
            ref = controller_ref(pod)
            if ref is not None and ref.get("uid") not in live:
                self.delete_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])

    def delete_pod(self, namespace: str, name: str) -> Object | None:
        self.logs.drop(namespace, name)
        return self.store.delete("pods", namespace, name)

    # -- the replication manager ----------------------------------------------------------
    def _sync(self, rc: Object) -> None:
        meta, spec = rc["metadata"], rc["spec"]
        namespace = meta["namespace"]
        requirements = selectors.from_map(spec.get("selector") or {})
        owned = self._owned_pods(rc)
        for pod in self.store.list("pods", namespace):  # adopt matching orphans
            if (controller_ref(pod) is None and requirements
                    and selectors.matches(requirements, pod["metadata"].get("labels"))):
                pod["metadata"]["ownerReferences"] = [self._owner_reference(rc)]
                owned.append(self.store.update("pods", namespace, pod))
        wanted = spec.get("replicas", 1)
        while len(owned) < wanted:
            owned.append(self._start_pod(rc))
        # Scaling down removes the newest pods first, as the real manager does for
        # pods that are equally ready.
        owned.sort(key=lambda pod: int(pod["metadata"]["resourceVersion"]))
        for pod in owned[wanted:]:
            self.delete_pod(namespace, pod["metadata"]["name"])
        owned = owned[:wanted]
        template_labels = (spec.get("template") or {}).get("metadata", {}).get("labels") or {}
        status = {
            "replicas": len(owned),
            "fullyLabeledReplicas": sum(
                1 for pod in owned
                if all((pod["metadata"].get("labels") or {}).get(k) == v
                       for k, v in template_labels.items())),
            "readyReplicas": sum(1 for pod in owned if _is_ready(pod)),
            "availableReplicas": sum(1 for pod in owned if _is_ready(pod)),
            "observedGeneration": meta.get("generation", 1),
        }
        if rc.get("status") != status:
            rc["status"] = status
            self.store.update("replicationcontrollers", namespace, rc)

    def _owner_reference(self, rc: Object) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ReplicationController",
                "name": rc["metadata"]["name"], "uid": rc["metadata"]["uid"],
                "controller": True, "blockOwnerDeletion": True}

    def _start_pod(self, rc: Object) -> Object:
        namespace = rc["metadata"]["namespace"]
        template = rc["spec"].get("template") or {}
        while True:
            suffix = "".join(self._random.choice(POD_NAME_CHARS) for _ in range(5))
            name = f"{rc['metadata']['name']}-{suffix}"
            if self.store.get("pods", namespace, name) is None:
                break
        index = next(self._ips)
        pod_spec = dict(template.get("spec") or {})
        pod_spec.setdefault("restartPolicy", "Always")
        pod_spec["nodeName"] = NODE_NAME
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "generateName": f"{rc['metadata']['name']}-",
                "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                "ownerReferences": [self._owner_reference(rc)],
            },
            "spec": pod_spec,
            "status": {"phase": "Pending", "hostIP": "192.0.2.10",
                       "podIP": f"10.244.{index // 250}.{index % 250 + 1}"},
        }
        if not self._held(pod):
            pod["status"] = self._running_status(pod)
        created = self.store.create("pods", namespace, pod)
        if created["status"]["phase"] == "Running":
            self._boot_log(created)
        return created

    def _held(self, pod: Object) -> bool:
        return any(container.get("image") in self.held_images
                   for container in pod["spec"].get("containers") or [])

    def _running_status(self, pod: Object) -> dict[str, Any]:
        started = now_rfc3339()
        return {
            "phase": "Running",
            "hostIP": pod["status"]["hostIP"],
            "podIP": pod["status"]["podIP"],
            "startTime": started,
            "conditions": [{"type": kind, "status": "True", "lastTransitionTime": started}
                           for kind in ("Initialized", "Ready", "ContainersReady",
                                        "PodScheduled")],
            "containerStatuses": [{
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": f"docker-pullable://{container.get('image', '')}",
                "containerID": "containerd://" + "".join(
                    self._random.choice(string.hexdigits.lower()) for _ in range(64)),
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            } for container in pod["spec"].get("containers") or []],
        }

    def _run_released_pods(self) -> None:
        for pod in self.store.list("pods"):
            if pod["status"].get("phase") == "Pending" and not self._held(pod):
                pod["status"] = self._running_status(pod)
                self.store.update("pods", pod["metadata"]["namespace"], pod)
                self._boot_log(pod)

    def _boot_log(self, pod: Object) -> None:
        """What an Ochopod container prints when it starts: enough for log tests."""
        meta = pod["metadata"]
        for container in pod["spec"].get("containers") or []:
            env = {item["name"]: item.get("value", "") for item in container.get("env") or []}
            ports = ", ".join(str(port["containerPort"]) for port in container.get("ports") or [])
            lines = [
                f"ochopod: starting {meta['name']} from image {container.get('image')}",
                f"ochopod: cluster {env.get('ochopod_namespace', '?')}."
                f"{env.get('ochopod_cluster', '?')}, application "
                f"{env.get('ochopod_application', '?')}",
                f"ochopod: settings {env.get('pod', '{}')}",
                f"ochopod: listening on port(s) {ports}",
                "ochopod: pod is running",
            ]
            for line in lines:
                self.logs.append(meta["namespace"], meta["name"], line)


def _is_ready(pod: Object) -> bool:
    return any(condition.get("type") == "Ready" and condition.get("status") == "True"
               for condition in (pod.get("status") or {}).get("conditions") or [])
