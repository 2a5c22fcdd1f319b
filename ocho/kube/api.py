"""Cluster access through the official `kubernetes` client, and nothing else.

`connect()` is the only way in. It imports the client, so tools call it only
once they really talk to the API. Where the credentials come from is kubectl's
order, first match wins:

1. explicit settings: OCHO_K8S_HOST (+ OCHO_K8S_TOKEN, OCHO_K8S_CA_FILE,
   OCHO_K8S_INSECURE), set on purpose for this portal;
2. KUBECONFIG (its current context), else ~/.kube/config when it exists;
3. the pod's service account, when running in a Kubernetes pod.

Requests go through the client's `ApiClient` (its configuration, bearer auth,
TLS, retries, and its typed errors: `ApiException.from_response` raises
NotFoundException, ConflictException, ForbiddenException, ...), with JSON
bodies as plain dicts. The generated `CoreV1Api` is not used on purpose:
importing it builds ~250 pydantic models and costs about 430 ms on top of the
client's 260 ms, paid by every job, for typing that a dict in the API's own
JSON shape gives us as well (measured with `python -X importtime`).

Every call goes through `KubeApi._request`, which turns the client's
ApiExceptions and urllib3's transport errors into one-line `KubeError`s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ocho.kube.config import SERVICE_ACCOUNT_DIR, ToolEnvironment
from ocho.kube.errors import KubeError, api_failure, one_line, transport_failure

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
# Kubernetes' own defaulting: the namespace when nothing names one.
DEFAULT_K8S_NAMESPACE = "default"
# What kubectl asks for a pod log: the server answers it as plain text, but
# refuses `Accept: text/plain` alone with 406 (kubernetes/kubernetes#61450).
LOG_ACCEPT = "application/json, */*"
Object = dict[str, Any]


class KubeApi:
    """The core/v1 calls the tools make, in the Kubernetes namespace chosen at connect()."""

    def __init__(self, api_client: ApiClient, host: str, namespace: str) -> None:
        self.api_client = api_client
        self.host = host
        self.namespace = namespace

    def _path(self, resource: str, name: str | None = None, sub: str | None = None) -> str:
        path = f"/api/v1/namespaces/{quote(self.namespace, safe='')}/{resource}"
        if name is not None:
            path += f"/{quote(name, safe='')}"
        return f"{path}/{sub}" if sub else path

    def _request(self, action: str, method: str, path: str, *,
                 query: dict[str, Any] | None = None, body: Any = None,
                 accept: str = "application/json", text: bool = False,
                 timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
                 stream: bool = False) -> Any:
        """One API call: the decoded JSON body (the text with `text`), or a KubeError
        saying why not."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        params = [(key, value) for key, value in (query or {}).items() if value is not None]
        request = self.api_client.param_serialize(
            method=method, resource_path=path, query_params=params, header_params=headers,
            body=body, auth_settings=["BearerToken"])
        try:
            response = self.api_client.call_api(*request, _request_timeout=timeout)
            if stream and 200 <= response.status <= 299:
                return response.response  # the urllib3 response, read as it arrives
            response.read()
            body_text = (response.data or b"").decode("utf-8", "replace")
            if not 200 <= response.status <= 299:
                raise ApiException.from_response(http_resp=response, body=body_text, data=None)
        except ApiException as exc:
            raise api_failure(exc, action) from None
        except HTTPError as exc:
            raise transport_failure(exc, self.host, action) from None
        if text:
            return body_text
        try:
            return json.loads(body_text) if body_text else {}
        except ValueError:
            raise KubeError(f"could not {action}: the API at {self.host} answered with "
                            "something that is not JSON (is OCHO_K8S_HOST a Kubernetes API?)"
                            ) from None

    # -- replication controllers ------------------------------------------------------
    def list_controllers(self, label_selector: str) -> list[Object]:
        found = self._request(f"list replication controllers in namespace {self.namespace!r}",
                              "GET", self._path("replicationcontrollers"),
                              query={"labelSelector": label_selector})
        return list(found.get("items") or [])

    def create_controller(self, manifest: Object, *, dry_run: bool = False) -> Object:
        """POST it; with `dry_run` the server checks and admits it (dryRun=All) but
        stores nothing, and answers with the object it would have made."""
        name = manifest["metadata"]["name"]
        action = (f"{'check (server-side dry run) ' if dry_run else 'create '}replication "
                  f"controller {name!r} in namespace {self.namespace!r}")
        return self._request(action, "POST", self._path("replicationcontrollers"),
                             body=manifest, query={"dryRun": "All" if dry_run else None})

    def replace_scale(self, name: str, replicas: int, resource_version: str | None) -> Object:
        """PUT the scale subresource; the resourceVersion makes a concurrent change a 409."""
        body = {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": name, "namespace": self.namespace,
                             **({"resourceVersion": resource_version} if resource_version
                                else {})},
                "spec": {"replicas": replicas}}
        return self._request(f"scale {name!r} to {replicas}", "PUT",
                             self._path("replicationcontrollers", name, "scale"), body=body)

    def delete_controller(self, name: str, propagation_policy: str) -> Object:
        body = {"apiVersion": "v1", "kind": "DeleteOptions",
                "propagationPolicy": propagation_policy}
        return self._request(f"delete replication controller {name!r}", "DELETE",
                             self._path("replicationcontrollers", name), body=body)

    # -- pods ---------------------------------------------------------------------------
    def list_pods(self, label_selector: str) -> list[Object]:
        found = self._request(f"list pods in namespace {self.namespace!r}", "GET",
                              self._path("pods"), query={"labelSelector": label_selector})
        return list(found.get("items") or [])

    def read_log(self, pod: str, tail_lines: int | None = None,
                 since_seconds: int | None = None) -> str:
        """The pod's log text; "" when it has none yet (the server answers 204)."""
        return self._request(f"read the log of pod {pod!r}", "GET",
                             self._path("pods", pod, "log"),
                             query={"tailLines": tail_lines, "sinceSeconds": since_seconds},
                             accept=LOG_ACCEPT, text=True)

    def delete_pod(self, name: str) -> Object:
        return self._request(f"delete pod {name!r}", "DELETE", self._path("pods", name))

    def watch_pods(self, label_selector: str, timeout_seconds: int) -> Iterator[tuple[str, Object]]:
        """(event type, pod) as the server reports changes, for at most timeout_seconds."""
        from kubernetes.watch.watch import iter_resp_lines
        from urllib3.exceptions import HTTPError

        action = f"watch pods in namespace {self.namespace!r}"
        response = self._request(action, "GET", self._path("pods"), stream=True,
                                 query={"labelSelector": label_selector, "watch": "true",
                                        "timeoutSeconds": timeout_seconds},
                                 timeout=(CONNECT_TIMEOUT, timeout_seconds + 5.0))
        try:
            for line in iter_resp_lines(response):
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise KubeError(f"could not {action}: "
                                    f"{(event.get('object') or {}).get('message', 'error')}")
                yield event["type"], event["object"]
        except HTTPError as exc:
            raise transport_failure(exc, self.host, action) from None
        finally:
            response.release_conn()

    def close(self) -> None:
        self.api_client.close()


