"""The Kubernetes tools through the whole portal: HTTP → RabbitMQ → worker →
tool → a real Kubernetes API server, and back; and the portal's own manifests
(deploy/kubernetes) applied to that server, whose workers' ServiceAccount is
all the tools get."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from kubernetes import client

from tests.infra import ROOT, Stack
from tests.kube.real import KubeNamespace

pytest_plugins = ["tests.kube.fixtures"]

MANIFESTS = ROOT / "deploy" / "kubernetes"
ZOOKEEPER = (ROOT / "definitions" / "zookeeper.yml").read_bytes()
REDIS = (ROOT / "definitions" / "redis.yml").read_bytes()
WORKER_ACCOUNT = "ocho-worker"


def kubectl_works(kube: KubeNamespace) -> bool:
    return shutil.which("kubectl") is not None and kube.kube.kubectl(
        "version", "--request-timeout=10s", check=False).returncode == 0


def manifests(namespace: str) -> list[dict]:
    """The kustomization's resources, moved to `namespace` as `namespace:` would."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    documents = []
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((MANIFESTS / name).read_text()):
            if document["kind"] == "Namespace":
                document["metadata"]["name"] = namespace
            else:
                document["metadata"]["namespace"] = namespace
            for subject in document.get("subjects", []):
                subject["namespace"] = namespace
            documents.append(document)
    return documents


def apply_manifests(kube: KubeNamespace, directory: Path) -> None:
    """kubectl apply --server-side -k of an overlay that only changes the namespace."""
    overlay = directory / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": kube.name, "resources": [os.path.relpath(MANIFESTS, overlay)]}))
    if kubectl_works(kube):
        # The server validates every object first (a dry run), then applies them.
        for dry_run in (["--dry-run=server"], []):
            kube.kube.kubectl("apply", "--server-side", "--field-manager=ocho-test",
                              *dry_run, "-k", str(overlay))
        return
    api = kube.api  # without kubectl: the same objects through the client
    for document in manifests(kube.name):
        if document["kind"] != "Namespace":
            from kubernetes import utils

            utils.create_from_dict(api, document, namespace=kube.name)


@pytest.fixture
def portal(tmp_path: Path, amqp_url: str, kube: KubeNamespace) -> Iterator[Stack]:
    """The portal's manifests on the real control plane, and a local gateway and
    worker whose tools use the workers' ServiceAccount token, not the admin's."""
    apply_manifests(kube, tmp_path)
    token = kube.token_of(WORKER_ACCOUNT)
    stack = Stack(tmp_path, amqp_url, k8s_host=kube.kube.server, k8s_token=token,
                  k8s_ca_file=kube.kube.ca_file, k8s_namespace=kube.name)
    stack.worker_token = token  # type: ignore[attr-defined]
    stack.start_gateway()
    stack.start_worker()
    yield stack
    stack.stop()


def run_job(stack: Stack, line: str, files: dict[str, bytes] | None = None) -> tuple[dict, str]:
    response = requests.post(f"{stack.url}/jobs", data={"line": line},
                             files={name: (name, body) for name, body in (files or {}).items()},
                             timeout=30)
    assert response.status_code == 202, response.text
    job = stack.wait(response.json()["id"], timeout=90)
    return job, stack.output(job["id"])["data"]


