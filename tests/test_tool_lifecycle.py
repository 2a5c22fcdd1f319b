"""A cluster's life through the tools against a real Kubernetes control plane:
deploy, grep, info, scale, log, kill and ls, each run as the worker runs it,
each checked against the objects the API server holds. Without a kubelet,
pods stay Pending; what only running pods show is tested on the emulator,
at the end of this file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.infra import BOTH_STARTS, wait_for
from tests.kube.emulator import KubeEmulator
from tests.kube.real import KubeNamespace
from tests.kube.toolrun import definition_text

pytest_plugins = ["tests.kube.fixtures"]
pytestmark = [pytest.mark.usefixtures("both_starts"), BOTH_STARTS]

DEFINITION_FILES = ("zookeeper.yml", "kafka.yml", "redis.yml")
JOB = "0b9a3c1e-7d2f-4e8a-9b6c-5d4e3f2a1b0c"


def files() -> dict[str, str]:
    return {name: definition_text(name) for name in DEFINITION_FILES}


def replicas(kube: KubeNamespace, cluster: str) -> int:
    return sum(rc["spec"]["replicas"]
               for rc in kube.controllers(f"ocho.io/cluster={cluster}"))


def deploy_all(kube: KubeNamespace, run_tool) -> None:
    result = run_tool("deploy", *DEFINITION_FILES, "-p", "2", files=files(), job_id=JOB)
    assert result.code == 0, result.output
    assert "100% success / spawned 6 pod(s)" in result.out
    for cluster in ("zookeeper", "kafka", "redis"):
        kube.wait_for_pods(2, f"ocho.io/cluster={cluster}")
    # The tools report a controller's pods as its status counts them, which the
    # controller manager updates a little after it made them.
    kube.wait(lambda: [rc.get("status", {}).get("replicas") for rc in kube.controllers()]
              == [2, 2, 2], "the controllers' status to count their pods")


def test_deploy_ls_grep_info_on_the_real_api(kube: KubeNamespace, run_tool) -> None:
    deploy_all(kube, run_tool)
    controllers = kube.controllers()
    assert sorted(rc["metadata"]["labels"]["ocho.io/cluster"] for rc in controllers) == [
        "kafka", "redis", "zookeeper"]
    for rc in controllers:
        assert rc["spec"]["replicas"] == 2
        assert rc["metadata"]["labels"]["ocho.io/job"] == JOB
        # The server's defaults are in the stored template; the tools cope with them.
        template = rc["spec"]["template"]["spec"]
        assert template["restartPolicy"] == "Always" and template["dnsPolicy"] == "ClusterFirst"
    by_name = {rc["metadata"]["name"]: rc for rc in controllers}
    for pod in kube.pods():
        (owner,) = pod["metadata"]["ownerReferences"]  # made by the real RC controller
        assert owner["kind"] == "ReplicationController" and owner["name"] in by_name
        container = pod["spec"]["containers"][0]
        env = {item["name"]: item["value"] for item in container["env"]}
        assert env["ochopod_application"] == pod["metadata"]["labels"]["ocho.io/application"]
        assert 8080 in [port["containerPort"] for port in container["ports"]]
        assert pod["status"]["phase"] == "Pending"

    listing = run_tool("ls")
    assert listing.code == 0, listing.output
    assert "3 cluster(s), 3 controller(s), 6 pod(s) wanted" in listing.out
    for name in by_name:
        assert name in listing.out

    table = run_tool("grep")
    assert table.code == 0, table.output
    lines = table.out.splitlines()
    assert lines[0].split() == ["CLUSTER", "POD", "IP", "PHASE", "READY", "RESTARTS", "AGE"]
    rows = {line.split()[1]: line.split() for line in lines[1:-1]}
    assert rows.keys() == {pod["metadata"]["name"] for pod in kube.pods()}
    for pod in kube.pods():
        cluster = "default." + pod["metadata"]["labels"]["ocho.io/cluster"]
        assert rows[pod["metadata"]["name"]][:6] == [
            cluster, pod["metadata"]["name"], "-", "Pending", "0/1", "0"]
    assert lines[-1] == "6 pod(s)"
    only = json.loads(run_tool("grep", "-j", "*.kafka").out)
    assert {pod["cluster"] for pod in only["pods"]} == {"default.kafka"}
    assert len(only["pods"]) == 2
    nothing = run_tool("grep", "nope*")
    assert nothing.code == 1
    assert nothing.err.strip() == ("grep: no pod of a cluster matches 'nope*' in Kubernetes "
                                   f"namespace {kube.name!r}")

    info = run_tool("info", "-j", "zookeeper")
    assert info.code == 0, info.output
    pods = json.loads(info.out)["pods"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["cluster"] == "default.zookeeper"
        assert pod["settings"] == {"tick_time": 2000, "init_limit": 10, "sync_limit": 5}
        assert pod["ports"] == [2181, 2888, 3888, 8080]
        assert pod["phase"] == "Pending" and pod["ready"] is False
        assert pod["job"] == JOB and pod["controller"].startswith("default-zookeeper-")


def test_scale_by_target_factor_and_step(kube: KubeNamespace, run_tool) -> None:
    result = run_tool("deploy", "zookeeper.yml", "redis.yml", "-p", "2", files=files())
    assert result.code == 0, result.output
    for factor, expected in [("@5", 5), ("x0.5", 3), ("-20", 0), ("+1", 1)]:
        before = replicas(kube, "zookeeper")
        result = run_tool("scale", "zoo*", "-f", factor)
        assert result.code == 0, (factor, result.output)
        assert f"default.zookeeper: {before} -> {expected} pod(s)" in result.out
        assert replicas(kube, "zookeeper") == expected
        kube.wait_for_pods(expected, "ocho.io/cluster=zookeeper")
    assert replicas(kube, "redis") == 2

    as_json = run_tool("scale", "-j", "default.redis", "-f", "@3")
    assert as_json.code == 0, as_json.output
    (cluster,) = json.loads(as_json.out)["clusters"]
    assert (cluster["cluster"], cluster["from"], cluster["to"]) == ("default.redis", 2, 3)
    kube.wait_for_pods(3, "ocho.io/cluster=redis")

    bad = run_tool("scale", "zoo*", "-f", "lots")
    assert bad.code == 2
    assert "is not understood" in bad.err and len(bad.err.strip().splitlines()) == 1


def test_scale_spreads_over_a_clusters_controllers(kube: KubeNamespace, run_tool) -> None:
    zookeeper = {"zookeeper.yml": definition_text("zookeeper.yml")}
    assert run_tool("deploy", "zookeeper.yml", "-p", "2", files=zookeeper).code == 0
    assert run_tool("deploy", "zookeeper.yml", "-p", "1", files=zookeeper).code == 0
    result = run_tool("scale", "zookeeper", "-f", "@6")
    assert result.code == 0, result.output
    assert sorted(rc["spec"]["replicas"] for rc in kube.controllers()) == [2, 4]
    kube.wait_for_pods(6)
    result = run_tool("scale", "zookeeper", "-f", "@1")
    assert result.code == 0, result.output
    assert replicas(kube, "zookeeper") == 1
    kube.wait_for_pods(1)


def test_log_of_pending_pods_says_so_and_succeeds(kube: KubeNamespace, run_tool) -> None:
    assert run_tool("deploy", "zookeeper.yml", "-p", "2", files=files()).code == 0
    names = sorted(pod["metadata"]["name"]
                   for pod in kube.wait_for_pods(2, "ocho.io/cluster=zookeeper"))
    result = run_tool("log", "default.zookeeper")
    assert result.code == 0, result.output
    blocks = [block.splitlines() for block in result.out.strip().split("\n\n")]
    assert blocks == [[f"==> default.zookeeper {name} <==", "(no log yet)"] for name in names]
    assert result.err == ""
    as_json = json.loads(run_tool("log", "-j", "zoo*", "--since", "10m").out)
    assert as_json["ok"] is True
    assert [(pod["pod"], pod["lines"], pod["error"]) for pod in as_json["pods"]] == [
        (name, [], None) for name in names]


def test_kill_removes_only_the_matching_clusters(kube: KubeNamespace, run_tool) -> None:
    deploy_all(kube, run_tool)
    result = run_tool("kill", "zoo*")
    assert result.code == 0, result.output
    assert "killed 1 cluster(s): 1 controller(s), 2 pod(s)" in result.out
    kube.wait(lambda: not kube.controllers("ocho.io/cluster=zookeeper"), "zookeeper's RC gone")
    kube.wait_for_pods(0, "ocho.io/cluster=zookeeper", timeout=20)
    assert len(kube.controllers()) == 2
    assert len(kube.cluster_pods("kafka")) == 2

    foreground = run_tool("kill", "-j", "--foreground", "*.kafka")
    assert foreground.code == 0, foreground.output
    report = json.loads(foreground.out)
    assert report["propagation_policy"] == "Foreground" and report["pods"] == 2
    kube.wait(lambda: not kube.controllers("ocho.io/cluster=kafka"),
              "the kafka controller to go after its pods", timeout=20)
    assert kube.cluster_pods("kafka") == []
    assert len(kube.cluster_pods("redis")) == 2

    typo = run_tool("kill", "redis", "kafak")
    assert typo.code == 1
    assert "no cluster matches 'kafak'" in typo.err
    assert len(kube.controllers()) == 1  # redis was not killed either


def test_orphaned_pods_are_listed_and_killed_with_orphans(kube: KubeNamespace,
                                                          run_tool) -> None:
    assert run_tool("deploy", "zookeeper.yml", "redis.yml", "-p", "2", files=files()).code == 0
    kube.wait_for_pods(4)
    (rc,) = kube.controllers("ocho.io/cluster=zookeeper")
    kube.core.delete_namespaced_replication_controller(
        rc["metadata"]["name"], kube.name, propagation_policy="Orphan")
    # The garbage collector strips the pods' owner references: they are orphans now.
    kube.wait(lambda: not kube.controllers("ocho.io/cluster=zookeeper") and all(
        not pod["metadata"].get("ownerReferences") for pod in kube.cluster_pods("zookeeper")),
        "zookeeper's pods orphaned")

    grep = run_tool("grep", "zookeeper")
    assert grep.code == 0, grep.output
    assert grep.out.count("(orphan)") == 2
    assert "2 orphaned (`kill --orphans` removes them)" in grep.out
    listing = run_tool("ls", "-j", "zookeeper")
    assert listing.code == 0, listing.output
    (cluster,) = json.loads(listing.out)["clusters"]
    assert cluster["controllers"] == [] and len(cluster["orphans"]) == 2

    plain = run_tool("kill", "zookeeper")
    assert plain.code == 0, plain.output
    assert "left 2 orphaned pod(s)" in plain.out and "kill --orphans" in plain.out
    assert len(kube.cluster_pods("zookeeper")) == 2

    killed = run_tool("kill", "zookeeper", "--orphans")
    assert killed.code == 0, killed.output
    assert "2 orphaned pod(s)" in killed.out
    kube.wait_for_pods(0, "ocho.io/cluster=zookeeper", timeout=20)
    assert len(kube.cluster_pods("redis")) == 2  # another cluster's pods are untouched
    assert "no clusters" not in run_tool("ls").out


# -- what only a kubelet shows: the emulator -------------------------------------------

def test_log_tails_each_running_pod(kube_emulator: KubeEmulator, run_emulated) -> None:
    """Emulator: log content, --tail and --since need containers that ran (a kubelet)."""
    result = run_emulated("deploy", "zookeeper.yml", "-p", "2", files=files())
    assert result.code == 0, result.output
    wait_for(lambda: len(kube_emulator.pods()) == 2, what="2 pods")
    pods = kube_emulator.pods()
    marked = pods[0]["metadata"]["name"]
    kube_emulator.append_log("default", marked, "zookeeper: an hour ago",
                             at=datetime.now(UTC) - timedelta(hours=1))
    kube_emulator.append_log("default", marked, "zookeeper: elected leader")

    result = run_emulated("log", "zoo*", "--tail", "2")
    assert result.code == 0, result.output
    blocks = [block.splitlines() for block in result.out.strip().split("\n\n")]
    assert len(blocks) == 2
    for header, *lines in blocks:
        name = header.split()[2]
        assert header == f"==> default.zookeeper {name} <=="
        assert lines == (["ochopod: pod is running", "zookeeper: elected leader"]
                         if name == marked else
                         ["ochopod: listening on port(s) 2181, 2888, 3888, 8080",
                          "ochopod: pod is running"])
    everything = run_emulated("log", "-j", "default.zookeeper", "--tail", "100")
    by_pod = {item["pod"]: item["lines"] for item in json.loads(everything.out)["pods"]}
    assert by_pod[marked][0] == "zookeeper: an hour ago"  # logs are in time order
    recent = run_emulated("log", "-j", "zookeeper", "--since", "10m")
    by_pod = {item["pod"]: item["lines"] for item in json.loads(recent.out)["pods"]}
    assert "zookeeper: an hour ago" not in by_pod[marked]
    assert "zookeeper: elected leader" in by_pod[marked]



def test_log_prints_each_line_as_the_pod_wrote_it(kube_emulator: KubeEmulator,
                                                  run_emulated) -> None:
    """Emulator: log content needs a container that ran. A line ends at \\n, as
    Kubernetes counts lines for --tail: a pod's \\r\\n, a progress bar redrawn with
    \\r, a form feed stay as the pod wrote them (str.splitlines() broke them up)."""
    assert run_emulated("deploy", "zookeeper.yml", "-p", "1", files=files()).code == 0
    wait_for(lambda: len(kube_emulator.pods()) == 1, what="1 pod")
    (pod,) = kube_emulator.pods()
    name = pod["metadata"]["name"]
    written = ["windows line\r", "progress 10%\rprogress 100%", "page\x0cbreak\u2028same line"]
    for line in written:
        kube_emulator.append_log("default", name, line)

    result = run_emulated("log", "zookeeper", "--tail", "3")
    assert result.code == 0, result.output
    assert result.out == f"==> default.zookeeper {name} <==\n" + "".join(
        line + "\n" for line in written)
    as_json = json.loads(run_emulated("log", "-j", "zookeeper", "--tail", "3").out)
    assert as_json["pods"][0]["lines"] == written


def test_grep_and_info_of_running_pods(kube_emulator: KubeEmulator, run_emulated) -> None:
    """Emulator: IPs, Running and ready counts need a kubelet to start the containers."""
    assert run_emulated("deploy", "kafka.yml", "-p", "2", files=files()).code == 0
    wait_for(lambda: len(kube_emulator.pods()) == 2, what="2 pods")
    result = run_emulated("grep")
    lines = result.out.splitlines()
    header = lines[0]
    for pod in kube_emulator.pods():
        row = next(line for line in lines if pod["metadata"]["name"] in line)
        assert row.split()[2:5] == [pod["status"]["podIP"], "Running", "1/1"]
        assert row.index(pod["status"]["podIP"]) == header.index("IP")  # aligned
    info = json.loads(run_emulated("info", "-j", "kafka").out)["pods"]
    assert all(pod["ready"] is True and pod["phase"] == "Running" for pod in info)
    listing = json.loads(run_emulated("ls", "-j").out)["clusters"]
    assert [(cluster["cluster"], cluster["ready"]) for cluster in listing] == [
        ("default.kafka", 2)]


def test_log_reports_each_pods_problem_and_fails_only_if_none_was_read(
        kube_emulator: KubeEmulator, run_emulated) -> None:
    """Emulator: a container still starting (400) or an unreachable node (500) needs a kubelet."""
    assert run_emulated("deploy", "zookeeper.yml", "-p", "2", files=files()).code == 0
    wait_for(lambda: len(kube_emulator.pods()) == 2, what="2 pods")
    broken, fine = sorted(pod["metadata"]["name"] for pod in kube_emulator.pods())
    kube_emulator.fail_next("GET", rf"/pods/{broken}/log$", 400, "BadRequest",
                            f'container "zookeeper" in pod "{broken}" is waiting to start: '
                            "ContainerCreating")
    result = run_emulated("log", "zookeeper")
    assert result.code == 0, result.output
    (line,) = result.err.strip().splitlines()
    assert line.startswith(f"log: default.zookeeper {broken}: ") and "waiting to start" in line
    assert "ochopod: pod is running" in result.out.split(f"{fine} <==")[1]

    kube_emulator.fail_next("GET", r"/log$", 500, "InternalError",
                            "Get https://node:10250/containerLogs: dial tcp: connection refused",
                            times=2)
    every = run_emulated("log", "-j", "zookeeper")
    assert every.code == 1
    document = json.loads(every.out)
    assert document["ok"] is False
    assert all("connection refused" in pod["error"] for pod in document["pods"])
