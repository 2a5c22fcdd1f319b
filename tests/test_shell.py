"""POST /shell, the original Ochopod portal's call, through the whole portal: a real
gateway and worker (processes), RabbitMQ, and the Kubernetes API emulator; called
with requests and with the real curl, the way old scripts call it."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import infra
from tests.infra import ROOT, Stack
from tests.kube.emulator import KubeEmulator

ZOOKEEPER = (ROOT / "definitions" / "zookeeper.yml").read_bytes()
REDIS = (ROOT / "definitions" / "redis.yml").read_bytes()
OUTPUT_CAP = 64 * 1024
# 4 server threads leave 2 waiting slots (ocho.gateway.services): the bound is reachable.
THREADS = 4
SLOTS = 2


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str,
          kube: KubeEmulator) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("shell")
    tools = infra.clone_tools_dir(workdir / "tools")
    stack = Stack(workdir, amqp_url, tools_dir=tools, k8s_host=kube.url, k8s_token=kube.token,
                  gateway_threads=THREADS, output_cap=OUTPUT_CAP)
    stack.start_gateway()
    stack.start_worker(concurrency=3)
    yield stack
    stack.stop()


def shell(stack: Stack, line: str | None, files: dict[str, bytes] | None = None,
          params: dict[str, str] | None = None, wait: float = 120) -> requests.Response:
    headers = {} if line is None else {"X-Shell": line}
    return requests.post(f"{stack.url}/shell", headers=headers, params=params,
                         files={name: (name, body) for name, body in (files or {}).items()},
                         timeout=wait)


def answer(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert isinstance(body["ok"], bool) and isinstance(body["ms"], int)
    assert isinstance(body["out"], str)
    return body


def curl(*args: str) -> dict[str, Any]:
    """Run the real curl; its stdout is the JSON answer."""
    done = subprocess.run(["curl", "-sS", "--max-time", "120", *args], capture_output=True,
                          timeout=130, check=True)
    return json.loads(done.stdout)


# -- help -----------------------------------------------------------------------------------


def test_help_lists_the_tools_with_their_summaries(stack: Stack) -> None:
    body = answer(shell(stack, "help"))
    assert body["ok"] is True
    assert "id" not in body  # no job: the gateway answers itself
    lines = body["out"].splitlines()
    for name in ("deploy", "grep", "kill", "cat", "exit", "sleep"):
        assert any(line.split()[:1] == [name] for line in lines), body["out"]
    assert any(line.split()[0] == "deploy" and "ReplicationController" in line
               for line in lines if line.strip())


def test_help_tool_gives_its_help(stack: Stack) -> None:
    body = answer(shell(stack, "help deploy"))
    assert body["ok"] is True
    assert "usage: deploy" in body["out"] and "--dry-run" in body["out"]
    unknown = answer(shell(stack, "help nope"))
    assert unknown["ok"] is False
    assert "unknown command 'nope'" in unknown["out"] and "deploy" in unknown["out"]


def test_help_with_curl_as_old_scripts_call_it(stack: Stack) -> None:
    body = curl("-X", "POST", "-H", "X-Shell:help", f"{stack.url}/shell")
    assert body["ok"] is True and "deploy" in body["out"]


# -- running tools ------------------------------------------------------------------------


def test_a_dry_run_deploy_with_its_definition_uploaded(stack: Stack, kube: KubeEmulator) -> None:
    before = len(kube.controllers())
    response = shell(stack, "deploy --dry-run zookeeper.yml -p 3",
                     files={"zookeeper.yml": ZOOKEEPER})
    body = answer(response)
    assert body["ok"] is True, body["out"]
    assert body["state"] == "succeeded" and body["exit_code"] == 0
    assert "kind: ReplicationController" in body["out"]
    assert "paugamo/k8s-ec2-zookeeper" in body["out"]
    assert len(kube.controllers()) == before  # a dry run creates nothing
    # The same job as any other: in the history, with its output.
    job = requests.get(f"{stack.url}/jobs/{body['id']}", timeout=10).json()
    assert job["tool"] == "deploy" and job["args"] == ["--dry-run", "zookeeper.yml", "-p", "3"]
    assert job["state"] == "succeeded"
    listed = requests.get(f"{stack.url}/jobs", params={"tool": "deploy"}, timeout=10).json()
    assert body["id"] in [j["id"] for j in listed["jobs"]]
    assert stack.output(body["id"])["data"] == body["out"]


def test_a_real_deploy_against_the_kubernetes_api(stack: Stack, kube: KubeEmulator) -> None:
    body = answer(shell(stack, "deploy zookeeper.yml -p 3", files={"zookeeper.yml": ZOOKEEPER}))
    assert body["ok"] is True, body["out"]
    assert "100% success" in body["out"] and "3 pod(s)" in body["out"]
    mine = [rc for rc in kube.controllers()
            if rc["metadata"]["labels"].get("ocho.io/job") == body["id"]]
    assert len(mine) == 1 and mine[0]["spec"]["replicas"] == 3


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl binary")
def test_the_original_curl_form_deploys(stack: Stack, kube: KubeEmulator, tmp_path: Path) -> None:
    """Verbatim what the original portal's users ran: no space after the colon, the file
    sent as a part named like it."""
    (tmp_path / "redis.yml").write_bytes(REDIS)
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "120", "-X", "POST", "-H", "X-Shell:deploy redis.yml -p 3",
         "-F", "redis.yml=@redis.yml", f"http://127.0.0.1:{stack.port}/shell"],
        cwd=tmp_path, capture_output=True, timeout=130, check=True)
    body = json.loads(done.stdout)
    assert body["ok"] is True, body["out"]
    assert set(body) >= {"ok", "ms", "out"}
    assert body["ms"] > 0
    mine = [rc for rc in kube.controllers()
            if rc["metadata"]["labels"].get("ocho.io/job") == body["id"]]
    assert len(mine) == 1 and mine[0]["spec"]["replicas"] == 3
    assert mine[0]["spec"]["template"]["spec"]["containers"][0]["image"] == "redis:7.2"


def test_files_are_named_by_their_field_as_the_original_did(stack: Stack,
                                                             tmp_path: Path) -> None:
    local = tmp_path / "build-output-1.2.txt"
    local.write_text("from a differently named local file\n")
    body = curl("-X", "POST", "-H", "X-Shell: cat app.txt", "-F", f"app.txt=@{local}",
                f"{stack.url}/shell")
    assert body["ok"] is True, body["out"]
    assert body["out"] == "from a differently named local file\n"


def test_a_failing_tool_is_ok_false_with_its_output(stack: Stack) -> None:
    body = answer(shell(stack, "exit 3 'it went wrong'"))
    assert body["ok"] is False
    assert body["state"] == "failed" and body["exit_code"] == 3
    assert "it went wrong" in body["out"]


def test_a_tool_that_runs_past_its_timeout(stack: Stack) -> None:
    started = time.monotonic()
    body = answer(shell(stack, "sleep 30", params={"timeout": "1"}, wait=60))
    assert body["ok"] is False and body["state"] == "timed_out"
    assert "pid=" in body["out"]  # what it printed before it was stopped
    assert time.monotonic() - started < 20


def test_the_output_is_capped_with_the_portals_note(stack: Stack) -> None:
    body = answer(shell(stack, "spew 1"))
    assert body["ok"] is True
    assert len(body["out"].encode()) < OUTPUT_CAP + 1024
    assert "truncated" in body["out"].splitlines()[-1]
    job = requests.get(f"{stack.url}/jobs/{body['id']}", timeout=10).json()
    assert job["truncated"] is True


# -- what is not run --------------------------------------------------------------------------


def test_an_unknown_command_answers_like_the_original(stack: Stack) -> None:
    """The original ran `toolset <line>`, which printed the commands and exited 1:
    old scripts read `ok`, so an unknown command is an answer, not an HTTP error."""
    before = requests.get(f"{stack.url}/jobs", params={"limit": 500}, timeout=10).json()
    body = answer(shell(stack, "deploi redis.yml"))
    assert body["ok"] is False
    assert "unknown command 'deploi'" in body["out"]
    assert "deploy" in body["out"] and "grep" in body["out"]
    after = requests.get(f"{stack.url}/jobs", params={"limit": 500}, timeout=10).json()
    assert len(after["jobs"]) == len(before["jobs"])


@pytest.mark.parametrize(("line", "message"), [
    ('cat "unbalanced', "cannot split"),
    ("cat 'x", "cannot split"),
    ("", "empty"),
    (None, "X-Shell"),
])
def test_a_line_that_cannot_be_split_is_a_400(stack: Stack, line: str | None,
                                              message: str) -> None:
    response = shell(stack, line)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["field"] == "X-Shell"
    assert message in error["error"]


def test_bad_uploads_and_parameters_are_400s_naming_the_field(stack: Stack) -> None:
    bad_name = requests.post(f"{stack.url}/shell", headers={"X-Shell": "cat x"},
                             files={".hidden": (".hidden", b"x")}, timeout=10)
    assert bad_name.status_code == 400 and bad_name.json()["field"] == "files..hidden"
    text_field = requests.post(f"{stack.url}/shell", headers={"X-Shell": "cat x"},
                               data={"x": "not a file"}, files={"y": ("y", b"y")}, timeout=10)
    assert text_field.status_code == 400 and text_field.json()["field"] == "x"
    assert "@" in text_field.json()["error"]
    bad_timeout = shell(stack, "cat x", params={"timeout": "soon"})
    assert bad_timeout.status_code == 400 and bad_timeout.json()["field"] == "timeout"


def test_waiting_calls_never_take_every_server_thread(stack: Stack) -> None:
    """Blocking calls share the bounded waiting slots with long-polls: past them, a 503
    that submits nothing, while quick requests are still served."""
    answers: list[requests.Response] = []
    holders = [threading.Thread(target=lambda: answers.append(shell(stack, "sleep 3")))
               for _ in range(SLOTS)]
    for thread in holders:
        thread.start()
    infra.wait_for(lambda: _slots_in_use(stack) == SLOTS, timeout=10, what="slots taken")
    # A call takes its slot before it submits: count jobs once every holder's exists.
    infra.wait_for(lambda: len(requests.get(
        f"{stack.url}/jobs", params={"tool": "sleep", "state": "queued,running"},
        timeout=10).json()["jobs"]) == SLOTS, timeout=10, what="the holders' jobs")
    jobs_before = len(requests.get(f"{stack.url}/jobs", params={"limit": 500},
                                   timeout=10).json()["jobs"])
    refused = shell(stack, "cat nothing", wait=10)
    assert refused.status_code == 503, refused.text
    assert "nothing was submitted" in refused.json()["error"]
    assert requests.get(f"{stack.url}/healthz", timeout=5).status_code == 200
    jobs_after = len(requests.get(f"{stack.url}/jobs", params={"limit": 500},
                                  timeout=10).json()["jobs"])
    assert jobs_after == jobs_before
    for thread in holders:
        thread.join(timeout=30)
    assert [r.json()["ok"] for r in answers] == [True] * SLOTS
    assert _slots_in_use(stack) == 0
    metrics = requests.get(f"{stack.url}/metrics", timeout=10).text
    assert 'ocho_gateway_jobs_rejected_total{reason="unavailable",via="shell"} 1.0' in metrics


def _slots_in_use(stack: Stack) -> int:
    text = requests.get(f"{stack.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("ocho_gateway_waiting_slots_in_use "):
            return int(float(line.split()[1]))
    raise AssertionError(f"no waiting slot gauge in {text}")
