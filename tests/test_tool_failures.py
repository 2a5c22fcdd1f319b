"""Every way the API can refuse, and what a person sees: one line they can act
on, a non-zero exit, never a traceback, never the token."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from kubernetes import client

from tests.infra import BOTH_STARTS
from tests.kube.emulator import KubeEmulator
from tests.kube.real import KubeNamespace, RealKube
from tests.kube.toolrun import ToolResult, definition_text, run_tool_in, tool_env

pytest_plugins = ["tests.kube.fixtures"]
pytestmark = [pytest.mark.usefixtures("both_starts"), BOTH_STARTS]

READ_ONLY = [{"apiGroups": [""], "resources": ["replicationcontrollers", "pods"],
              "verbs": ["get", "list", "watch"]}]

ZOOKEEPER = {"zookeeper.yml": definition_text("zookeeper.yml")}
TOOL_ARGS = {
    "deploy": ["zookeeper.yml"],
    "ls": [],
    "grep": [],
    "info": [],
    "log": ["zoo*"],
    "kill": ["zoo*"],
    "scale": ["zoo*", "-f", "+1"],
}


def assert_one_line_failure(result: ToolResult, *expected: str, secret: str | None = None) -> str:
    assert result.code != 0, result.output
    assert "Traceback" not in result.output
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    if secret:
        assert secret not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def nobody(real_kube: RealKube):
    """A service account the server knows, with no rights at all."""
    namespace = KubeNamespace(real_kube).create()
    yield namespace.account("nobody")
    namespace.delete()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("tool", sorted(TOOL_ARGS))
def test_forbidden_is_one_line_naming_the_user_and_verb(kube: KubeNamespace, run_tool,
                                                         nobody: str, tool: str) -> None:
    result = run_tool(tool, *TOOL_ARGS[tool], files=ZOOKEEPER, token=nobody)
    line = assert_one_line_failure(
        result, "403 forbidden", "cannot list resource",
        ":nobody", "RBAC", secret=nobody)
    assert line.startswith(f"{tool}: ")
    assert kube.controllers() == []


@pytest.mark.parametrize("tool", sorted(TOOL_ARGS))
def test_unreachable_server_is_one_line(job_dir: Path, tool: str) -> None:
    port = closed_port()
    env = tool_env(job_dir, OCHO_K8S_HOST=f"http://127.0.0.1:{port}", OCHO_K8S_TOKEN="s3cret")
    result = run_tool_in(job_dir, tool, *TOOL_ARGS[tool], env=env, files=ZOOKEEPER)
    assert_one_line_failure(result, f"cannot reach the Kubernetes API at http://127.0.0.1:{port}",
                            "connection refused", secret="s3cret")


def test_no_cluster_configured(job_dir: Path) -> None:
    result = run_tool_in(job_dir, "ls", env=tool_env(job_dir))
    assert_one_line_failure(result, "no Kubernetes cluster configured", "OCHO_K8S_HOST",
                            "KUBECONFIG")


def test_unknown_token_is_unauthorized(run_tool) -> None:
    result = run_tool("grep", token="not-a-known-token")
    assert_one_line_failure(result, "401 unauthorized", "OCHO_K8S_TOKEN",
                            secret="not-a-known-token")


def test_json_mode_reports_the_failure_as_json(run_tool, nobody: str) -> None:
    result = run_tool("ls", "-j", token=nobody)
    assert result.code == 1
    document = json.loads(result.out)
    assert document["ok"] is False and "403 forbidden" in document["error"]


def test_missing_namespace_is_not_found(kube: KubeNamespace, run_tool) -> None:
    result = run_tool("deploy", "zookeeper.yml", "--k8s-namespace", f"{kube.name}-nowhere",
                      files=ZOOKEEPER)
    assert result.code == 1
    assert "Traceback" not in result.output
    (line,) = result.err.strip().splitlines()
    assert "404 not found" in line and f'namespaces "{kube.name}-nowhere" not found' in line
    assert "0% success / spawned 0 pod(s)" in result.out


def test_a_terminating_namespace_is_named_as_such(kube: KubeNamespace, run_tool) -> None:
    # A finalizer nobody removes holds the namespace in Terminating for the test.
    kube.core.create_namespaced_config_map(kube.name, {
        "metadata": {"name": "hold", "finalizers": ["ocho.test/hold"]}})
    kube.core.delete_namespace(kube.name)
    try:
        result = run_tool("deploy", "zookeeper.yml", files=ZOOKEEPER)
        line = assert_one_line_failure(
            result, f"the Kubernetes namespace {kube.name!r} is being deleted (terminating)")
        assert "RBAC" not in line
        assert kube.controllers() == []
    finally:
        kube.core.patch_namespaced_config_map("hold", kube.name,
                                              {"metadata": {"finalizers": None}})


def test_a_reader_cannot_kill(kube: KubeNamespace, run_tool) -> None:
    assert run_tool("deploy", "zookeeper.yml", files=ZOOKEEPER).code == 0
    reader = kube.account("reader", READ_ONLY)
    result = run_tool("kill", "zookeeper", token=reader)
    assert_one_line_failure(result, "403 forbidden", "cannot delete resource",
                            "replicationcontrollers", secret=reader)
    assert len(kube.controllers()) == 1
    listing = run_tool("ls", token=reader)
    assert listing.code == 0, listing.output


def test_conflict_on_create_is_reported(kube_emulator: KubeEmulator, run_emulated) -> None:
    """Emulator: a 409 on create is a race that cannot be timed on a real server."""
    kube_emulator.fail_next("POST", r"/replicationcontrollers$", 409, "AlreadyExists",
                            'replicationcontrollers "default-zookeeper-x" already exists')
    result = run_emulated("deploy", "zookeeper.yml", files=ZOOKEEPER)
    assert result.code == 1
    (line,) = result.err.strip().splitlines()
    assert "409 conflict" in line and "already exists" in line
    assert "0% success" in result.out


def test_one_refused_controller_stops_the_whole_batch(kube_emulator: KubeEmulator,
                                                      run_emulated) -> None:
    """Emulator: the real server admits every controller deploy's own checks pass;
    a policy refusing one (an admission webhook) is injected."""
    cause = {"reason": "FieldValueInvalid", "field": "spec.template.spec.containers[0].image",
             "message": "Invalid value: \"x\": image is not allowed by policy"}
    kube_emulator.fail_next("POST", r"/replicationcontrollers$", 422, "Invalid",
                            'ReplicationController "z" is invalid', causes=[cause])
    result = run_emulated("deploy", "zookeeper.yml", "redis.yml",
                          files={**ZOOKEEPER, "redis.yml": definition_text("redis.yml")})
    assert result.code == 1
    refused, skipped = result.err.strip().splitlines()
    assert "zookeeper.yml:" in refused and "422 invalid" in refused
    assert "spec.template.spec.containers[0].image: Invalid value" in refused
    assert "redis.yml: not created: a batch deploys whole or not at all" in skipped
    assert "0% success / spawned 0 pod(s)" in result.out
    assert kube_emulator.controllers() == []
    posts = [line for line in kube_emulator.requests if line.startswith("\"POST ")]
    assert len(posts) == 2 and all("dryRun=All" in line for line in posts), posts


def test_server_error_is_one_line(kube_emulator: KubeEmulator, run_emulated) -> None:
    """Emulator: a real server's internal errors cannot be provoked on demand."""
    kube_emulator.fail_next("GET", r"/pods$", 500, "InternalError",
                            "Internal error occurred: etcdserver: request timed out")
    result = run_emulated("grep")
    assert_one_line_failure(result, "500 InternalError", "etcdserver: request timed out")


