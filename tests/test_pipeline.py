"""The job pipeline end to end, as an HTTP client sees it: POST /jobs →
RabbitMQ → a worker process → the tool → events → the gateway's store."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.infra import Stack, processes_in_group, wait_for


@pytest.fixture(scope="module", params=["warm", "cold"])
def tool_start(request: pytest.FixtureRequest) -> str:
    """Every test on the module's stack runs with each way tools start."""
    return request.param


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, amqp_url: str, tool_start: str):
    workdir = tmp_path_factory.mktemp("pipeline")
    tools = workdir / "tools"
    from tests.infra import clone_tools_dir

    clone_tools_dir(tools)
    stack = Stack(workdir, amqp_url, tools_dir=tools, kill_grace=1, tool_start=tool_start)
    stack.start_gateway()
    stack.start_worker(concurrency=2)
    stack.start_worker(concurrency=2)
    yield stack
    stack.stop()


def test_a_tool_reads_an_uploaded_file(stack: Stack):
    job = stack.submit("cat", ["a.yml", "b.txt"],
                       files={"a.yml": b"cluster: zookeeper\n", "b.txt": "naïve\n".encode()})
    done = stack.wait(job["id"], timeout=30)
    assert (done["state"], done["exit_code"]) == ("succeeded", 0)
    assert stack.output(job["id"])["data"] == "cluster: zookeeper\nnaïve\n"


def test_a_non_zero_exit_is_failed_with_its_code(stack: Stack):
    job = stack.submit("exit", ["3", "no such cluster"])
    done = stack.wait(job["id"], timeout=30)
    assert (done["state"], done["exit_code"]) == ("failed", 3)
    assert "no such cluster" in stack.output(job["id"])["data"]


def test_a_timeout_kills_every_process_of_the_tool(stack: Stack):
    job = stack.submit("sleep", ["60", "3"], timeout=1)
    done = stack.wait(job["id"], timeout=30)
    assert done["state"] == "timed_out"
    assert "time limit" in done["reason"]
    output = stack.output(job["id"])["data"]
    pgid = int(re.search(r"pgid=(\d+)", output).group(1))
    children = [int(pid) for pid in re.search(r"children=([\d,]+)", output).group(1).split(",")]
    assert processes_in_group(pgid) == []
    for child in children:
        assert not Path(f"/proc/{child}").exists() or \
            Path(f"/proc/{child}/stat").read_text().split(")")[1].split()[0] == "Z"


def test_50_mb_of_output_is_truncated_and_the_gateway_stays_responsive(stack: Stack):
    job = stack.submit("spew", ["50"])
    slowest = 0.0
    while stack.wait(job["id"], 0)["state"] in ("queued", "running"):
        started = time.monotonic()
        assert requests.get(f"{stack.url}/healthz", timeout=5).status_code == 200
        requests.get(f"{stack.url}/jobs", params={"limit": 5}, timeout=5).raise_for_status()
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    done = stack.wait(job["id"], timeout=60)
    assert done["state"] == "succeeded"
    assert done["truncated"] is True
    assert done["output_bytes"] == 50 * 1024 * 1024
    assert slowest < 1.0
    tail = stack.output(job["id"], offset=4 * 1024 * 1024 - 1024)
    assert tail["finished"] is True and tail["truncated"] is True
    assert "output truncated" in tail["data"]


def test_output_is_readable_before_the_job_finishes(stack: Stack):
    job = stack.submit("sleep", ["3"])
    first = wait_for(lambda: (out := stack.output(job["id"]))["data"] and out, timeout=10,
                     what="the first output")
    assert first["finished"] is False
    assert "pid=" in first["data"]
    assert stack.wait(job["id"], 0)["state"] == "running"
    rest = stack.output(job["id"], offset=first["next_offset"])
    assert rest["offset"] == first["next_offset"]
    done = stack.wait(job["id"], timeout=30)
    assert done["state"] == "succeeded"
    assert stack.output(job["id"])["data"].endswith("done\n")


def test_a_job_three_heartbeats_long_runs_once(tmp_path: Path, fresh_amqp_url: str,
                                               tools_dir: Path):
    stack = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir, heartbeat=2)
    try:
        stack.start_gateway()
        stack.start_worker(concurrency=1)
        job = stack.submit("sleep", ["7"])
        done = stack.wait(job["id"], timeout=60)
        assert (done["state"], done["attempt"]) == ("succeeded", 1)
        assert stack.output(job["id"])["data"].count("pid=") == 1
    finally:
        stack.stop()


def test_twenty_jobs_are_spread_over_both_workers(stack: Stack):
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(stack.submit("sleep", ["0.5"])["id"]))
               for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    jobs = [stack.wait(job_id, timeout=60) for job_id in ids]
    assert [j["state"] for j in jobs] == ["succeeded"] * 20
    assert len({j["worker"] for j in jobs}) == 2


def test_output_as_plain_text_for_curl(stack: Stack):
    job = stack.submit("cat", ["notes.txt"], files={"notes.txt": "naïve\nline two\n".encode()})
    stack.wait(job["id"], timeout=30)
    url = f"{stack.url}/jobs/{job['id']}/output"
    whole = requests.get(url, params={"format": "text"}, timeout=10)
    assert whole.status_code == 200
    assert whole.headers["Content-Type"].startswith("text/plain")
    assert whole.content == "naïve\nline two\n".encode()
    assert whole.headers["Ocho-Finished"] == "true"
    assert whole.headers["Ocho-State"] == "succeeded"
    assert int(whole.headers["Ocho-Next-Offset"]) == len(whole.content)
    tail = requests.get(url, params={"format": "text", "offset": 7}, timeout=10)
    assert tail.text == "line two\n"
    assert tail.headers["Ocho-Offset"] == "7"
    refused = requests.get(url, params={"format": "xml"}, timeout=10)
    assert refused.status_code == 400
    assert refused.json()["field"] == "format"
