"""The examples of docs/amqp.md, run as they are printed there, in Python (kombu) and
in Node.js (amqplib), against a real gateway and worker, as a client holding only
the least-privilege permissions the doc names (a user of its own, configure and
read `^amq\\.gen-`, write `^ocho\\.(jobs|control)$`). What they print is what a
user would see; the jobs they ran are then in the gateway's history with their
arguments."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests import infra
from tests.infra import ROOT, Stack

DOC = ROOT / "docs" / "amqp.md"
ZOOKEEPER = ROOT / "definitions" / "zookeeper.yml"
NODE_DIR = Path(os.environ.get("OCHO_TEST_NODE_DIR",
                               Path.home() / ".cache" / "ocho-tests" / "node"))
PERMISSIONS = (r"^amq\.gen-", r"^ocho\.(jobs|control)$", r"^amq\.gen-")


def example(heading: str, language: str) -> str:
    """The first ```language block under `## heading` in docs/amqp.md."""
    text = DOC.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert found, f"no {language} block under {heading!r} in {DOC}"
    return found.group(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("examples"), amqp_url)
    stack.start_gateway()
    stack.start_worker(concurrency=2)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def client_url(amqp_url: str, stack: Stack) -> Iterator[str]:
    """A broker user with the doc's least privileges on the test's vhost."""
    vhost = amqp_url.rsplit("/", 1)[1]
    user, password = f"ocho-test-client-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    infra.rabbitmqctl("add_user", user, password)
    try:
        infra.rabbitmqctl("set_permissions", "-p", vhost, user, *PERMISSIONS)
        yield f"amqp://{user}:{password}@127.0.0.1:5672/{quote(vhost, safe='')}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True,
                       timeout=60)


def run_example(command: list[str], code: str, name: str, url: str, cwd: Path,
                **env: str) -> str:
    (cwd / name).write_text(code)
    shutil.copy(ZOOKEEPER, cwd / "zookeeper.yml")
    done = subprocess.run([*command, name], cwd=cwd, capture_output=True, timeout=120,
                          env={**os.environ, "AMQP_URL": url, **env})
    out = done.stdout.decode()
    assert done.returncode == 0, (out, done.stderr.decode())
    return out


def assert_ran(out: str, stack: Stack) -> None:
    assert "available commands:" in out and "deploy" in out  # the catalog, `help`
    assert "kind: ReplicationController" in out and "paugamo/k8s-ec2-zookeeper" in out
    assert out.rstrip().splitlines()[-1] == "succeeded 0"
    # The history keeps the args of jobs submitted over AMQP.
    jobs = infra.wait_for(lambda: [j for j in requests.get(
        f"{stack.url}/jobs", params={"tool": "deploy", "limit": 50}, timeout=10).json()["jobs"]
        if j["state"] == "succeeded"], timeout=10, what="the deploy job recorded")
    assert jobs[0]["args"] == ["--dry-run", "zookeeper.yml"]


def test_the_kombu_example(stack: Stack, client_url: str, tmp_path: Path) -> None:
    code = example("Example: any client (here kombu)", "python")
    out = run_example([sys.executable], code, "example.py", client_url, tmp_path)
    assert "usage: deploy" in out  # `help deploy`
    assert_ran(out, stack)
    helps = requests.get(f"{stack.url}/jobs", params={"tool": "help"}, timeout=10).json()
    assert {tuple(j["args"]) for j in helps["jobs"]} >= {(), ("deploy",)}


@pytest.mark.skipif(shutil.which("node") is None
                    or not (NODE_DIR / "node_modules" / "amqplib").is_dir(),
                    reason=f"needs node and amqplib in {NODE_DIR} (scripts/ensure-test-tools)")
def test_the_node_example(stack: Stack, client_url: str, tmp_path: Path) -> None:
    code = example("Example: Node.js with amqplib", "javascript")
    out = run_example(["node"], code, "example.js", client_url, tmp_path,
                      NODE_PATH=str(NODE_DIR / "node_modules"))
    assert_ran(out, stack)


def test_help_over_amqp_for_an_unknown_tool_fails_with_the_list(stack: Stack) -> None:
    """The same catalog answer as POST /shell's `help nope`."""
    from ocho.client import Client

    with Client(stack.env["OCHO_AMQP_URL"]) as client:
        job_id = client.submit("help", ["nope"])
        result = client.wait(job_id, timeout=30)
    assert result.state == "failed" and result.exit_code == 1
    assert "unknown command 'nope'" in result.output and "deploy" in result.output