def test_scale_rereads_after_a_conflict(kube_emulator: KubeEmulator, run_emulated) -> None:
    """Emulator: a conflict at the exact moment of the PUT needs injecting."""
    assert run_emulated("deploy", "zookeeper.yml", "-p", "2", files=ZOOKEEPER).code == 0
    conflict = ('Operation cannot be fulfilled on replicationcontrollers "z": the object has '
                "been modified; please apply your changes to the latest version and try again")
    kube_emulator.fail_next("PUT", r"/scale$", 409, "Conflict", conflict, times=2)
    result = run_emulated("scale", "zookeeper", "-f", "+1")
    assert result.code == 0, result.output
    assert "default.zookeeper: 2 -> 3 pod(s)" in result.out
    (rc,) = kube_emulator.controllers()
    assert rc["spec"]["replicas"] == 3

    kube_emulator.fail_next("PUT", r"/scale$", 409, "Conflict", conflict, times=10)
    result = run_emulated("scale", "zookeeper", "-f", "+1")
    assert_one_line_failure(result, "409 conflict", "the object has been modified")


def test_stale_resource_version_is_a_real_conflict(kube: KubeNamespace, run_tool) -> None:
    """What scale's retry is for: a PUT with an old resourceVersion gets 409."""
    assert run_tool("deploy", "zookeeper.yml", files=ZOOKEEPER).code == 0
    (rc,) = kube.controllers()
    name = rc["metadata"]["name"]

    def put(replicas: int, version: str):
        body = {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": name, "namespace": kube.name, "resourceVersion": version},
                "spec": {"replicas": replicas}}
        return kube.core.replace_namespaced_replication_controller_scale(name, kube.name, body)

    # The real controller manager writes the RC's status meanwhile (a new version each
    # time): put with a fresh version until one lands, then the version it replaced is
    # stale for certain.
    for _ in range(20):
        stale = kube.core.read_namespaced_replication_controller_scale(
            name, kube.name).metadata.resource_version
        try:
            put(4, stale)
            break
        except client.ApiException as exc:
            assert exc.status == 409, exc
    with pytest.raises(client.ApiException) as refused:
        put(5, stale)
    assert refused.value.status == 409 and json.loads(refused.value.body)["reason"] == "Conflict"
    kube.wait_for_pods(4)


