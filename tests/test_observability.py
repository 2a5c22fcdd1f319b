"""What an operator watches, on a live gateway and worker: both /metrics endpoints as
Prometheus scrapes them, the access log and the JSON log lines, and retention
deleting a finished job while the portal runs."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ocho import logs
from ocho.settings import Settings
from tests.infra import Stack, free_port, wait_for

TOKEN = "observability-test-token-0123456789"
SECRET = "query-secret-never-logged"
HELLO = '''"""hello [NAME...]: say hello (a test tool)."""
import sys
print("hello", *sys.argv[1:])
'''
SAMPLE = re.compile(r'^([a-z_]+)(\{[a-z_]+="[^"\\]*"(,[a-z_]+="[^"\\]*")*\})? (-?[0-9.e+]+|NaN)$')


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("observability")
    tools = workdir / "tools"
    tools.mkdir()
    (tools / "hello.py").write_text(HELLO)
    stack = Stack(workdir, amqp_url, tools_dir=tools, tokens=TOKEN, log_format="json",
                  retention="5s")
    stack.metrics_port = free_port()  # type: ignore[attr-defined]
    stack.start_gateway()
    stack.start_worker(OCHO_METRICS_BIND=f"127.0.0.1:{stack.metrics_port}")  # type: ignore
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def http() -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    return session


def scrape(url: str, http: Any = requests) -> dict[str, float]:
    """Samples by name and labels (as exposed), checking the text format as Prometheus reads
    it: a TYPE for every family before its samples."""
    response = http.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, float] = {}
    declared: set[str] = set()
    for line in response.text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
        elif line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, line
            family = match.group(1)
            assert any(family == d or family.startswith(f"{d}_") for d in declared), line
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def run_hello(stack: Stack, http: requests.Session) -> str:
    response = http.post(f"{stack.url}/jobs", json={"tool": "hello", "args": ["you"]},
                         timeout=30)
    assert response.status_code == 202, response.text
    job_id = str(response.json()["id"])
    done = http.get(f"{stack.url}/jobs/{job_id}", params={"wait": 30}, timeout=40).json()
    assert done["state"] == "succeeded", done
    return job_id


def json_lines(stack: Stack, log_name: str) -> list[dict[str, Any]]:
    """Every line of the log, each of which must be one JSON object."""
    entries = []
    for line in stack.read_log(log_name).splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


def test_the_gateway_exposes_its_metrics_and_the_process_collectors(
        stack: Stack, http: requests.Session) -> None:
    run_hello(stack, http)
    samples = scrape(f"{stack.url}/metrics", http)
    assert samples['ocho_gateway_jobs_accepted_total{via="jobs"}'] >= 1
    assert samples['ocho_gateway_broker_connected{connection="recorder"}'] == 1
    assert samples["ocho_gateway_waiting_slots_in_use"] == 0
    assert samples["process_resident_memory_bytes"] > 0
    assert any(name.startswith("python_info{") for name in samples)


def test_a_worker_exposes_its_jobs_slots_and_reconnects(stack: Stack, http: requests.Session,
                                                        amqp_url: str) -> None:
    url = f"http://127.0.0.1:{stack.metrics_port}/metrics"  # type: ignore[attr-defined]
    before = scrape(url)
    run_hello(stack, http)
    after = scrape(url)

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert grew('ocho_worker_jobs_started_total{tool="hello"}') == 1
    assert grew('ocho_worker_jobs_finished_total{state="succeeded",tool="hello"}') == 1
    assert grew('ocho_worker_job_duration_seconds_count{tool="hello"}') == 1
    assert after["ocho_worker_busy_slots"] == 0
    assert after["ocho_worker_slots"] == 2
    assert after["ocho_worker_broker_connected"] == 1
    assert after["ocho_worker_reconnects_total"] == 0
    assert after["process_open_fds"] > 0

    close_worker_connection(amqp_url.rsplit("/", 1)[1])
    wait_for(lambda: scrape(url)["ocho_worker_reconnects_total"] == 1, timeout=30,
             what="the worker to count its reconnect")
    wait_for(lambda: scrape(url)["ocho_worker_broker_connected"] == 1, timeout=30,
             what="the worker to be connected again")


def close_worker_connection(vhost: str) -> None:
    """Close the worker's connection from the broker's side (this test's vhost only)."""
    listing = subprocess.run(["rabbitmqctl", "-q", "list_connections", "vhost", "pid",
                              "client_properties"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    pids = [line.split("\t")[1] for line in listing.splitlines()
            if line.startswith(f"{vhost}\t") and '"ocho-worker ' in line
            and " setup" not in line]
    assert len(pids) == 1, listing
    subprocess.run(["rabbitmqctl", "-q", "close_connection", pids[0], "closed by a test"],
                   check=True, capture_output=True, timeout=60)


def test_every_request_is_one_access_log_line_without_secrets(
        stack: Stack, http: requests.Session) -> None:
    job_id = run_hello(stack, http)
    http.get(f"{stack.url}/jobs/{job_id}/output", params={"offset": 0, "sig": SECRET},
             timeout=10)
    requests.get(f"{stack.url}/jobs", timeout=10)  # no token: a 401, logged too

    def access() -> list[dict[str, Any]]:
        return [e for e in json_lines(stack, "gateway.log") if e["logger"] == "ocho.access"]

    wait_for(lambda: any(e["path"] == "/jobs" and e["status"] == 401 for e in access()),
             timeout=10, what="the 401 in the access log")
    entries = access()
    submitted = [e for e in entries if e["method"] == "POST" and e["job_id"] == job_id]
    assert [(e["path"], e["status"]) for e in submitted] == [("/jobs", 202)]
    read = [e for e in entries if e["path"] == f"/jobs/{job_id}/output"]
    assert [(e["method"], e["status"], e["job_id"]) for e in read] == [("GET", 200, job_id)]
    for entry in entries:
        assert isinstance(entry["ms"], float) and entry["ms"] >= 0
        assert entry["client"] == "127.0.0.1"
        assert entry["message"].startswith(f"{entry['method']} {entry['path']} "
                                           f"{entry['status']} ")
    everything = stack.read_log("gateway.log") + stack.read_log("worker0.log")
    assert TOKEN not in everything and SECRET not in everything


def test_json_logs_are_one_object_a_line_with_the_job_id(stack: Stack,
                                                          http: requests.Session) -> None:
    job_id = run_hello(stack, http)
    wait_for(lambda: any(e.get("job_id") == job_id and "succeeded" in e["message"]
                         for e in json_lines(stack, "worker0.log")),
             timeout=10, what="the worker's finished line, with its job_id field")
    for name in ("gateway.log", "worker0.log"):
        entries = json_lines(stack, name)
        assert entries, name
        for entry in entries:
            assert {"ts", "level", "logger", "message"} <= set(entry)
            assert entry["ts"].endswith("Z")


def test_retention_deletes_a_finished_job_while_the_portal_runs(
        stack: Stack, http: requests.Session) -> None:
    job_id = run_hello(stack, http)
    wait_for(lambda: http.get(f"{stack.url}/jobs/{job_id}", timeout=10).status_code == 404,
             timeout=20, what="retention (5 s) to delete the job")
    assert scrape(f"{stack.url}/metrics", http)["ocho_gateway_retention_deleted_jobs_total"] >= 1


def test_text_logs_keep_a_traceback_with_its_event(tmp_path: Path) -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure(Settings(log_format="text", log_level="info"), stream=out)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("ocho.test").exception("job %s failed", "j-1")
        logging.getLogger("ocho.test").debug("not at info")
    finally:
        root.handlers[:], root.level = saved
    lines = out.getvalue().splitlines()
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR ocho.test: job j-1 failed$",
                    lines[0]), lines
    assert lines[-1] == "ValueError: boom"
    assert "not at info" not in out.getvalue()
    time.sleep(0)  # nothing else: configure leaves no thread behind


def test_a_taken_metrics_port_or_a_bad_setting_is_one_line_and_status_2(tmp_path: Path) -> None:
    import os
    import socket
    import sys

    bin_dir = Path(sys.executable).parent
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            ("ocho-worker", {"OCHO_METRICS_BIND": f"127.0.0.1:{port}"},
             f"ocho-worker: OCHO_METRICS_BIND=127.0.0.1:{port}: cannot listen there"),
            ("ocho-worker", {"OCHO_METRICS_BIND": "9101"}, "ocho-worker: OCHO_METRICS_BIND="),
            ("ocho-gateway", {"OCHO_RETENTION": "forever"}, "ocho-gateway: OCHO_RETENTION="),
            ("ocho-gateway", {"OCHO_LOG_FORMAT": "xml"}, "ocho-gateway: OCHO_LOG_FORMAT="),
        ]
        for program, env, expected in cases:
            done = subprocess.run([str(bin_dir / program)], cwd=tmp_path, capture_output=True,
                                  text=True, timeout=60, env={**os.environ, **env})
            assert done.returncode == 2, (program, env, done.stderr)
            assert done.stderr.startswith(expected), done.stderr
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
