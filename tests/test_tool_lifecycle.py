"""A cluster's life through the tools, against the API emulator: deploy, grep,
info, scale, log, kill and ls, each run as the worker runs it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.infra import BOTH_STARTS, wait_for
from tests.kube.emulator import KubeEmulator
from tests.kube.toolrun import definition_text

pytest_plugins = ["tests.kube.fixtures"]
pytestmark = [pytest.mark.usefixtures("both_starts"), BOTH_STARTS]

DEFINITION_FILES = ("zookeeper.yml", "kafka.yml", "redis.yml")
JOB = "0b9a3c1e-7d2f-4e8a-9b6c-5d4e3f2a1b0c"


def files() -> dict[str, str]:
    return {name: definition_text(name) for name in DEFINITION_FILES}


def cluster_pods(kube: KubeEmulator, cluster: str) -> list[dict]:
    return kube.pods(selector=f"ocho.io/cluster={cluster}")


def cluster_replicas(kube: KubeEmulator, cluster: str) -> int:
    return sum(rc["spec"]["replicas"]
               for rc in kube.controllers(selector=f"ocho.io/cluster={cluster}"))


def wait_for_pods(kube: KubeEmulator, cluster: str, count: int) -> list[dict]:
    """The controller manager works after the API call returns, as in a real cluster."""
    wait_for(lambda: len(cluster_pods(kube, cluster)) == count,
             what=f"{count} pod(s) of {cluster}")
    return cluster_pods(kube, cluster)


def deploy_all(kube: KubeEmulator, run_tool) -> None:
    result = run_tool("deploy", *DEFINITION_FILES, "-p", "2", files=files(), job_id=JOB)
    assert result.code == 0, result.output
    assert "100% success / spawned 6 pod(s)" in result.out
    for cluster in ("zookeeper", "kafka", "redis"):
        wait_for_pods(kube, cluster, 2)


def test_one_deploy_of_three_definitions_makes_three_clusters(kube_emulator: KubeEmulator,
                                                              run_tool) -> None:
    deploy_all(kube_emulator, run_tool)
    controllers = kube_emulator.controllers()
    assert sorted(rc["metadata"]["labels"]["ocho.io/cluster"] for rc in controllers) == [
        "kafka", "redis", "zookeeper"]
    for rc in controllers:
        assert rc["spec"]["replicas"] == 2
        assert rc["metadata"]["labels"]["ocho.io/job"] == JOB
    for pod in kube_emulator.pods():
        env = {item["name"]: item["value"]
               for item in pod["spec"]["containers"][0]["env"]}
        assert env["ochopod_application"] == pod["metadata"]["labels"]["ocho.io/application"]
        assert 8080 in [port["containerPort"] for port in pod["spec"]["containers"][0]["ports"]]

    listing = run_tool("ls")
    assert listing.code == 0, listing.output
    assert "3 cluster(s), 3 controller(s), 6 pod(s) wanted" in listing.out
    for rc in controllers:
        assert rc["metadata"]["name"] in listing.out


def test_grep_shows_every_pod_in_an_aligned_table(kube_emulator: KubeEmulator,
                                                  run_tool) -> None:
    deploy_all(kube_emulator, run_tool)
    result = run_tool("grep")
    assert result.code == 0, result.output
    lines = result.out.splitlines()
    header = lines[0]
    assert header.split() == ["CLUSTER", "POD", "IP", "PHASE", "READY", "RESTARTS", "AGE"]
    rows = {line.split()[1]: line for line in lines[1:-1]}
    pods = kube_emulator.pods()
    assert len(rows) == len(pods) == 6
    for pod in pods:
        row = rows[pod["metadata"]["name"]]
        cluster = "default." + pod["metadata"]["labels"]["ocho.io/cluster"]
        assert row.split()[:6] == [cluster, pod["metadata"]["name"], pod["status"]["podIP"],
                                   "Running", "1/1", "0"]
        # aligned: every column starts where its header does
        assert row.index(pod["status"]["podIP"]) == header.index("IP")
    assert lines[-1] == "6 pod(s)"

    only = run_tool("grep", "-j", "*.kafka")
    assert only.code == 0, only.output
    document = json.loads(only.out)
    assert {pod["cluster"] for pod in document["pods"]} == {"default.kafka"}
    assert len(document["pods"]) == 2

    nothing = run_tool("grep", "nope*")
    assert nothing.code == 1
    assert nothing.err.strip() == ("grep: no pod of a cluster matches 'nope*' in Kubernetes "
                                   "namespace 'default'")


def test_info_describes_each_pod(kube_emulator: KubeEmulator, run_tool) -> None:
    deploy_all(kube_emulator, run_tool)
    result = run_tool("info", "-j", "zookeeper")
    assert result.code == 0, result.output
    pods = json.loads(result.out)["pods"]
    assert len(pods) == 2
    settings = {"tick_time": 2000, "init_limit": 10, "sync_limit": 5}
    for pod in pods:
        assert pod["cluster"] == "default.zookeeper"
        assert pod["settings"] == settings
        assert pod["ports"] == [2181, 2888, 3888, 8080]
        assert pod["ready"] is True and pod["phase"] == "Running"
        assert pod["job"] == JOB
        assert pod["controller"].startswith("default-zookeeper-")
    pretty = run_tool("info", "zookeeper")
    assert json.loads(pretty.out)["pods"][0]["image"] == "paugamo/k8s-ec2-zookeeper"
    assert "\n  " in pretty.out  # indented for people


def test_scale_by_target_factor_and_step(kube_emulator: KubeEmulator, run_tool) -> None:
    deploy_all(kube_emulator, run_tool)
    steps = [("@5", 5), ("x0.5", 3), ("-1", 2), ("+3", 5), ("x2", 10), ("-20", 0), ("+1", 1)]
    for factor, expected in steps:
        before = cluster_replicas(kube_emulator, "zookeeper")
        result = run_tool("scale", "zoo*", "-f", factor)
        assert result.code == 0, (factor, result.output)
        assert f"default.zookeeper: {before} -> {expected} pod(s)" in result.out
        assert cluster_replicas(kube_emulator, "zookeeper") == expected
        wait_for_pods(kube_emulator, "zookeeper", expected)
    assert cluster_replicas(kube_emulator, "kafka") == 2
    assert len(cluster_pods(kube_emulator, "kafka")) == 2

    as_json = run_tool("scale", "-j", "default.redis", "-f", "@3")
    assert as_json.code == 0, as_json.output
    (cluster,) = json.loads(as_json.out)["clusters"]
    assert (cluster["cluster"], cluster["from"], cluster["to"]) == ("default.redis", 2, 3)

    bad = run_tool("scale", "zoo*", "-f", "lots")
    assert bad.code == 2
    assert "is not understood" in bad.err and len(bad.err.strip().splitlines()) == 1


def test_scale_spreads_over_a_clusters_controllers(kube_emulator: KubeEmulator,
                                                   run_tool) -> None:
    zookeeper = {"zookeeper.yml": definition_text("zookeeper.yml")}
    assert run_tool("deploy", "zookeeper.yml", "-p", "2", files=zookeeper).code == 0
    assert run_tool("deploy", "zookeeper.yml", "-p", "1", files=zookeeper).code == 0
    result = run_tool("scale", "zookeeper", "-f", "@6")
    assert result.code == 0, result.output
    older, newer = sorted(kube_emulator.controllers(),
                          key=lambda rc: int(rc["metadata"]["resourceVersion"]))
    counts = {rc["metadata"]["name"]: rc["spec"]["replicas"] for rc in (older, newer)}
    assert sorted(counts.values()) == [2, 4]  # growth went to one controller
    result = run_tool("scale", "zookeeper", "-f", "@1")
    assert result.code == 0, result.output
    assert cluster_replicas(kube_emulator, "zookeeper") == 1
    wait_for_pods(kube_emulator, "zookeeper", 1)


def test_log_tails_each_pod(kube_emulator: KubeEmulator, run_tool) -> None:
    deploy_all(kube_emulator, run_tool)
    pods = cluster_pods(kube_emulator, "zookeeper")
    marked = pods[0]["metadata"]["name"]
    kube_emulator.append_log("default", marked, "zookeeper: an hour ago",
                             at=datetime.now(UTC) - timedelta(hours=1))
    kube_emulator.append_log("default", marked, "zookeeper: elected leader")

    result = run_tool("log", "zoo*", "--tail", "2")
    assert result.code == 0, result.output
    blocks = [block.splitlines() for block in result.out.strip().split("\n\n")]
    assert len(blocks) == 2
    for block in blocks:
        header, *lines = block
        name = header.split()[2]
        assert header == f"==> default.zookeeper {name} <=="
        assert len(lines) == 2
        if name == marked:
            assert lines == ["ochopod: pod is running", "zookeeper: elected leader"]
        else:
            assert lines == ["ochopod: listening on port(s) 2181, 2888, 3888, 8080",
                             "ochopod: pod is running"]

    everything = run_tool("log", "-j", "default.zookeeper", "--tail", "100")
    by_pod = {item["pod"]: item["lines"] for item in json.loads(everything.out)["pods"]}
    assert "zookeeper: an hour ago" in by_pod[marked]
    assert by_pod[marked][0] == "zookeeper: an hour ago"  # logs are in time order
    recent = run_tool("log", "-j", "zookeeper", "--since", "10m")
    by_pod = {item["pod"]: item["lines"] for item in json.loads(recent.out)["pods"]}
    assert "zookeeper: an hour ago" not in by_pod[marked]
    assert "zookeeper: elected leader" in by_pod[marked]


def test_kill_removes_only_the_matching_clusters(kube_emulator: KubeEmulator,
                                                 run_tool) -> None:
    deploy_all(kube_emulator, run_tool)
    result = run_tool("kill", "zoo*")
    assert result.code == 0, result.output
    assert "killed 1 cluster(s): 1 controller(s), 2 pod(s)" in result.out
    assert kube_emulator.controllers(selector="ocho.io/cluster=zookeeper") == []
    wait_for_pods(kube_emulator, "zookeeper", 0)
    assert len(kube_emulator.controllers()) == 2
    assert len(cluster_pods(kube_emulator, "kafka")) == 2
    assert len(cluster_pods(kube_emulator, "redis")) == 2

    foreground = run_tool("kill", "-j", "--foreground", "*.kafka")
    assert foreground.code == 0, foreground.output
    report = json.loads(foreground.out)
    assert report["propagation_policy"] == "Foreground" and report["pods"] == 2
    wait_for(lambda: not kube_emulator.controllers(selector="ocho.io/cluster=kafka"),
             what="the kafka controller to go after its pods")
    assert cluster_pods(kube_emulator, "kafka") == []
    assert len(cluster_pods(kube_emulator, "redis")) == 2

    typo = run_tool("kill", "redis", "kafak")
    assert typo.code == 1
    assert "no cluster matches 'kafak'" in typo.err
    assert len(kube_emulator.controllers()) == 1  # redis was not killed either
