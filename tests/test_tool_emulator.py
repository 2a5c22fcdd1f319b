"""The emulator keeps the API's contract. Each test that can runs twice, against
the real control plane and against the emulator, with the same assertions: the
emulator is held to the real server's answers, so the few tool tests that still
need it (running pods, log content) run against something honest. Checked over
plain HTTP and with the official `kubernetes` client (typed models, typed errors).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
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
from tests.kube.real import KubeNamespace, RealHttp, RealKube

pytest_plugins = ["tests.kube.fixtures"]

RCS = "/api/v1/namespaces/default/replicationcontrollers"
PODS = "/api/v1/namespaces/default/pods"


class Api:
    """One API server under test: the real one or the emulator, same helpers."""

    def __init__(self, http: RealHttp | KubeEmulator, namespace: str, forbidden: str,
                 configure: client.Configuration) -> None:
        self.http = http
        self.namespace = namespace
        self.rcs = f"/api/v1/namespaces/{namespace}/replicationcontrollers"
        self.pods_path = f"/api/v1/namespaces/{namespace}/pods"
        self.forbidden_token = forbidden
        self.configuration = configure

    def pods(self, selector: str | None = None) -> list[dict]:
        return self.http.pods(self.namespace, selector)

    def controllers(self) -> list[dict]:
        return self.http.controllers(self.namespace)


@pytest.fixture(scope="module")
def nobody(real_kube: RealKube) -> Iterator[str]:
    namespace = KubeNamespace(real_kube).create()
    yield namespace.account("nobody")
    namespace.delete()


@pytest.fixture(params=["real", "emulator"])
def api(request: pytest.FixtureRequest) -> Api:
    """Each test runs on the real control plane and on the emulator."""
    if request.param == "emulator":
        emulator: KubeEmulator = request.getfixturevalue("kube_emulator")
        configuration = client.Configuration(host=emulator.url)
        configuration.api_key = {"BearerToken": emulator.token}
        return Api(emulator, "default", FORBIDDEN_TOKEN, configuration)
    namespace: KubeNamespace = request.getfixturevalue("kube")
    nobody = request.getfixturevalue("nobody")
    configuration = client.Configuration(host=namespace.kube.server)
    configuration.ssl_ca_cert = namespace.kube.ca_file
    configuration.api_key = {"BearerToken": namespace.kube.admin_token}
    return Api(RealHttp(namespace), namespace.name, nobody, configuration)


def controller(name: str, replicas: int = 2, labels: dict[str, str] | None = None) -> dict:
    selected = labels or {"app": name}
    return {"apiVersion": "v1", "kind": "ReplicationController",
            "metadata": {"name": name, "labels": selected},
            "spec": {"replicas": replicas, "selector": dict(selected),
                     "template": {"metadata": {"labels": dict(selected)},
                                  "spec": {"containers": [{"name": "main", "image": "busybox"}]}}}}


def create(api: Api | KubeEmulator, body: dict, count: int | None = None) -> dict:
    if isinstance(api, KubeEmulator):  # the emulator-only tests
        api = Api(api, "default", FORBIDDEN_TOKEN, client.Configuration())
    response = api.http.post(api.rcs, body)
    assert response.status_code == 201, response.text
    if count is None:
        count = body["spec"]["replicas"]
    selector = ",".join(f"{k}={v}" for k, v in body["spec"]["selector"].items())
    wait_for(lambda: len(api.pods(selector)) == count, what=f"{count} pods")
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
def core(api: Api) -> Iterator[client.CoreV1Api]:
    api.configuration.api_key_prefix = {"BearerToken": "Bearer"}
    with client.ApiClient(api.configuration) as api_client:
        yield client.CoreV1Api(api_client)


@pytest.fixture
def emulated_core(kube_emulator: KubeEmulator) -> Iterator[client.CoreV1Api]:
    configuration = client.Configuration(host=kube_emulator.url)
    configuration.api_key = {"BearerToken": kube_emulator.token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    with client.ApiClient(configuration) as api_client:
        yield client.CoreV1Api(api_client)


# -- Status bodies --------------------------------------------------------------------------

def test_status_bodies_for_each_refusal(api: Api) -> None:
    http, rcs = api.http, api.rcs
    missing = assert_status(http.get(f"{rcs}/nope"), 404, "NotFound")
    assert missing["message"] == 'replicationcontrollers "nope" not found'
    assert missing["details"] == {"name": "nope", "kind": "replicationcontrollers"}

    create(api, controller("web"))
    again = assert_status(http.post(rcs, controller("web")), 409, "AlreadyExists")
    assert again["message"] == 'replicationcontrollers "web" already exists'

    bad = controller("Bad_Name", replicas=-1)
    bad["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    invalid = assert_status(http.post(rcs, bad), 422, "Invalid")
    fields = {cause["field"] for cause in invalid["details"]["causes"]}
    assert {"metadata.name", "spec.replicas", "spec.template.metadata.labels"} <= fields
    assert invalid["details"]["kind"] == "ReplicationController"
    assert invalid["message"].startswith('ReplicationController "Bad_Name" is invalid: [')

    forbidden = assert_status(http.get(rcs, token=api.forbidden_token), 403, "Forbidden")
    assert forbidden["message"].startswith("replicationcontrollers is forbidden: User ")
    assert 'cannot list resource "replicationcontrollers"' in forbidden["message"]
    assert_status(http.get(rcs, token="unknown"), 401, "Unauthorized")
    assert_status(http.post(f"/api/v1/namespaces/{api.namespace}-ghost/replicationcontrollers",
                            controller("x")), 404, "NotFound")
    assert_status(http.get(rcs, labelSelector="a in (b"), 400, "BadRequest")


def test_the_official_client_raises_its_typed_errors(api: Api, core: client.CoreV1Api) -> None:
    namespace = api.namespace
    with pytest.raises(NotFoundException) as missing:
        core.read_namespaced_replication_controller("nope", namespace)
    assert api_failure(missing.value, "read nope").status == 404
    core.create_namespaced_replication_controller(namespace, controller("web"))
    with pytest.raises(ConflictException):
        core.create_namespaced_replication_controller(namespace, controller("web"))
    with pytest.raises(UnprocessableEntityException) as invalid:
        core.create_namespaced_replication_controller(namespace, controller("web2", -3))
    message = str(api_failure(invalid.value, "create web2"))
    assert "422 invalid" in message and "spec.replicas: Invalid value: -3" in message
    core.api_client.configuration.api_key = {"BearerToken": api.forbidden_token}
    with pytest.raises(ForbiddenException):
        core.list_namespaced_pod(namespace)
    core.api_client.configuration.api_key = {"BearerToken": "unknown"}
    with pytest.raises(UnauthorizedException):
        core.list_namespaced_pod(namespace)


def test_a_dry_run_stores_nothing_and_answers_the_defaulted_object(api: Api) -> None:
    answer = api.http.post(api.rcs, controller("web"), dryRun="All")
    assert answer.status_code == 201, answer.text
    assert answer.json()["spec"]["template"]["spec"]["containers"][0]["name"] == "main"
    assert api.controllers() == []
    refused = assert_status(api.http.post(api.rcs, controller("web"), dryRun="Sometimes"), 422,
                            "Invalid")
    assert refused["details"]["causes"][0]["field"] == "dryRun"


def test_typed_models_round_trip_a_deployed_manifest(api: Api, core: client.CoreV1Api) -> None:
    definition = Definition(source="zk.yml", cluster="zookeeper", image="zk", ports=(2181,),
                            settings={"a": {"b": [1, 2]}}, env={"X": "1"},
                            resources={"limits": {"memory": "1Gi"}}, labels={"team": "data"})
    manifest = build_controller(definition, namespace="dev", pods=2, job_id="job-1",
                                when=datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    created = core.create_namespaced_replication_controller(api.namespace, manifest)
    assert isinstance(created, client.V1ReplicationController)
    assert created.metadata.uid and created.metadata.resource_version
    assert created.spec.template.spec.containers[0].ports[0].container_port == 2181
    wait_for(lambda: len(api.pods("ocho.io/cluster=zookeeper")) == 2, what="2 pods")
    pods = core.list_namespaced_pod(api.namespace, label_selector="ocho.io/cluster=zookeeper")
    assert len(pods.items) == 2
    assert pods.items[0].metadata.owner_references[0].uid == created.metadata.uid


def test_running_pods_and_ready_replicas(kube_emulator: KubeEmulator,
                                         emulated_core: client.CoreV1Api) -> None:
    """Emulator: running pods, their IPs and ready counts need a kubelet."""
    created = create(kube_emulator, controller("web", 2))
    wait_for(lambda: (emulated_core.read_namespaced_replication_controller(
        created["metadata"]["name"], "default").status.ready_replicas or 0) == 2,
        what="2 ready replicas in the RC status")
    pod = emulated_core.list_namespaced_pod("default", label_selector="app=web").items[0]
    assert pod.status.phase == "Running" and pod.status.pod_ip
    assert pod.status.container_statuses[0].ready is True
    assert pod.status.container_statuses[0].restart_count == 0


# -- selectors ------------------------------------------------------------------------------

def test_label_selectors_equality_and_sets(api: Api) -> None:
    create(api, controller("a", 1, {"app": "a", "tier": "web", "env": "prod"}))
    create(api, controller("b", 1, {"app": "b", "tier": "db", "env": "prod"}))
    create(api, controller("c", 1, {"app": "c", "tier": "web"}))

    def names(selector: str, resource: str = "replicationcontrollers") -> list[str]:
        items = api.http.items(resource, api.namespace, selector=selector)
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


def test_lists_page_with_limit_and_continue(api: Api) -> None:
    for name in ("p1", "p2", "p3"):
        create(api, controller(name, 0))
    first = api.http.get(api.rcs, limit=2).json()
    assert [item["metadata"]["name"] for item in first["items"]] == ["p1", "p2"]
    rest = api.http.get(api.rcs, limit=2, **{"continue": first["metadata"]["continue"]}).json()
    assert [item["metadata"]["name"] for item in rest["items"]] == ["p3"]
    assert "continue" not in rest["metadata"]


# -- the RC manager and deletion ----------------------------------------------------------

def test_deleted_pods_are_replaced(api: Api) -> None:
    create(api, controller("web", 2))
    victim = api.pods()[0]["metadata"]["name"]
    assert api.http.delete(f"{api.pods_path}/{victim}").status_code == 200
    wait_for(lambda: len(api.pods()) == 2
             and victim not in {pod["metadata"]["name"] for pod in api.pods()},
             what="a replacement pod")


def test_delete_without_policy_orphans_the_pods(api: Api) -> None:
    create(api, controller("web", 2))
    response = api.http.delete(f"{api.rcs}/web")
    assert response.status_code == 200
    wait_for(lambda: api.controllers() == [], what="the RC to go")
    wait_for(lambda: all("ownerReferences" not in pod["metadata"] for pod in api.pods()),
             what="the owner references to go")
    # A real server lists an RC whose orphan finalizer is still running as being
    # deleted (left out above) while it still exists: wait until it is gone.
    wait_for(lambda: api.http.get(f"{api.rcs}/web").status_code == 404,
             what="the RC to be gone from the store")
    pods = api.pods()
    assert len(pods) == 2  # core/v1 RC semantics: the pods keep running
    # and a new controller with the same selector adopts them instead of starting more
    create(api, controller("web", 2))
    adopted = api.pods()
    assert {pod["metadata"]["name"] for pod in adopted} == {
        pod["metadata"]["name"] for pod in pods}


def test_background_delete_cascades(api: Api) -> None:
    create(api, controller("web", 3))
    create(api, controller("keep", 1))
    response = api.http.delete(f"{api.rcs}/web", body={"propagationPolicy": "Background"})
    assert response.status_code == 200
    assert response.json()["status"] == "Success"
    assert_status(api.http.get(f"{api.rcs}/web"), 404, "NotFound")
    wait_for(lambda: len(api.pods()) == 1, what="the web pods to be collected")
    assert api.pods()[0]["metadata"]["labels"]["app"] == "keep"


def test_foreground_delete_waits_for_the_pods(api: Api) -> None:
    create(api, controller("web", 2))
    response = api.http.delete(f"{api.rcs}/web", propagationPolicy="Foreground")
    assert response.status_code == 200
    marked = response.json()
    assert marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["finalizers"] == ["foregroundDeletion"]
    wait_for(lambda: api.http.get(f"{api.rcs}/web").status_code == 404, what="the RC to go")
    assert api.pods() == []


def test_invalid_propagation_policy_is_refused(api: Api) -> None:
    create(api, controller("web", 1))
    body = assert_status(api.http.delete(f"{api.rcs}/web", propagationPolicy="Sometimes"),
                         422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "propagationPolicy"


# -- scale, patch and resourceVersion -----------------------------------------------------

def test_scale_subresource_get_put_patch(api: Api) -> None:
    http = api.http
    create(api, controller("web", 1))
    path = f"{api.rcs}/web/scale"
    scale = http.get(path).json()
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"]["replicas"] == 1 and scale["status"]["selector"] == "app=web"
    # The real controller manager updates the RC's status meanwhile (a new
    # resourceVersion): a stale PUT is a 409, and a client reads and puts again.
    for _ in range(20):
        scale["spec"]["replicas"] = 3
        put = http.put(path, scale)
        if put.status_code != 409:
            break
        scale = http.get(path).json()
    assert put.status_code == 200 and put.json()["spec"]["replicas"] == 3, put.text
    wait_for(lambda: len(api.pods()) == 3, what="3 pods")
    patched = http.patch(path, {"spec": {"replicas": 1}})
    assert patched.status_code == 200 and patched.json()["spec"]["replicas"] == 1
    wait_for(lambda: len(api.pods()) == 1, what="1 pod")
    assert_status(http.patch(path, {"spec": {"replicas": -1}}), 422, "Invalid")
    assert_status(http.patch(path, {"spec": {}}, content_type="text/plain"), 415,
                  "UnsupportedMediaType")
    rc = http.get(f"{api.rcs}/web").json()
    assert rc["metadata"]["generation"] == 3


def test_official_client_scale_and_patch(api: Api, core: client.CoreV1Api) -> None:
    create(api, controller("web", 1))
    core.patch_namespaced_replication_controller_scale("web", api.namespace,
                                                       {"spec": {"replicas": 2}})
    core.patch_namespaced_replication_controller(
        "web", api.namespace, [{"op": "replace", "path": "/spec/replicas", "value": 4}])
    assert core.read_namespaced_replication_controller_scale(
        "web", api.namespace).spec.replicas == 4
    wait_for(lambda: len(api.pods()) == 4, what="4 pods")


def test_resource_versions_move_forward(api: Api) -> None:
    created = create(api, controller("web", 1))
    wait_for(lambda: int(api.controllers()[0]["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"]), what="the manager to update the status")
    listing = api.http.get(api.rcs).json()
    assert int(listing["metadata"]["resourceVersion"]) >= int(
        listing["items"][0]["metadata"]["resourceVersion"])


# -- logs ---------------------------------------------------------------------------------

def test_a_pending_pods_log_is_empty_and_text_alone_is_not_acceptable(kube: KubeNamespace
                                                                       ) -> None:
    """The real server only: what `log` must cope with (the emulator serves anyone)."""
    http = RealHttp(kube)
    create(Api(http, kube.name, "", client.Configuration()), controller("web", 1))
    name = kube.pods()[0]["metadata"]["name"]
    log = f"/api/v1/namespaces/{kube.name}/pods/{name}/log"
    refused = http._call("GET", log, None, headers={"Accept": "text/plain"})
    assert refused.status_code == 406  # kubernetes/kubernetes#61450
    answer = http._call("GET", log, None, headers={"Accept": "application/json, */*"})
    assert answer.status_code == 204 and answer.text == ""  # not scheduled: no log yet


def test_logs_are_text_with_tail_and_since(kube_emulator: KubeEmulator,
                                           emulated_core: client.CoreV1Api) -> None:
    """Emulator: a log's content needs a container that ran (a kubelet)."""
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
    assert emulated_core.read_namespaced_pod_log(name, "default", tail_lines=1) == "last line\n"
    assert_status(kube_emulator.get(f"{PODS}/{name}/log", container="other"), 400, "BadRequest")


