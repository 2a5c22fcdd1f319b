"""The worker as another service sees it: requests on ocho.jobs, events on its
reply queue. Real RabbitMQ, real worker processes, real tool processes."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pika
import pytest

from ocho.client import Client
from tests.infra import BOTH_STARTS, Stack, processes_in_group, wait_for


@pytest.fixture
def stack(tmp_path: Path, fresh_amqp_url: str, tools_dir: Path, tool_start: str):
    stack = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir, kill_grace=1,
                  tool_start=tool_start)
    yield stack
    stack.stop()


@pytest.fixture
def client(stack: Stack):
    with Client(stack.env["OCHO_AMQP_URL"]) as client:
        yield client


def group_of(output: str) -> int:
    match = re.search(r"pgid=(\d+)", output)
    assert match, output
    return int(match.group(1))


def test_tool_reads_uploaded_file_and_events_carry_correlation(stack: Stack, client: Client):
    stack.start_worker()
    job_id = client.submit("cat", ["notes.txt"], files={"notes.txt": b"hello from a file\n"})
    result = client.wait(job_id, timeout=30)
    assert result.state == "succeeded"
    assert result.exit_code == 0
    assert result.output == "hello from a file\n"
    # Done within the output flush interval: one `finished` event carries it all,
    # and the client hands its output on as an `output` event.
    output, finished = result.events
    assert finished["output"] == [{"stream": "stdout", "offset": 0,
                                   "data": "hello from a file\n"}]
    assert output == {"type": "output", "id": job_id, "attempt": 1, **finished["output"][0]}


def test_non_zero_exit_fails_with_its_code(stack: Stack, client: Client):
    stack.start_worker()
    result = client.wait(client.submit("exit", ["7", "bad things"]), timeout=30)
    assert (result.state, result.exit_code) == ("failed", 7)
    assert "bad things" in result.output


@BOTH_STARTS
def test_timeout_kills_the_whole_process_group(stack: Stack, client: Client):
    stack.start_worker()
    result = client.wait(client.submit("sleep", ["60", "2"], timeout=1), timeout=30)
    assert result.state == "timed_out"
    pgid = group_of(result.output)
    assert processes_in_group(pgid) == []


def test_huge_output_is_capped_and_says_so(stack: Stack, client: Client):
    stack.start_worker()
    result = client.wait(client.submit("spew", ["50"]), timeout=120)
    assert result.state == "succeeded"
    assert result.truncated is True
    cap = 4 * 1024 * 1024
    assert len(result.output.encode()) <= cap
    assert "output truncated" in result.output.splitlines()[-1]
    assert result.events[-1]["output_bytes"] == 50 * 1024 * 1024


def test_long_job_keeps_heartbeats_and_runs_once(tmp_path: Path, fresh_amqp_url: str,
                                                 tools_dir: Path):
    stack = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir, heartbeat=2)
    try:
        stack.start_worker()
        with Client(fresh_amqp_url) as client:
            # Three times the heartbeat interval, and then some.
            result = client.wait(client.submit("sleep", ["7"]), timeout=60)
        assert result.state == "succeeded"
        assert result.attempt == 1
        assert [e["type"] for e in result.events].count("started") == 1
        assert "broker connection lost" not in stack.read_log("worker0.log")
    finally:
        stack.stop()


def test_jobs_spread_over_two_workers(stack: Stack, client: Client):
    stack.start_worker(concurrency=2)
    stack.start_worker(concurrency=2)
    ids = [client.submit("sleep", ["0.3"]) for _ in range(20)]
    results = [client.wait(job_id, timeout=60) for job_id in ids]
    assert all(r.state == "succeeded" for r in results)
    workers = {r.events[-1]["worker"] for r in results}
    assert len(workers) == 2


def test_unknown_tool_is_rejected_and_dead_lettered(stack: Stack, client: Client):
    stack.start_worker()
    result = client.wait(client.submit("no-such-tool"), timeout=30)
    assert result.state == "rejected"
    assert "unknown tool" in result.reason
    connection = pika.BlockingConnection(pika.URLParameters(stack.env["OCHO_AMQP_URL"]))
    channel = connection.channel()
    method, properties, _ = wait_for(lambda: _get(channel, "ocho.dead"), what="dead letter")
    assert properties.message_id == result.id
    connection.close()


def test_malformed_message_is_dead_lettered_and_next_job_runs(stack: Stack, client: Client):
    stack.start_worker()
    connection = pika.BlockingConnection(pika.URLParameters(stack.env["OCHO_AMQP_URL"]))
    channel = connection.channel()
    channel.basic_publish("ocho.jobs", "cat", b"{not json", pika.BasicProperties(delivery_mode=2))
    dead = wait_for(lambda: _get(channel, "ocho.dead"), what="dead letter")
    assert dead[2] == b"{not json"
    result = client.wait(client.submit("exit", ["0"]), timeout=30)
    assert result.state == "succeeded"
    connection.close()


@BOTH_STARTS
def test_cancel_kills_a_running_job_within_two_seconds(stack: Stack, client: Client):
    stack.start_worker()
    job_id = client.submit("sleep", ["60", "1"])
    events = client.events(job_id, timeout=60)
    output = ""
    for event in events:
        if event["type"] == "output":
            output += event["data"]
            if "pgid=" in output:
                break
    pgid = group_of(output)
    cancelled_at = time.monotonic()
    client.cancel(job_id)
    finished = [e for e in events if e["type"] == "finished"][-1]
    assert finished["state"] == "cancelled"
    wait_for(lambda: processes_in_group(pgid) == [], timeout=2, what="tool processes to die")
    assert time.monotonic() - cancelled_at < 2.5


def test_cancelled_before_it_runs_never_runs(stack: Stack, client: Client):
    job_id = client.submit("sleep", ["30"])
    client.cancel(job_id)
    stack.start_worker()  # starts after the cancel was sent
    result = client.wait(job_id, timeout=30)
    assert result.state == "cancelled"
    assert not [e for e in result.events if e["type"] == "started"]


@BOTH_STARTS
def test_killed_worker_job_is_redelivered_as_attempt_two(stack: Stack, client: Client):
    first = stack.start_worker(concurrency=1)
    job_id = client.submit("sleep", ["2", "1"])
    output = ""
    for event in client.events(job_id, timeout=30):
        if event["type"] == "output":
            output += event["data"]
            if "pgid=" in output:
                break
    pgid = group_of(output)
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_for(lambda: processes_in_group(pgid) == [], timeout=5,
             what="the first attempt's processes to die with their worker")
    stack.start_worker(concurrency=1)
    result = client.wait(job_id, timeout=60)
    assert result.state == "succeeded"
    assert result.attempt == 2
    # The next worker sweeps away the process-count cgroup the killed one left.
    assert not Path(f"/sys/fs/cgroup/pids/ocho-worker-{first.pid}").exists()


def test_tool_sees_only_allow_listed_environment(stack: Stack, client: Client):
    stack.start_worker()
    result = client.wait(client.submit("env"), timeout=30)
    seen = dict(line.split("=", 1) for line in result.output.splitlines())
    assert seen["OCHO_JOB_ID"] == result.id
    assert seen["OCHO_ATTEMPT"] == "1"
    for secret in ("OCHO_AMQP_URL", "OCHO_DATABASE_URL", "OCHO_TOKENS"):
        assert secret not in seen
    assert os.path.basename(seen["HOME"]).startswith("ocho-")


def _get(channel, queue: str):
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    return (method, properties, body) if method else None


@BOTH_STARTS
@pytest.mark.parametrize("kind", ["memory", "fork"])
def test_runaway_tool_is_stopped_by_its_limits(tmp_path: Path, fresh_amqp_url: str,
                                               tools_dir: Path, kind: str, tool_start: str):
    stack = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir,
                  tool_memory_bytes=512 * 1024**2, tool_max_processes=32, tool_start=tool_start)
    try:
        stack.start_worker()
        with Client(fresh_amqp_url) as client:
            result = client.wait(client.submit("hog", [kind], timeout=60), timeout=90)
            assert result.state == "failed", result.output
            assert ("MemoryError" if kind == "memory" else "BlockingIOError") in result.output
            assert result.ms < 30_000
            assert processes_in_group(group_of(result.output)) == []
            # The worker is unharmed and takes the next job.
            assert client.wait(client.submit("exit", ["0"]), timeout=30).state == "succeeded"
    finally:
        stack.stop()