def test_the_manifests_give_the_workers_exactly_the_tools_rights(kube: KubeNamespace) -> None:
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in manifests("ocho")}
    role = objects[("Role", WORKER_ACCOUNT)]
    assert sorted((tuple(rule["resources"]), tuple(rule["verbs"])) for rule in role["rules"]) == [
        (("pods",), ("get", "list", "watch", "delete")),
        (("pods/log",), ("get",)),
        (("replicationcontrollers",), ("get", "list", "watch", "create", "delete")),
        (("replicationcontrollers/scale",), ("get", "update")),
    ]
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    workers = objects[("Deployment", "ocho-worker")]["spec"]["template"]["spec"]
    assert workers["serviceAccountName"] == WORKER_ACCOUNT
    (container,) = workers["containers"]
    grace = float(next(item["value"] for item in container["env"]
                       if item["name"] == "OCHO_SHUTDOWN_GRACE"))
    assert workers["terminationGracePeriodSeconds"] > grace
    assert container["command"][:2] == ["tini", "--"]
    gateway = objects[("Deployment", "ocho-gateway")]["spec"]["template"]["spec"]
    (container,) = gateway["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "/readyz" in " ".join(container["readinessProbe"]["exec"]["command"])
    assert "Authorization" in " ".join(container["readinessProbe"]["exec"]["command"])
    secrets = {item["valueFrom"]["secretKeyRef"]["key"] for item in container["env"]
               if "valueFrom" in item}
    assert {"OCHO_TOKENS", "OCHO_AMQP_URL", "OCHO_DATABASE_URL"} <= secrets
    # Every manifest passes the real server's validation (a server-side dry run).
    for document in manifests(kube.name):
        if document["kind"] != "Namespace":
            kind = document["kind"].lower() + "s"
            group = document["apiVersion"]
            prefix = "/api/v1" if group == "v1" else f"/apis/{group}"
            response = kube.api.call_api(*kube.api.param_serialize(
                method="POST", resource_path=f"{prefix}/namespaces/{kube.name}/{kind}",
                query_params=[("dryRun", "All")], body=document,
                header_params={"Content-Type": "application/json",
                               "Accept": "application/json"},
                auth_settings=["BearerToken"]))
            response.read()
            assert response.status == 201, (kind, response.data[:500])


def test_every_tool_as_a_portal_job_with_the_workers_account(portal: Stack,
                                                             kube: KubeNamespace) -> None:
    # deploy → one RC, and 3 pods made by the real replication controller.
    job, output = run_job(portal, "deploy zookeeper.yml -p 3", {"zookeeper.yml": ZOOKEEPER})
    assert job["state"] == "succeeded", output
    assert "100% success / spawned 3 pod(s)" in output
    (rc,) = kube.controllers()
    assert rc["spec"]["replicas"] == 3 and rc["metadata"]["labels"]["ocho.io/job"] == job["id"]
    pods = kube.wait_for_pods(3, "ocho.io/cluster=zookeeper")
    assert {pod["metadata"]["ownerReferences"][0]["uid"] for pod in pods} == {
        rc["metadata"]["uid"]}

    job, output = run_job(portal, "ls")
    assert job["state"] == "succeeded" and rc["metadata"]["name"] in output, output
    job, output = run_job(portal, "grep zoo*")
    assert job["state"] == "succeeded", output
    assert {pod["metadata"]["name"] for pod in pods} <= set(output.split()), output
    job, output = run_job(portal, "info zookeeper")
    assert job["state"] == "succeeded" and '"phase": "Pending"' in output, output

    job, output = run_job(portal, "scale zookeeper -f @5")
    assert job["state"] == "succeeded" and "3 -> 5 pod(s)" in output, output
    kube.wait_for_pods(5, "ocho.io/cluster=zookeeper")

    job, output = run_job(portal, "log default.zookeeper")
    assert job["state"] == "succeeded" and job["exit_code"] == 0, output
    assert output.count("(no log yet)") == 5

    # A batch with a controller over the limit creates nothing, and says which and why.
    blob = "x" * (700 * 1024)
    job, output = run_job(portal, "deploy redis.yml big.yml -o big-overrides.yml", {
        "redis.yml": REDIS, "big.yml": f"cluster: big\nimage: busybox\nsettings: {{a: {blob}}}\n"
        .encode(), "big-overrides.yml": f"default.big:\n  settings: {{b: {blob}}}\n".encode()})
    assert job["state"] == "failed", output
    assert "big.yml: its ReplicationController would be" in output
    assert "over deploy's limit of 1024 KiB" in output and "nothing deployed" in output
    assert len(kube.controllers()) == 1

    # Orphaned pods: listed, and removed by kill --orphans.
    job, output = run_job(portal, "deploy redis.yml -p 2", {"redis.yml": REDIS})
    assert job["state"] == "succeeded", output
    kube.wait_for_pods(2, "ocho.io/cluster=redis")
    (redis,) = kube.controllers("ocho.io/cluster=redis")
    kube.core.delete_namespaced_replication_controller(redis["metadata"]["name"], kube.name,
                                                       propagation_policy="Orphan")
    kube.wait(lambda: all(not pod["metadata"].get("ownerReferences")
                          for pod in kube.cluster_pods("redis")), "redis's pods orphaned")
    job, output = run_job(portal, "ls")
    assert "(orphans)" in output and "2 orphaned pod(s)" in output, output

    # kill → the RC and its pods gone within seconds.
    job, output = run_job(portal, "kill zookeeper")
    assert job["state"] == "succeeded", output
    kube.wait(lambda: not kube.controllers("ocho.io/cluster=zookeeper"), "zookeeper's RC gone",
              timeout=10)
    kube.wait_for_pods(0, "ocho.io/cluster=zookeeper", timeout=15)
    job, output = run_job(portal, "kill redis --orphans")
    assert job["state"] == "succeeded" and "2 orphaned pod(s)" in output, output
    kube.wait_for_pods(0, "ocho.io/cluster=redis", timeout=15)

    # The workers' account is refused everything outside its Role.
    worker = kube.kube.api_client(portal.worker_token)  # type: ignore[attr-defined]
    deployment = {"metadata": {"name": "not-allowed"}, "spec": {
        "selector": {"matchLabels": {"a": "b"}},
        "template": {"metadata": {"labels": {"a": "b"}},
                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}
    with pytest.raises(client.ApiException) as refused:
        client.AppsV1Api(worker).create_namespaced_deployment(kube.name, deployment)
    assert refused.value.status == 403
    with pytest.raises(client.ApiException) as refused:
        client.CoreV1Api(worker).list_namespaced_secret(kube.name)
    assert refused.value.status == 403
    worker.close()

    # A namespace being deleted is named as such (a finalizer holds it in Terminating).
    kube.core.create_namespaced_config_map(kube.name, {
        "metadata": {"name": "hold", "finalizers": ["ocho.test/hold"]}})
    kube.core.delete_namespace(kube.name)
    try:
        job, output = run_job(portal, "deploy zookeeper.yml", {"zookeeper.yml": ZOOKEEPER})
        assert job["state"] == "failed", output
        assert f"the Kubernetes namespace {kube.name!r} is being deleted" in output
        assert "RBAC" not in output
    finally:
        kube.core.patch_namespaced_config_map("hold", kube.name,
                                              {"metadata": {"finalizers": None}})


def test_dry_run_deploy_through_the_portal_contacts_nothing(tmp_path: Path, amqp_url: str,
                                                            kube: KubeNamespace) -> None:
    stack = Stack(tmp_path, amqp_url, k8s_host=kube.kube.server, k8s_token="wrong-token",
                  k8s_ca_file=kube.kube.ca_file, k8s_namespace=kube.name)
    stack.start_gateway()
    stack.start_worker()
    try:
        job, output = run_job(stack, "deploy --dry-run zookeeper.yml",
                              {"zookeeper.yml": ZOOKEEPER})
        assert job["state"] == "succeeded", output
        assert "kind: ReplicationController" in output
        assert "paugamo/k8s-ec2-zookeeper" in output
        assert kube.controllers() == []
    finally:
        stack.stop()


def test_kubectl_sees_what_the_tools_made(kube: KubeNamespace, run_tool) -> None:
    """kubectl, not the tools, reads the objects back: nothing tool-specific."""
    if not kubectl_works(kube):
        pytest.skip("kubectl cannot talk to this control plane")
    assert run_tool("deploy", "redis.yml", "-p", "2",
                    files={"redis.yml": REDIS.decode()}).code == 0
    kube.wait_for_pods(2)
    done = kube.kube.kubectl("-n", kube.name, "get", "rc,pods", "-l", "ocho.io/cluster=redis",
                             "-o", "json")
    kinds = sorted(item["kind"] for item in json.loads(done.stdout)["items"])
    assert kinds == ["Pod", "Pod", "ReplicationController"]