# -- watch --------------------------------------------------------------------------------

def test_watch_streams_events_as_lines(api: Api, core: client.CoreV1Api) -> None:
    events: list[tuple[str, str]] = []
    watcher = watch.Watch()
    listening = threading.Event()

    def follow() -> None:
        listening.set()
        for event in watcher.stream(core.list_namespaced_pod, api.namespace,
                                    label_selector="app=web", timeout_seconds=5):
            events.append((event["type"], event["object"].metadata.name))
            if sum(1 for kind, _ in events if kind == "DELETED") >= 2:
                watcher.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    listening.wait()
    time.sleep(0.3)  # the watch request reaches the server
    create(api, controller("web", 2))
    create(api, controller("other", 1))
    api.http.delete(f"{api.rcs}/web", propagationPolicy="Background")
    thread.join(timeout=10)
    assert not thread.is_alive()
    added = {name for kind, name in events if kind == "ADDED"}
    deleted = {name for kind, name in events if kind == "DELETED"}
    assert len(added) == 2 and added == deleted
    assert all(name.startswith("web-") for _, name in events)


def test_watch_replays_from_a_resource_version(api: Api) -> None:
    created = create(api, controller("web", 0))
    since = created["metadata"]["resourceVersion"]
    api.http.patch(f"{api.rcs}/web", {"metadata": {"labels": {"app": "web", "x": "y"}}})
    with api.http.get(api.rcs, watch="true", resourceVersion=since,
                      timeoutSeconds="1") as response:
        lines = [line for line in response.iter_lines() if line]
    events = [json.loads(line) for line in lines]
    assert events and all(event["type"] == "MODIFIED" for event in events)
    assert events[-1]["object"]["metadata"]["labels"]["x"] == "y"
