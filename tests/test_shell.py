"""POST /shell, the original Ochopod portal's call, through the whole portal: a real
gateway and worker (processes), RabbitMQ, and the Kubernetes API emulator; called
with requests and with the real curl, the way old scripts call it."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
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
])
def test_a_line_that_cannot_be_split_is_answered_as_the_original_did(
        stack: Stack, line: str | None, message: str) -> None:
    """The original ran whatever came and answered 200 with ok false: so does this one,
    with the reason in `out` (and `error`/`field`, as every error answer has)."""
    body = answer(shell(stack, line))
    assert body["ok"] is False and message in body["out"]
    assert body["field"] == "X-Shell" and message in body["error"]
    assert "id" not in body  # nothing was submitted


def test_bad_uploads_and_parameters_are_400s_in_the_originals_shape(stack: Stack) -> None:
    bad_name = requests.post(f"{stack.url}/shell", headers={"X-Shell": "cat x"},
                             files={".hidden": (".hidden", b"x")}, timeout=10)
    assert bad_name.status_code == 400 and bad_name.json()["field"] == "files..hidden"
    bad_timeout = shell(stack, "cat x", params={"timeout": "soon"})
    assert bad_timeout.status_code == 400 and bad_timeout.json()["field"] == "timeout"
    json_body = requests.post(f"{stack.url}/shell", headers={"X-Shell": "cat x"},
                              json={"x": 1}, timeout=10)
    assert json_body.status_code == 415
    no_line = shell(stack, None)
    assert no_line.status_code == 400 and no_line.json()["field"] == "X-Shell"
    for response in (bad_name, bad_timeout, json_body, no_line):
        body = response.json()
        assert body["ok"] is False and isinstance(body["ms"], int)
        assert body["out"] == body["error"] + "\n"


def test_text_fields_and_url_encoded_bodies_are_ignored_as_the_original_did(
        stack: Stack) -> None:
    text_field = requests.post(f"{stack.url}/shell", headers={"X-Shell": "cat y"},
                               data={"x": "not a file"}, files={"y": ("y", b"why\n")},
                               timeout=30)
    assert answer(text_field)["out"] == "why\n"
    encoded = requests.post(f"{stack.url}/shell", headers={"X-Shell": "args a b"},
                            data={"line": "ignored"}, timeout=30)
    body = answer(encoded)
    assert body["ok"] is True and "ignored" not in body["out"]


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
    assert refused.json()["out"] == refused.json()["error"] + "\n"
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


# -- the original ochonetes CLI ---------------------------------------------------------------

ORIGINAL_CLI = ROOT / "tests" / "clients" / "original_cli.py"
TOKEN = "original-cli-cannot-send-this-token-0123"


def _python2() -> list[str]:
    """Python 2.7 as the original ran on, when this machine has it; else Python 3 (the
    client is written for both)."""
    env = {**os.environ, "PYENV_VERSION": os.environ.get("PYENV_VERSION", "2.7.18")}
    python2 = shutil.which("python2")
    if python2:
        probe = subprocess.run([python2, "-c", "import sys; sys.exit(sys.version_info[0] != 2)"],
                               env=env, capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [python2]
    return [sys.executable]


def original_cli(proxy: str, lines: list[str], cwd: Path, timeout: float = 120) -> str:
    """Type `lines` into the original CLI, wait for each answer, then Ctrl-C (its only way
    out); what it printed. It must not crash."""
    env = {**os.environ, "PYENV_VERSION": os.environ.get("PYENV_VERSION", "2.7.18"),
           "PYTHONIOENCODING": "utf-8"}  # a UTF-8 terminal, as its users had
    proc = subprocess.Popen([*_python2(), "-u", str(ORIGINAL_CLI), proxy], cwd=cwd, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("".join(line + "\n" for line in lines).encode())
    proc.stdin.flush()
    prompt, out = f"{proxy} > ".encode(), b""
    deadline = time.monotonic() + timeout
    try:
        # One prompt at the start, one more after each answer.
        while out.count(prompt) <= len(lines) and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
            if ready and not chunk:
                break
            out += chunk
        proc.send_signal(signal.SIGINT)
        rest, errors = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = (out + rest).decode()
    assert proc.returncode == 0 and "internal failure" not in text, (text, errors)
    assert text.count(prompt.decode()) == len(lines) + 1, text
    return text


def test_the_original_cli_prints_every_answer(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "zookeeper.yml").write_bytes(ZOOKEEPER)
    out = original_cli(f"127.0.0.1:{stack.port}", [
        "help", "deploy --dry-run zookeeper.yml -p 3", "deploi zookeeper.yml", "grep 'zoo",
        "deploy --dry-run -d zookeeper.yml"], tmp_path)
    assert "available commands:" in out and "ReplicationController" in out
    assert out.count("kind: ReplicationController") == 2  # both deploys, -d accepted
    assert "unknown command 'deploi'" in out
    assert "cannot split the command line" in out


def test_the_original_cli_when_the_slots_are_full(stack: Stack, tmp_path: Path) -> None:
    holders = [threading.Thread(target=lambda: shell(stack, "sleep 3")) for _ in range(SLOTS)]
    for thread in holders:
        thread.start()
    infra.wait_for(lambda: _slots_in_use(stack) == SLOTS, timeout=10, what="slots taken")
    out = original_cli(f"127.0.0.1:{stack.port}", ["cat nothing"], tmp_path)
    for thread in holders:
        thread.join(timeout=30)
    assert "too many calls are waiting on this gateway" in out


def test_the_original_cli_against_tokens_and_caps(tmp_path: Path, fresh_amqp_url: str) -> None:
    """It can send no token and knows no caps: it prints why, and goes on."""
    (tmp_path / "big.txt").write_bytes(b"x" * 5000)
    # A vhost of its own: a second recorder must not take the module stack's events.
    gateway = Stack(tmp_path, fresh_amqp_url, tokens=TOKEN, max_request_bytes=2000)
    gateway.start_gateway()
    try:
        out = original_cli(f"127.0.0.1:{gateway.port}", ["help", "cat big.txt"], tmp_path)
    finally:
        gateway.stop()
    assert "a token is required" in out
    assert "larger than the limit of 2000 bytes" in out


def test_deploy_without_a_definition_deploys_every_upload(stack: Stack) -> None:
    body = answer(shell(stack, "deploy --dry-run -p 2",
                        files={"zookeeper.yml": ZOOKEEPER, "redis.yaml": REDIS}))
    assert body["ok"] is True, body["out"]
    assert body["out"].count("kind: ReplicationController") == 2
    assert "paugamo/k8s-ec2-zookeeper" in body["out"] and "redis:7.2" in body["out"]
    none = answer(shell(stack, "deploy --dry-run"))
    assert none["ok"] is False and "no DEFINITION given" in none["out"]