def connect(env: ToolEnvironment, k8s_namespace: str | None = None) -> KubeApi:
    """Configure the client from the environment; `k8s_namespace` (a flag) wins."""
    from kubernetes.client import ApiClient, Configuration
    from urllib3.util.retry import Retry

    configuration = Configuration()
    kubeconfig = env.kubeconfig or _home_kubeconfig()
    if env.k8s_host:
        host, context_namespace = _explicit(configuration, env)
    elif kubeconfig:
        host, context_namespace = _kubeconfig(configuration, env, kubeconfig)
    elif env.in_cluster:
        host, context_namespace = _in_cluster(configuration, env)
    else:
        raise KubeError("no Kubernetes cluster configured: set OCHO_K8S_HOST and "
                        "OCHO_K8S_TOKEN, or KUBECONFIG, or run the portal in a pod with a "
                        "service account")
    # A couple of quick retries on connect errors only: a write is never repeated.
    configuration.retries = Retry(total=2, connect=2, read=0, redirect=0, status=0,
                                  backoff_factor=0.2)
    namespace = k8s_namespace or env.k8s_namespace or context_namespace or DEFAULT_K8S_NAMESPACE
    return KubeApi(ApiClient(configuration), host, namespace)


def _explicit(configuration: Configuration, env: ToolEnvironment) -> tuple[str, str | None]:
    assert env.k8s_host is not None
    configuration.host = env.k8s_host
    if env.k8s_token:
        configuration.api_key = {"BearerToken": env.k8s_token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
    if env.k8s_ca_file:
        if not os.path.isfile(env.k8s_ca_file):
            raise KubeError(f"OCHO_K8S_CA_FILE {env.k8s_ca_file!r} is not a file")
        configuration.ssl_ca_cert = env.k8s_ca_file
    configuration.verify_ssl = not env.k8s_insecure
    return env.k8s_host, None


def _in_cluster(configuration: Configuration, env: ToolEnvironment) -> tuple[str, str | None]:
    token_file = SERVICE_ACCOUNT_DIR / "token"
    try:
        token = token_file.read_text().strip()
        namespace_file = SERVICE_ACCOUNT_DIR / "namespace"
        namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
    except OSError as exc:
        raise KubeError(f"cannot read the pod's service account token: {exc.strerror}") from None
    configuration.host = env.in_cluster_host
    configuration.api_key = {"BearerToken": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    ca_file = SERVICE_ACCOUNT_DIR / "ca.crt"
    if ca_file.is_file():
        configuration.ssl_ca_cert = str(ca_file)
    configuration.verify_ssl = not env.k8s_insecure
    return configuration.host, namespace or None


def _home_kubeconfig() -> str | None:
    """~/.kube/config when it exists: kubectl's default, after KUBECONFIG."""
    from kubernetes.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION

    path = os.path.expanduser(KUBE_CONFIG_DEFAULT_LOCATION)
    return path if os.path.isfile(path) else None


def _kubeconfig(configuration: Configuration, env: ToolEnvironment,
                path: str) -> tuple[str, str | None]:
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.kube_config import list_kube_config_contexts, load_kube_config

    try:
        load_kube_config(config_file=path, client_configuration=configuration,
                         persist_config=False)
        _, context = list_kube_config_contexts(config_file=path)
    except (ConfigException, OSError, ValueError) as exc:
        raise KubeError(f"KUBECONFIG {path!r} cannot be used: {one_line(str(exc))}") from None
    namespace = ((context or {}).get("context") or {}).get("namespace")
    if env.k8s_insecure:
        configuration.verify_ssl = False
    return configuration.host, namespace
