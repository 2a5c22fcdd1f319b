"""The emulator's object store: what etcd is to the API server.

Every write gets the next resourceVersion (one counter for the whole store, as
in etcd) and is kept as an event, so that watches can replay from any version
and wait for the next change.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

Object = dict[str, Any]
Key = tuple[str, str, str]  # (resource, namespace, name); namespace "" for cluster-scoped


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class Event:
    revision: int
    resource: str
    namespace: str
    type: str  # ADDED | MODIFIED | DELETED
    object: Object


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.revision = 0
        self._objects: dict[Key, Object] = {}
        self._events: list[Event] = []

    def _record(self, resource: str, namespace: str, kind: str, obj: Object) -> None:
        self._events.append(Event(self.revision, resource, namespace, kind, copy.deepcopy(obj)))
        self.changed.notify_all()

    def create(self, resource: str, namespace: str, obj: Object) -> Object:
        with self.lock:
            meta = obj.setdefault("metadata", {})
            self.revision += 1
            meta.update(uid=str(uuid.uuid4()), resourceVersion=str(self.revision),
                        creationTimestamp=now_rfc3339())
            if namespace:
                meta["namespace"] = namespace
            self._objects[(resource, namespace, meta["name"])] = copy.deepcopy(obj)
            self._record(resource, namespace, "ADDED", obj)
            return copy.deepcopy(obj)

    def update(self, resource: str, namespace: str, obj: Object) -> Object:
        with self.lock:
            self.revision += 1
            obj["metadata"]["resourceVersion"] = str(self.revision)
            self._objects[(resource, namespace, obj["metadata"]["name"])] = copy.deepcopy(obj)
            self._record(resource, namespace, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def delete(self, resource: str, namespace: str, name: str) -> Object | None:
        with self.lock:
            obj = self._objects.pop((resource, namespace, name), None)
            if obj is not None:
                self.revision += 1
                obj["metadata"]["resourceVersion"] = str(self.revision)
                self._record(resource, namespace, "DELETED", obj)
            return obj

    def get(self, resource: str, namespace: str, name: str) -> Object | None:
        with self.lock:
            obj = self._objects.get((resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: str, namespace: str | None = None,
             where: Callable[[Object], bool] | None = None) -> list[Object]:
        """Objects of a resource, in one namespace or (None) all, sorted by namespace/name."""
        with self.lock:
            found = [copy.deepcopy(obj) for (kind, ns, _), obj in sorted(self._objects.items())
                     if kind == resource and (namespace is None or ns == namespace)
                     and (where is None or where(obj))]
            return found

    def events_after(self, revision: int, resource: str, namespace: str | None) -> list[Event]:
        with self.lock:
            return [event for event in self._events
                    if event.revision > revision and event.resource == resource
                    and (namespace is None or event.namespace == namespace)]
