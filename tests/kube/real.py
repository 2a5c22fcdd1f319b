"""A real Kubernetes control plane for the tool tests (scripts/kube-up).

etcd, kube-apiserver and kube-controller-manager built from Debian 12's
packages (no kubelet, no scheduler): every object is checked, defaulted and
stored by the real API server, and pods are made and removed by the real
ReplicationController and garbage collectors. Pods stay Pending.

`RealKube.start()` runs scripts/kube-up, which reuses a control plane already
running and builds the binaries only when they are missing; it raises
`Unavailable` only when they cannot be built here. Tests never stop it:
another test run may share it (scripts/kube-down stops it).

Invariants: each test gets its own Kubernetes namespace (`KubeNamespace`), so
tests sharing the control plane never see each other's objects; tests read the
server's objects through the official client, as JSON dicts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client

ROOT = Path(__file__).resolve().parents[2]
KUBE_UP = ROOT / "scripts" / "kube-up"
# A cold build takes ~7 min on 2 idle cores; a shared machine is slower.
BUILD_TIMEOUT = 2400.0
Object = dict[str, Any]


class Unavailable(Exception):
    """The control plane cannot be had on this machine; the message says why."""


@dataclasses.dataclass(frozen=True)
class RealKube:
    state: Path
    server: str
    admin_token: str = dataclasses.field(repr=False)

    @property
    def ca_file(self) -> str:
        return str(self.state / "ca.crt")

    @property
    def kubeconfig(self) -> str:
        return str(self.state / "kubeconfig")

    @classmethod
    def start(cls) -> RealKube:
        try:
            done = subprocess.run([str(KUBE_UP)], capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"scripts/kube-up took over {BUILD_TIMEOUT:.0f}s") from None
        if done.returncode != 0:
            raise Unavailable("scripts/kube-up failed: " + " | ".join(
                done.stderr.strip().splitlines()[-3:]))
        exported = done.stdout.strip().splitlines()[-1]  # export KUBECONFIG=<state>/kubeconfig
        state = Path(exported.split("=", 1)[1]).parent
        return cls(state, (state / "server").read_text().strip(),
                   (state / "admin.token").read_text().strip())

    def api_client(self, token: str | None = None) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = self.ca_file
        configuration.api_key = {"BearerToken": token or self.admin_token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return client.ApiClient(configuration)

    def tool_env(self, namespace: str, token: str | None = None) -> dict[str, str]:
        """What the worker passes a tool to reach this control plane."""
        return {"OCHO_K8S_HOST": self.server, "OCHO_K8S_TOKEN": token or self.admin_token,
                "OCHO_K8S_CA_FILE": self.ca_file, "OCHO_K8S_NAMESPACE": namespace}

    def kubectl(self, *args: str, stdin: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["kubectl", "--kubeconfig", self.kubeconfig, *args], input=stdin,
                              capture_output=True, text=True, timeout=60, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done


class KubeNamespace:
    """One test's Kubernetes namespace, read through the official client as JSON."""

    def __init__(self, kube: RealKube, name: str | None = None) -> None:
        self.kube = kube
        self.name = name or f"t-{uuid.uuid4().hex[:10]}"
        self.api = kube.api_client()
        self.core = client.CoreV1Api(self.api)

    def create(self) -> KubeNamespace:
        self.core.create_namespace({"metadata": {"name": self.name}})
        # The RC controller can make pods only once the namespace's default service
        # account has its token secret (Kubernetes 1.20): wait here, not in each test.
        self.wait(lambda: self._default_token_ready(), "the default service account's token")
        return self

    def _default_token_ready(self) -> bool:
        found = self._get(f"/api/v1/namespaces/{self.name}/serviceaccounts", quiet=True)
        return any(sa["metadata"]["name"] == "default" and sa.get("secrets")
                   for sa in found.get("items", []))

    def delete(self) -> None:
        try:
            self.core.delete_namespace(self.name, propagation_policy="Background")
        except client.ApiException:
            pass
        self.api.close()

    def tool_env(self, token: str | None = None) -> dict[str, str]:
        return self.kube.tool_env(self.name, token)

    def account(self, name: str, rules: list[Object] | None = None) -> str:
        """A service account in this namespace, bound to a Role of `rules` (none: no
        rights at all); its token, once the token controller has made it."""
        self.core.create_namespaced_service_account(self.name, {"metadata": {"name": name}})
        if rules:
            rbac = client.RbacAuthorizationV1Api(self.api)
            rbac.create_namespaced_role(self.name, {"metadata": {"name": name},
                                                    "rules": rules})
            rbac.create_namespaced_role_binding(self.name, {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                            "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name,
                              "namespace": self.name}]})
        return self.token_of(name)

    def token_of(self, account: str, timeout: float = 30.0) -> str:
        """The token of a service account (Kubernetes 1.20 keeps it in a Secret)."""
        import base64

        found: list[str] = []

        def ready() -> bool:
            for secret in self.list("secrets"):
                annotations = secret["metadata"].get("annotations") or {}
                if (secret.get("type") == "kubernetes.io/service-account-token"
                        and annotations.get("kubernetes.io/service-account.name") == account
                        and (secret.get("data") or {}).get("token")):
                    found.append(base64.b64decode(secret["data"]["token"]).decode())
                    return True
            return False

        self.wait(ready, f"the token of service account {account!r}", timeout)
        return found[0]

    # -- reading what the server holds ------------------------------------------------
    def _get(self, path: str, query: dict[str, str] | None = None, quiet: bool = False) -> Object:
        try:
            response = self.api.call_api(*self.api.param_serialize(
                method="GET", resource_path=path, query_params=list((query or {}).items()),
                header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]))
            response.read()
        except Exception:
            if quiet:
                return {}
            raise
        if response.status != 200:
            if quiet:
                return {}
            raise AssertionError(f"GET {path}: {response.status} {response.data[:300]!r}")
        return json.loads(response.data)

    def list(self, resource: str, selector: str = "") -> list[Object]:
        query = {"labelSelector": selector} if selector else {}
        found = self._get(f"/api/v1/namespaces/{self.name}/{resource}", query)
        return list(found.get("items") or [])

    def controllers(self, selector: str = "") -> list[Object]:
        return self.list("replicationcontrollers", selector)

    def pods(self, selector: str = "", *, live: bool = True) -> list[Object]:
        """The pods (those being deleted left out when `live`)."""
        return [pod for pod in self.list("pods", selector)
                if not (live and pod["metadata"].get("deletionTimestamp"))]

    def cluster_pods(self, cluster: str) -> list[Object]:
        return self.pods(f"ocho.io/cluster={cluster}")

    @staticmethod
    def wait(predicate, what: str, timeout: float = 30.0, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    def wait_for_pods(self, count: int, selector: str = "", timeout: float = 30.0) -> list[Object]:
        self.wait(lambda: len(self.pods(selector)) == count,
                  f"{count} pod(s) matching {selector!r} in {self.name} "
                  f"(now {len(self.pods(selector))})", timeout)
        return self.pods(selector)


def build_requested() -> bool:
    """OCHO_KUBE=skip lets a person without the build tools skip these tests on purpose."""
    return os.environ.get("OCHO_KUBE", "").lower() != "skip"


class RealHttp:
    """The emulator's test-facing HTTP helpers (get/post/.../pods), on one namespace
    of the real server, so the same test can hold the emulator to the real thing."""

    def __init__(self, namespace: KubeNamespace) -> None:
        self.namespace = namespace.name
        self.url = namespace.kube.server
        self.token = namespace.kube.admin_token
        self._verify = namespace.kube.ca_file

    def _call(self, method: str, path: str, token: str | None, **kwargs: Any):
        import requests

        headers = {"Authorization": f"Bearer {token or self.token}", **kwargs.pop("headers", {})}
        return requests.request(method, self.url + path, headers=headers, verify=self._verify,
                                timeout=10, **kwargs)

    def get(self, path: str, token: str | None = None, **params: Any):
        return self._call("GET", path, token, params=params)

    def post(self, path: str, body: Any, token: str | None = None, **params: Any):
        return self._call("POST", path, token, json=body, params=params)

    def put(self, path: str, body: Any, token: str | None = None):
        return self._call("PUT", path, token, json=body)

    def patch(self, path: str, body: Any, content_type: str = "application/merge-patch+json",
              token: str | None = None):
        return self._call("PATCH", path, token, data=json.dumps(body),
                          headers={"Content-Type": content_type})

    def delete(self, path: str, body: Any = None, token: str | None = None, **params: Any):
        return self._call("DELETE", path, token, json=body, params=params)

    def items(self, resource: str, namespace: str | None = None,
              selector: str | None = None) -> list[Object]:
        params = {"labelSelector": selector} if selector else {}
        response = self.get(f"/api/v1/namespaces/{namespace or self.namespace}/{resource}",
                            **params)
        response.raise_for_status()
        return [item for item in response.json()["items"]
                if not item["metadata"].get("deletionTimestamp")]

    def controllers(self, namespace: str | None = None,
                    selector: str | None = None) -> list[Object]:
        return self.items("replicationcontrollers", namespace, selector)

    def pods(self, namespace: str | None = None, selector: str | None = None) -> list[Object]:
        return self.items("pods", namespace, selector)
