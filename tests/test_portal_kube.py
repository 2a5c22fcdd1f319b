"""The Kubernetes tools through the whole portal: HTTP → RabbitMQ → worker →
tool → the Kubernetes API (the emulator), and back."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.infra import ROOT, Stack
from tests.kube.emulator import KubeEmulator

pytest_plugins = ["tests.kube.fixtures"]

ZOOKEEPER = (ROOT / "definitions" / "zookeeper.yml").read_bytes()


@pytest.fixture
def stack(tmp_path: Path, amqp_url: str, kube_emulator: KubeEmulator):
    stack = Stack(tmp_path, amqp_url, k8s_host=kube_emulator.url, k8s_token=kube_emulator.token)
    stack.start_gateway()
    stack.start_worker()
    yield stack
    stack.stop()


def submit_line(stack: Stack, line: str, files: dict[str, bytes]) -> dict:
    response = requests.post(f"{stack.url}/jobs", data={"line": line},
                             files={name: (name, body) for name, body in files.items()},
                             timeout=30)
    assert response.status_code == 202, response.text
    assert response.headers["Location"].endswith(f"/jobs/{response.json()['id']}")
    return response.json()


def test_dry_run_deploy_through_the_portal(stack: Stack, kube_emulator: KubeEmulator):
    job = submit_line(stack, "deploy --dry-run zookeeper.yml", {"zookeeper.yml": ZOOKEEPER})
    done = stack.wait(job["id"], timeout=60)
    assert done["state"] == "succeeded", stack.output(job["id"])
    output = stack.output(job["id"])["data"]
    assert "kind: ReplicationController" in output
    assert "paugamo/k8s-ec2-zookeeper" in output
    assert kube_emulator.controllers() == []  # a dry run contacts nothing


def test_deploy_then_grep_end_to_end(stack: Stack, kube_emulator: KubeEmulator):
    job = submit_line(stack, "deploy zookeeper.yml -p 3", {"zookeeper.yml": ZOOKEEPER})
    done = stack.wait(job["id"], timeout=90)
    output = stack.output(job["id"])["data"]
    assert done["state"] == "succeeded", output
    assert "100% success" in output and "3 pod(s)" in output
    controllers = kube_emulator.controllers()
    assert len(controllers) == 1
    rc = controllers[0]
    assert rc["spec"]["replicas"] == 3
    assert rc["metadata"]["labels"]["ocho.io/job"] == job["id"]

    grep = stack.submit("grep", ["zoo*"])
    assert stack.wait(grep["id"], timeout=60)["state"] == "succeeded"
    table = stack.output(grep["id"])["data"]
    pods = [line for line in table.splitlines() if "zookeeper" in line and "Running" in line]
    assert len(pods) == 3, table
