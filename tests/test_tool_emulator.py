"""The emulator keeps the API's contract: checked over plain HTTP and with the
official `kubernetes` client (typed models and typed errors), so the tool tests
run against something honest."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from kubernetes import client, watch
from kubernetes.client.exceptions import (
    ConflictException,
    ForbiddenException,
    NotFoundException,
    UnauthorizedException,
    UnprocessableEntityException,
)

from ocho.kube.definition import Definition
from ocho.kube.errors import api_failure
from ocho.kube.manifest import build_controller
from tests.infra import wait_for
from tests.kube.emulator import FORBIDDEN_TOKEN, KubeEmulator

pytest_plugins = ["tests.kube.fixtures"]

RCS = "/api/v1/namespaces/default/replicationcontrollers"
PODS = "/api/v1/namespaces/default/pods"


def controller(name: str, replicas: int = 2, labels: dict[str, str] | None = None) -> dict:
    selected = labels or {"app": name}
    return {"apiVersion": "v1", "kind": "ReplicationController",
            "metadata": {"name": name, "labels": selected},
            "spec": {"replicas": replicas, "selector": dict(selected),
                     "template": {"metadata": {"labels": dict(selected)},
                                  "spec": {"containers": [{"name": "main", "image": "busybox"}]}}}}


def create(kube: KubeEmulator, body: dict, count: int | None = None) -> dict:
    response = kube.post(RCS, body)
    assert response.status_code == 201, response.text
    if count is None:
        count = body["spec"]["replicas"]
    selector = ",".join(f"{k}={v}" for k, v in body["spec"]["selector"].items())
    wait_for(lambda: len(kube.pods(selector=selector)) == count, what=f"{count} pods")
    return response.json()


def assert_status(response: requests.Response, code: int, reason: str) -> dict[str, Any]:
    assert response.status_code == code, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == code and body["reason"] == reason
    assert body["message"]
    return body


@pytest.fixture
def core(kube_emulator: KubeEmulator) -> client.CoreV1Api:
    configuration = client.Configuration(host=kube_emulator.url)
    configuration.api_key = {"BearerToken": kube_emulator.token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    with client.ApiClient(configuration) as api_client:
        yield client.CoreV1Api(api_client)


# -- Status bodies --------------------------------------------------------------------------

def test_status_bodies_for_each_refusal(kube_emulator: KubeEmulator) -> None:
    missing = assert_status(kube_emulator.get(f"{RCS}/nope"), 404, "NotFound")
    assert missing["message"] == 'replicationcontrollers "nope" not found'
    assert missing["details"] == {"name": "nope", "kind": "replicationcontrollers"}

    create(kube_emulator, controller("web"))
    again = assert_status(kube_emulator.post(RCS, controller("web")), 409, "AlreadyExists")
    assert again["message"] == 'replicationcontrollers "web" already exists'

    bad = controller("Bad_Name", replicas=-1)
    bad["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    invalid = assert_status(kube_emulator.post(RCS, bad), 422, "Invalid")
    fields = {cause["field"] for cause in invalid["details"]["causes"]}
    assert {"metadata.name", "spec.replicas", "spec.template.metadata.labels"} <= fields
    assert invalid["details"]["kind"] == "ReplicationController"
    assert invalid["message"].startswith('ReplicationController "Bad_Name" is invalid: [')

    forbidden = assert_status(kube_emulator.get(RCS, token=FORBIDDEN_TOKEN), 403, "Forbidden")
    assert forbidden["message"].startswith("replicationcontrollers is forbidden: User ")
    assert 'cannot list resource "replicationcontrollers"' in forbidden["message"]
    assert_status(kube_emulator.get(RCS, token="unknown"), 401, "Unauthorized")
    assert_status(kube_emulator.post("/api/v1/namespaces/ghost/replicationcontrollers",
                                     controller("x")), 404, "NotFound")
    assert_status(kube_emulator.get(RCS, labelSelector="a in (b"), 400, "BadRequest")


def test_the_official_client_raises_its_typed_errors(kube_emulator: KubeEmulator,
                                                     core: client.CoreV1Api) -> None:
    with pytest.raises(NotFoundException) as missing:
        core.read_namespaced_replication_controller("nope", "default")
    assert api_failure(missing.value, "read nope").status == 404
    core.create_namespaced_replication_controller("default", controller("web"))
    with pytest.raises(ConflictException):
        core.create_namespaced_replication_controller("default", controller("web"))
    with pytest.raises(UnprocessableEntityException) as invalid:
        core.create_namespaced_replication_controller("default", controller("web2", -3))
    message = str(api_failure(invalid.value, "create web2"))
    assert "422 invalid" in message and "spec.replicas: Invalid value: -3" in message
    core.api_client.configuration.api_key = {"BearerToken": FORBIDDEN_TOKEN}
    with pytest.raises(ForbiddenException):
        core.list_namespaced_pod("default")
    core.api_client.configuration.api_key = {"BearerToken": "unknown"}
    with pytest.raises(UnauthorizedException):
        core.list_namespaced_pod("default")


def test_typed_models_round_trip_a_deployed_manifest(kube_emulator: KubeEmulator,
                                                     core: client.CoreV1Api) -> None:
    definition = Definition(source="zk.yml", cluster="zookeeper", image="zk", ports=(2181,),
                            settings={"a": {"b": [1, 2]}}, env={"X": "1"},
                            resources={"limits": {"memory": "1Gi"}}, labels={"team": "data"})
    manifest = build_controller(definition, namespace="dev", pods=2, job_id="job-1",
                                when=datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    created = core.create_namespaced_replication_controller("default", manifest)
    assert isinstance(created, client.V1ReplicationController)
    assert created.metadata.uid and created.metadata.resource_version
    assert created.spec.template.spec.containers[0].ports[0].container_port == 2181
    wait_for(lambda: (core.read_namespaced_replication_controller(
        created.metadata.name, "default").status.ready_replicas or 0) == 2,
        what="2 ready replicas in the RC status")
    pods = core.list_namespaced_pod("default", label_selector="ocho.io/cluster=zookeeper")
    assert len(pods.items) == 2
    pod = pods.items[0]
    assert pod.status.phase == "Running" and pod.status.pod_ip
    assert pod.status.container_statuses[0].ready is True
    assert pod.status.container_statuses[0].restart_count == 0
    assert pod.metadata.owner_references[0].uid == created.metadata.uid


# -- selectors ------------------------------------------------------------------------------

def test_label_selectors_equality_and_sets(kube_emulator: KubeEmulator) -> None:
    create(kube_emulator, controller("a", 1, {"app": "a", "tier": "web", "env": "prod"}))
    create(kube_emulator, controller("b", 1, {"app": "b", "tier": "db", "env": "prod"}))
    create(kube_emulator, controller("c", 1, {"app": "c", "tier": "web"}))

    def names(selector: str, resource: str = "replicationcontrollers") -> list[str]:
        items = kube_emulator.items(resource, selector=selector)
        return sorted(item["metadata"]["name"] for item in items)

    assert names("tier=web") == ["a", "c"]
    assert names("tier==web,env=prod") == ["a"]
    assert names("tier!=web") == ["b"]
    assert names("env!=prod") == ["c"]  # != also matches objects without the key
    assert names("app in (a, b)") == ["a", "b"]
    assert names("app notin (a,b)") == ["c"]
    assert names("env") == ["a", "b"]
    assert names("!env") == ["c"]
    assert names("tier in (web),!env") == ["c"]
    assert names("nothing=here") == []
    assert len(names("tier=web", "pods")) == 2


def test_lists_page_with_limit_and_continue(kube_emulator: KubeEmulator) -> None:
    for name in ("p1", "p2", "p3"):
        create(kube_emulator, controller(name, 0))
    first = kube_emulator.get(RCS, limit=2).json()
    assert [item["metadata"]["name"] for item in first["items"]] == ["p1", "p2"]
    rest = kube_emulator.get(RCS, limit=2, **{"continue": first["metadata"]["continue"]}).json()
    assert [item["metadata"]["name"] for item in rest["items"]] == ["p3"]
    assert "continue" not in rest["metadata"]


# -- the RC manager and deletion ----------------------------------------------------------

def test_deleted_pods_are_replaced(kube_emulator: KubeEmulator) -> None:
    create(kube_emulator, controller("web", 2))
    victim = kube_emulator.pods()[0]["metadata"]["name"]
    assert kube_emulator.delete(f"{PODS}/{victim}").status_code == 200
    wait_for(lambda: len(kube_emulator.pods()) == 2
             and victim not in {pod["metadata"]["name"] for pod in kube_emulator.pods()},
             what="a replacement pod")


def test_delete_without_policy_orphans_the_pods(kube_emulator: KubeEmulator) -> None:
    create(kube_emulator, controller("web", 2))
    response = kube_emulator.delete(f"{RCS}/web")
    assert response.status_code == 200
    wait_for(lambda: kube_emulator.controllers() == [], what="the RC to go")
    pods = kube_emulator.pods()
    assert len(pods) == 2  # core/v1 RC semantics: the pods keep running
    assert all("ownerReferences" not in pod["metadata"] for pod in pods)
    # and a new controller with the same selector adopts them instead of starting more
    create(kube_emulator, controller("web", 2))
    adopted = kube_emulator.pods()
    assert {pod["metadata"]["name"] for pod in adopted} == {
        pod["metadata"]["name"] for pod in pods}


def test_background_delete_cascades(kube_emulator: KubeEmulator) -> None:
    create(kube_emulator, controller("web", 3))
    create(kube_emulator, controller("keep", 1))
    response = kube_emulator.delete(f"{RCS}/web", body={"propagationPolicy": "Background"})
    assert response.status_code == 200
    assert response.json()["status"] == "Success"
    assert_status(kube_emulator.get(f"{RCS}/web"), 404, "NotFound")
    wait_for(lambda: len(kube_emulator.pods()) == 1, what="the web pods to be collected")
    assert kube_emulator.pods()[0]["metadata"]["labels"]["app"] == "keep"


def test_foreground_delete_waits_for_the_pods(kube_emulator: KubeEmulator) -> None:
    create(kube_emulator, controller("web", 2))
    response = kube_emulator.delete(f"{RCS}/web", propagationPolicy="Foreground")
    assert response.status_code == 200
    marked = response.json()
    assert marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["finalizers"] == ["foregroundDeletion"]
    wait_for(lambda: kube_emulator.get(f"{RCS}/web").status_code == 404, what="the RC to go")
    assert kube_emulator.pods() == []


def test_invalid_propagation_policy_is_refused(kube_emulator: KubeEmulator) -> None:
    create(kube_emulator, controller("web", 1))
    body = assert_status(kube_emulator.delete(f"{RCS}/web", propagationPolicy="Sometimes"),
                         422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "propagationPolicy"


# -- scale, patch and resourceVersion -----------------------------------------------------

def test_scale_subresource_get_put_patch(kube_emulator: KubeEmulator) -> None:
    create(kube_emulator, controller("web", 1))
    path = f"{RCS}/web/scale"
    scale = kube_emulator.get(path).json()
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"]["replicas"] == 1 and scale["status"]["selector"] == "app=web"
    scale["spec"]["replicas"] = 3
    assert kube_emulator.put(path, scale).json()["spec"]["replicas"] == 3
    wait_for(lambda: len(kube_emulator.pods()) == 3, what="3 pods")
    patched = kube_emulator.patch(path, {"spec": {"replicas": 1}})
    assert patched.status_code == 200 and patched.json()["spec"]["replicas"] == 1
    wait_for(lambda: len(kube_emulator.pods()) == 1, what="1 pod")
    assert_status(kube_emulator.patch(path, {"spec": {"replicas": -1}}), 422, "Invalid")
    assert_status(kube_emulator.patch(path, {"spec": {}}, content_type="text/plain"), 415,
                  "UnsupportedMediaType")
    rc = kube_emulator.get(f"{RCS}/web").json()
    assert rc["metadata"]["generation"] == 3


def test_official_client_scale_and_patch(kube_emulator: KubeEmulator,
                                         core: client.CoreV1Api) -> None:
    create(kube_emulator, controller("web", 1))
    core.patch_namespaced_replication_controller_scale("web", "default",
                                                       {"spec": {"replicas": 2}})
    core.patch_namespaced_replication_controller(
        "web", "default", [{"op": "replace", "path": "/spec/replicas", "value": 4}])
    assert core.read_namespaced_replication_controller_scale("web", "default").spec.replicas == 4
    wait_for(lambda: len(kube_emulator.pods()) == 4, what="4 pods")


def test_resource_versions_move_forward(kube_emulator: KubeEmulator) -> None:
    created = create(kube_emulator, controller("web", 1))
    listing = kube_emulator.get(RCS).json()
    assert int(listing["metadata"]["resourceVersion"]) >= int(
        listing["items"][0]["metadata"]["resourceVersion"])
    assert int(listing["items"][0]["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"])  # the manager updated its status


# -- logs ---------------------------------------------------------------------------------

def test_logs_are_text_with_tail_and_since(kube_emulator: KubeEmulator,
                                           core: client.CoreV1Api) -> None:
    create(kube_emulator, controller("web", 1))
    name = kube_emulator.pods()[0]["metadata"]["name"]
    kube_emulator.append_log("default", name, "old line", at=datetime.now(UTC) - timedelta(hours=2))
    kube_emulator.append_log("default", name, "last line")
    response = kube_emulator.get(f"{PODS}/{name}/log", tailLines=2)
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text.splitlines()[-1] == "last line"
    assert len(response.text.splitlines()) == 2
    everything = kube_emulator.get(f"{PODS}/{name}/log").text.splitlines()
    assert everything[0] == "old line"
    recent = kube_emulator.get(f"{PODS}/{name}/log", sinceSeconds=60).text.splitlines()
    assert "old line" not in recent and "last line" in recent
    assert core.read_namespaced_pod_log(name, "default", tail_lines=1) == "last line\n"
    assert_status(kube_emulator.get(f"{PODS}/ghost/log"), 404, "NotFound")
    assert_status(kube_emulator.get(f"{PODS}/{name}/log", container="other"), 400, "BadRequest")


# -- watch --------------------------------------------------------------------------------

def test_watch_streams_events_as_lines(kube_emulator: KubeEmulator,
                                       core: client.CoreV1Api) -> None:
    events: list[tuple[str, str]] = []
    watcher = watch.Watch()
    listening = threading.Event()

    def follow() -> None:
        listening.set()
        for event in watcher.stream(core.list_namespaced_pod, "default",
                                    label_selector="app=web", timeout_seconds=5):
            events.append((event["type"], event["object"].metadata.name))
            if sum(1 for kind, _ in events if kind == "DELETED") >= 2:
                watcher.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    listening.wait()
    create(kube_emulator, controller("web", 2))
    create(kube_emulator, controller("other", 1))
    kube_emulator.delete(f"{RCS}/web", propagationPolicy="Background")
    thread.join(timeout=10)
    assert not thread.is_alive()
    added = {name for kind, name in events if kind == "ADDED"}
    deleted = {name for kind, name in events if kind == "DELETED"}
    assert len(added) == 2 and added == deleted
    assert all(name.startswith("web-") for _, name in events)


def test_watch_replays_from_a_resource_version(kube_emulator: KubeEmulator) -> None:
    created = create(kube_emulator, controller("web", 0))
    since = created["metadata"]["resourceVersion"]
    kube_emulator.patch(f"{RCS}/web", {"metadata": {"labels": {"app": "web", "x": "y"}}})
    with requests.get(kube_emulator.url + RCS, headers={"Authorization":
                                                        f"Bearer {kube_emulator.token}"},
                      params={"watch": "true", "resourceVersion": since, "timeoutSeconds": "1"},
                      stream=True, timeout=10) as response:
        assert response.headers.get("Transfer-Encoding") == "chunked"
        lines = [line for line in response.iter_lines() if line]
    events = [json.loads(line) for line in lines]
    assert events and all(event["type"] == "MODIFIED" for event in events)
    assert events[-1]["object"]["metadata"]["labels"]["x"] == "y"
