"""Every way the API can refuse, and what a person sees: one line they can act
on, a non-zero exit, never a traceback, never the token."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.infra import BOTH_STARTS, wait_for
from tests.kube.emulator import FORBIDDEN_TOKEN, KubeEmulator
from tests.kube.toolrun import ToolResult, definition_text, run_tool_in, tool_env

pytest_plugins = ["tests.kube.fixtures"]
pytestmark = [pytest.mark.usefixtures("both_starts"), BOTH_STARTS]

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


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("tool", sorted(TOOL_ARGS))
def test_forbidden_is_one_line_naming_the_user_and_verb(kube_emulator: KubeEmulator, run_tool,
                                                         tool: str) -> None:
    result = run_tool(tool, *TOOL_ARGS[tool], files=ZOOKEEPER, OCHO_K8S_TOKEN=FORBIDDEN_TOKEN)
    line = assert_one_line_failure(result, "403 forbidden", "cannot list resource",
                                   "system:serviceaccount:ocho:nobody", "RBAC",
                                   secret=FORBIDDEN_TOKEN)
    assert line.startswith(f"{tool}: ")
    assert kube_emulator.controllers() == []


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
    result = run_tool("grep", OCHO_K8S_TOKEN="not-a-known-token")
    assert_one_line_failure(result, "401 unauthorized", "OCHO_K8S_TOKEN",
                            secret="not-a-known-token")


def test_json_mode_reports_the_failure_as_json(run_tool) -> None:
    result = run_tool("ls", "-j", OCHO_K8S_TOKEN=FORBIDDEN_TOKEN)
    assert result.code == 1
    document = json.loads(result.out)
    assert document["ok"] is False and "403 forbidden" in document["error"]


def test_missing_namespace_is_not_found(kube_emulator: KubeEmulator, run_tool) -> None:
    result = run_tool("deploy", "zookeeper.yml", "--k8s-namespace", "nowhere", files=ZOOKEEPER)
    assert result.code == 1
    assert "Traceback" not in result.output
    (line,) = result.err.strip().splitlines()
    assert "404 not found" in line and 'namespaces "nowhere" not found' in line
    assert "0% success / spawned 0 pod(s)" in result.out


def test_a_reader_cannot_kill(kube_emulator: KubeEmulator, run_tool) -> None:
    assert run_tool("deploy", "zookeeper.yml", files=ZOOKEEPER).code == 0
    kube_emulator.add_account("reader-token", {"get", "list", "watch"})
    result = run_tool("kill", "zookeeper", OCHO_K8S_TOKEN="reader-token")
    assert_one_line_failure(result, "403 forbidden", "cannot delete resource",
                            "replicationcontrollers", secret="reader-token")
    assert len(kube_emulator.controllers()) == 1
    listing = run_tool("ls", OCHO_K8S_TOKEN="reader-token")
    assert listing.code == 0, listing.output


def test_conflict_on_create_is_reported(kube_emulator: KubeEmulator, run_tool) -> None:
    kube_emulator.fail_next("POST", r"/replicationcontrollers$", 409, "AlreadyExists",
                            'replicationcontrollers "default-zookeeper-x" already exists')
    result = run_tool("deploy", "zookeeper.yml", files=ZOOKEEPER)
    assert result.code == 1
    (line,) = result.err.strip().splitlines()
    assert "409 conflict" in line and "already exists" in line
    assert "0% success" in result.out


def test_invalid_object_reports_the_cause(kube_emulator: KubeEmulator, run_tool) -> None:
    cause = {"reason": "FieldValueInvalid", "field": "spec.template.spec.containers[0].image",
             "message": "Invalid value: \"x\": image is not allowed by policy"}
    kube_emulator.fail_next("POST", r"/replicationcontrollers$", 422, "Invalid",
                            'ReplicationController "z" is invalid', causes=[cause])
    result = run_tool("deploy", "zookeeper.yml", "redis.yml",
                      files={**ZOOKEEPER, "redis.yml": definition_text("redis.yml")})
    assert result.code == 1
    (line,) = result.err.strip().splitlines()
    assert "422 invalid" in line
    assert "spec.template.spec.containers[0].image: Invalid value" in line
    assert "50% success / spawned 1 pod(s)" in result.out  # the other definition went on
    assert len(kube_emulator.controllers()) == 1


def test_server_error_is_one_line(kube_emulator: KubeEmulator, run_tool) -> None:
    kube_emulator.fail_next("GET", r"/pods$", 500, "InternalError",
                            "Internal error occurred: etcdserver: request timed out")
    result = run_tool("grep")
    assert_one_line_failure(result, "500 InternalError", "etcdserver: request timed out")


def test_scale_rereads_after_a_conflict(kube_emulator: KubeEmulator, run_tool) -> None:
    assert run_tool("deploy", "zookeeper.yml", "-p", "2", files=ZOOKEEPER).code == 0
    conflict = ('Operation cannot be fulfilled on replicationcontrollers "z": the object has '
                "been modified; please apply your changes to the latest version and try again")
    kube_emulator.fail_next("PUT", r"/scale$", 409, "Conflict", conflict, times=2)
    result = run_tool("scale", "zookeeper", "-f", "+1")
    assert result.code == 0, result.output
    assert "default.zookeeper: 2 -> 3 pod(s)" in result.out
    (rc,) = kube_emulator.controllers()
    assert rc["spec"]["replicas"] == 3

    kube_emulator.fail_next("PUT", r"/scale$", 409, "Conflict", conflict, times=10)
    result = run_tool("scale", "zookeeper", "-f", "+1")
    assert_one_line_failure(result, "409 conflict", "the object has been modified")


def test_stale_resource_version_is_a_real_conflict(kube_emulator: KubeEmulator,
                                                   run_tool) -> None:
    """Without injected faults: a scale PUT with an old resourceVersion gets 409."""
    assert run_tool("deploy", "zookeeper.yml", files=ZOOKEEPER).code == 0
    (rc,) = kube_emulator.controllers()
    name = rc["metadata"]["name"]
    path = f"/api/v1/namespaces/default/replicationcontrollers/{name}/scale"
    scale = kube_emulator.get(path).json()
    version = scale["metadata"]["resourceVersion"]

    def put(replicas: int):
        return kube_emulator.put(path, {"apiVersion": "autoscaling/v1", "kind": "Scale",
                                        "metadata": {"name": name, "resourceVersion": version},
                                        "spec": {"replicas": replicas}})

    assert put(4).status_code == 200
    stale = put(5)
    assert stale.status_code == 409
    assert stale.json()["reason"] == "Conflict"
    wait_for(lambda: len(kube_emulator.pods()) == 4, what="4 pods, not 5")


def test_kubeconfig_context_gives_server_token_and_namespace(kube_emulator: KubeEmulator,
                                                             job_dir: Path) -> None:
    kube_emulator.create_namespace("team-a")
    kubeconfig = job_dir / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulated",
        "clusters": [{"name": "emulated", "cluster": {"server": kube_emulator.url}}],
        "users": [{"name": "portal", "user": {"token": kube_emulator.token}}],
        "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "portal",
                                                      "namespace": "team-a"}}],
    }))
    env = tool_env(job_dir, KUBECONFIG=str(kubeconfig))
    result = run_tool_in(job_dir, "deploy", "zookeeper.yml", env=env, files=ZOOKEEPER)
    assert result.code == 0, result.output
    assert len(kube_emulator.controllers("team-a")) == 1
    assert kube_emulator.controllers("default") == []
    override = run_tool_in(job_dir, "ls", "-j", env={**env, "OCHO_K8S_NAMESPACE": "default"})
    assert json.loads(override.out) == {"ok": True, "k8s_namespace": "default", "clusters": []}

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
