"""The tool's environment, read in one place into one typed object.

The worker runs each tool with an allow-listed environment; these variables
are the tools' own interface:

  OCHO_JOB_ID, OCHO_ATTEMPT            the portal job this run belongs to
  OCHO_K8S_HOST, OCHO_K8S_TOKEN        an API server URL and a bearer token
  OCHO_K8S_CA_FILE, OCHO_K8S_INSECURE  its CA bundle, or "1" to skip TLS checks
  OCHO_K8S_NAMESPACE                   the Kubernetes namespace to work in
  KUBECONFIG                           a kubeconfig file (or ':'-separated list)

Inside a pod, the service account mounted at SERVICE_ACCOUNT_DIR is used when
neither OCHO_K8S_HOST nor a kubeconfig is set (kubectl's order).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from ocho.kube.errors import KubeError
from ocho.kube.names import label_value_problem

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
IN_CLUSTER_HOST = "https://kubernetes.default.svc"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class ToolEnvironment:
    job_id: str | None = None
    attempt: int = 1
    k8s_host: str | None = None
    k8s_token: str | None = dataclasses.field(default=None, repr=False)  # never printed
    k8s_ca_file: str | None = None
    k8s_insecure: bool = False
    k8s_namespace: str | None = None
    kubeconfig: str | None = None
    # Set by the kubelet in every pod; the worker may or may not pass them on.
    service_host: str | None = None
    service_port: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ToolEnvironment:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        job_id = get("OCHO_JOB_ID")
        if job_id is not None and (problem := label_value_problem(job_id)):
            raise KubeError(f"OCHO_JOB_ID {job_id!r} cannot be used as a label value: it {problem}")
        attempt_text = get("OCHO_ATTEMPT") or "1"
        if not attempt_text.isdigit() or int(attempt_text) < 1:
            raise KubeError(f"OCHO_ATTEMPT must be a whole number from 1 up, not {attempt_text!r}")
        insecure = (get("OCHO_K8S_INSECURE") or "").lower()
        if insecure not in _TRUE | _FALSE:
            raise KubeError(f"OCHO_K8S_INSECURE must be 1 or 0, not {insecure!r}")
        host = get("OCHO_K8S_HOST")
        if host is not None and not host.startswith(("http://", "https://")):
            host = f"https://{host}"
        return cls(
            job_id=job_id,
            attempt=int(attempt_text),
            k8s_host=host.rstrip("/") if host else None,
            k8s_token=get("OCHO_K8S_TOKEN"),
            k8s_ca_file=get("OCHO_K8S_CA_FILE"),
            k8s_insecure=insecure in _TRUE,
            k8s_namespace=get("OCHO_K8S_NAMESPACE"),
            kubeconfig=get("KUBECONFIG"),
            service_host=get("KUBERNETES_SERVICE_HOST"),
            service_port=get("KUBERNETES_SERVICE_PORT"),
        )

    @property
    def in_cluster(self) -> bool:
        return (SERVICE_ACCOUNT_DIR / "token").is_file()

    @property
    def in_cluster_host(self) -> str:
        if self.service_host:
            host = f"[{self.service_host}]" if ":" in self.service_host else self.service_host
            return f"https://{host}:{self.service_port or '443'}"
        return IN_CLUSTER_HOST
