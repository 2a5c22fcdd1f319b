"""KubeEmulator: a small Kubernetes API server for tests, on 127.0.0.1.

The tool tests run against a real control plane (tests.kube.real); this stays
for what one without a kubelet cannot show (running pods, ready counts, log
content, node-side log errors) and for injected faults. tests/test_tool_emulator
holds its answers to the real server's.

    with KubeEmulator() as kube:
        kube.url, kube.token          # what a client needs
        kube.get("/api/v1/namespaces/default/pods")   # a test's own HTTP look
        kube.add_account("reader-token", verbs={"get", "list", "watch"})
        kube.fail_next("POST", "/replicationcontrollers", 409, "AlreadyExists", "...")

Tokens map to accounts that may use some verbs ("*" for all): an unknown token
gets 401, a verb outside the account's gets 403, both as the API words them.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from datetime import datetime
from http.server import ThreadingHTTPServer
from json import dumps as json_dumps
from typing import Any

import requests

from tests.kube.controller import ControlPlane, PodLogs
from tests.kube.server import ApiError, Handler
from tests.kube.store import Store

ADMIN_TOKEN = "emulator-admin-token"
FORBIDDEN_TOKEN = "emulator-forbidden-token"


@dataclasses.dataclass(frozen=True)
class Account:
    user: str
    verbs: frozenset[str]


@dataclasses.dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    error: ApiError
    times: int


class KubeEmulator:
    def __init__(self, namespaces: tuple[str, ...] = ("default", "kube-system")) -> None:
        self.store = Store()
        self.logs = PodLogs()
        self.control_plane = ControlPlane(self.store, self.logs)
        self.tokens: dict[str, Account] = {
            ADMIN_TOKEN: Account("system:serviceaccount:ocho:portal", frozenset({"*"})),
            FORBIDDEN_TOKEN: Account("system:serviceaccount:ocho:nobody", frozenset()),
        }
        self.token = ADMIN_TOKEN
        self.requests: list[str] = []
        self.stopping = False
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        handler = type("BoundHandler", (Handler,), {"emulator": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="kube-emulator-http", daemon=True)
        for name in namespaces:
            self.store.create("namespaces", "", {"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": name},
                                                 "status": {"phase": "Active"}})

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> KubeEmulator:
        self.control_plane.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping = True
        self.control_plane.stop()
        self._server.shutdown()
        self._server.server_close()
        self.control_plane.join(timeout=5)

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    # -- what tests arrange -----------------------------------------------------------------
    def add_account(self, token: str, verbs: set[str] | frozenset[str],
                    user: str = "system:serviceaccount:ocho:limited") -> None:
        self.tokens[token] = Account(user, frozenset(verbs))

    def fail_next(self, method: str, path_pattern: str, code: int, reason: str, message: str,
                  causes: list[dict[str, str]] | None = None, times: int = 1) -> None:
        """Answer the next `times` matching requests with this Status instead."""
        details: dict[str, Any] = {"causes": causes} if causes else {}
        with self._faults_lock:
            self._faults.append(Fault(method.upper(), re.compile(path_pattern),
                                      ApiError(code, reason, message, details or None), times))

    def check_faults(self, method: str, path: str) -> None:
        with self._faults_lock:
            for fault in self._faults:
                if fault.times > 0 and fault.method == method and fault.path.search(path):
                    fault.times -= 1
                    raise fault.error

    def hold_images(self, *images: str) -> None:
        """Pods of these images stay Pending, not ready, until released."""
        with self.store.changed:
            self.control_plane.held_images.update(images)

    def release_images(self, *images: str) -> None:
        with self.store.changed:
            self.control_plane.held_images.difference_update(images)
            self.store.changed.notify_all()

    def append_log(self, namespace: str, pod: str, line: str, at: datetime | None = None) -> None:
        self.logs.append(namespace, pod, line, at)

    def create_namespace(self, name: str) -> None:
        self.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": name}}).raise_for_status()

    # -- what tests look at, over HTTP like any client ------------------------------------
    def _headers(self, token: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def get(self, path: str, token: str | None = None, **params: Any) -> requests.Response:
        return requests.get(self.url + path, params=params, headers=self._headers(token),
                            timeout=10)

    def post(self, path: str, body: Any, token: str | None = None,
             **params: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, params=params,
                             headers=self._headers(token), timeout=10)

    def put(self, path: str, body: Any, token: str | None = None) -> requests.Response:
        return requests.put(self.url + path, json=body, headers=self._headers(token), timeout=10)

    def patch(self, path: str, body: Any, content_type: str = "application/merge-patch+json",
              token: str | None = None) -> requests.Response:
        return requests.patch(self.url + path, data=json_dumps(body),
                              headers={**self._headers(token), "Content-Type": content_type},
                              timeout=10)

    def delete(self, path: str, body: Any = None, token: str | None = None,
               **params: Any) -> requests.Response:
        return requests.delete(self.url + path, json=body, params=params,
                               headers=self._headers(token), timeout=10)

    def items(self, resource: str, namespace: str = "default",
              selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else {}
        response = self.get(f"/api/v1/namespaces/{namespace}/{resource}", **params)
        response.raise_for_status()
        return response.json()["items"]

    def controllers(self, namespace: str = "default",
                    selector: str | None = None) -> list[dict[str, Any]]:
        return self.items("replicationcontrollers", namespace, selector)

    def pods(self, namespace: str = "default", selector: str | None = None) -> list[dict[str, Any]]:
        return self.items("pods", namespace, selector)