def kubeconfig_for(kube: KubeNamespace, path: Path, namespace: str, token: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "real",
        "clusters": [{"name": "real", "cluster": {"server": kube.kube.server,
                                                  "certificate-authority": kube.kube.ca_file}}],
        "users": [{"name": "portal", "user": {"token": token}}],
        "contexts": [{"name": "real", "context": {"cluster": "real", "user": "portal",
                                                  "namespace": namespace}}],
    }))
    return path


def test_kubeconfig_context_gives_server_token_and_namespace(kube: KubeNamespace,
                                                             job_dir: Path) -> None:
    other = KubeNamespace(kube.kube).create()
    try:
        kubeconfig = kubeconfig_for(kube, job_dir / "kubeconfig", other.name,
                                    kube.kube.admin_token)
        env = tool_env(job_dir, KUBECONFIG=str(kubeconfig))
        result = run_tool_in(job_dir, "deploy", "zookeeper.yml", env=env, files=ZOOKEEPER)
        assert result.code == 0, result.output
        assert len(other.controllers()) == 1
        assert kube.controllers() == []
        override = run_tool_in(job_dir, "ls", "-j",
                               env={**env, "OCHO_K8S_NAMESPACE": kube.name})
        assert json.loads(override.out) == {"ok": True, "k8s_namespace": kube.name,
                                            "clusters": []}
    finally:
        other.delete()

    # kubectl's order: explicit settings win over KUBECONFIG.
    port = closed_port()
    explicit = run_tool_in(job_dir, "ls", env={**env, "OCHO_K8S_HOST": f"127.0.0.1:{port}"})
    assert_one_line_failure(explicit, f"cannot reach the Kubernetes API at https://127.0.0.1:{port}")

    broken = job_dir / "broken-kubeconfig"
    broken.write_text("current-context: nowhere\ncontexts: []\n")
    result = run_tool_in(job_dir, "ls", env=tool_env(job_dir, KUBECONFIG=str(broken)))
    assert_one_line_failure(result, "KUBECONFIG", "cannot be used")


def test_bad_arguments_are_one_line_with_a_pointer_to_help(job_dir: Path) -> None:
    for tool, args in (("deploy", ["-p", "many", "x.yml"]), ("scale", ["zoo*"]),
                       ("log", ["zoo*", "--since", "yesterday"]), ("kill", [])):
        result = run_tool_in(job_dir, tool, *args, env=tool_env(job_dir))
        assert result.code == 2, (tool, result.output)
        (line,) = result.err.strip().splitlines()
        assert line.startswith(f"{tool}: ") and f"see {tool} --help" in line


def test_invalid_environment_is_one_line(job_dir: Path) -> None:
    env = tool_env(job_dir, OCHO_K8S_HOST="http://127.0.0.1:1", OCHO_ATTEMPT="first")
    result = run_tool_in(job_dir, "ls", env=env)
    assert_one_line_failure(result, "OCHO_ATTEMPT must be a whole number")
