"""The fault suite: crashes, restarts and poison messages, against a real
broker and real processes. Every job must end in a terminal state, none lost,
none stuck.

The broker here is a RabbitMQ node of this module's own (tests/private_broker.py),
started once for the module; each test gets a fresh vhost on it. Tests stop and
start *that* node; the machine's shared broker is never touched, which the last
test checks."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import requests

from tests.infra import Stack, processes_in_group, wait_for
from tests.private_broker import (
    PrivateBroker,
    open_shared_connection,
    private_broker,
    shared_broker_uptime_ms,
)

TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "rejected"}


@pytest.fixture(scope="module")
def shared_broker_watch(amqp_url: str) -> Iterator[tuple[float, int, pika.BlockingConnection]]:
    """Opened before any fault test: the shared node's uptime and an idle connection
    to it, both checked by the module's last test."""
    connection = open_shared_connection(amqp_url)
    uptime = shared_broker_uptime_ms()
    yield time.monotonic(), uptime, connection
    if connection.is_open:
        connection.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory,
         shared_broker_watch: object) -> Iterator[PrivateBroker]:
    """The RabbitMQ node these tests may stop: started once, its start-up costs seconds."""
    with private_broker(tmp_path_factory.mktemp("rabbitmq")) as started:
        yield started


@pytest.fixture
def stack(tmp_path: Path, node: PrivateBroker, tools_dir: Path):
    stack = Stack(tmp_path, node.create_vhost(), tools_dir=tools_dir, kill_grace=1,
                  delivery_limit=3)
    yield stack
    stack.stop()


def output_text(stack: Stack, job_id: str) -> str:
    return stack.output(job_id)["data"]


def wait_for_output(stack: Stack, job_id: str, needle: str, timeout: float = 30) -> str:
    return wait_for(lambda: needle in output_text(stack, job_id) and output_text(stack, job_id),
                    timeout=timeout, what=f"{needle!r} in the output of {job_id}")


def pgid_in(text: str) -> int:
    return int(text.split("pgid=", 1)[1].split()[0])


def all_jobs(stack: Stack) -> list[dict]:
    jobs, cursor = [], None
    while True:
        params = {"limit": 500, **({"before": cursor} if cursor else {})}
        page = requests.get(f"{stack.url}/jobs", params=params, timeout=30).json()
        jobs.extend(page["jobs"])
        cursor = page.get("next")
        if not cursor:
            return jobs


def wait_all_terminal(stack: Stack, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = {job["id"]: job for job in all_jobs(stack)}
        missing = [i for i in ids if i not in jobs]
        live = [i for i in ids if i in jobs and jobs[i]["state"] not in TERMINAL]
        if not missing and not live:
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} jobs missing, {len(live)} not terminal, e.g. "
                                 f"{(missing + live)[:3]}\n{stack.logs()}")
        time.sleep(0.5)


@pytest.fixture
def restore_broker(node: PrivateBroker) -> Iterator[None]:
    yield
    node.start_app()  # a no-op if the test started it again itself


def test_sigkill_worker_mid_job_redelivers_to_another(stack: Stack):
    stack.start_gateway()
    first = stack.start_worker(concurrency=1)
    job = stack.submit("sleep", ["2", "1"])
    pgid = pgid_in(wait_for_output(stack, job["id"], "pgid="))
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_for(lambda: processes_in_group(pgid) == [], timeout=5,
             what="the first attempt's processes to die")
    stack.start_worker(concurrency=1)
    done = stack.wait(job["id"], timeout=60)
    assert done["state"] == "succeeded", done
    assert done["attempt"] == 2
    assert "pgid=" in output_text(stack, job["id"])
    assert processes_in_group(pgid) == []


def test_sigterm_worker_mid_job_loses_nothing(stack: Stack):
    stack.start_gateway()
    worker = stack.start_worker(concurrency=2, OCHO_SHUTDOWN_GRACE="1")
    # Two that outlive the grace period, one short one; four more wait queued.
    ids = [stack.submit("sleep", [seconds])["id"] for seconds in ("5", "5", "0.2", "0.2",
                                                                 "0.2", "0.2", "0.2")]
    wait_for(lambda: sum(stack.wait(i, 0)["state"] == "running" for i in ids) >= 1,
             what="a running job")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    stack.start_worker(concurrency=2)
    jobs = wait_all_terminal(stack, ids, timeout=60)
    assert [jobs[i]["state"] for i in ids] == ["succeeded"] * len(ids)


def test_broker_restart_with_200_jobs_loses_none(stack: Stack, node: PrivateBroker,
                                                 restore_broker: None):
    stack.start_gateway()
    stack.start_worker(concurrency=2)
    stack.start_worker(concurrency=2)
    ids = [stack.submit("sleep", ["0.05"])["id"] for _ in range(200)]
    wait_for(lambda: any(stack.wait(i, 0)["state"] != "queued" for i in ids[:20]),
             what="jobs to start")
    node.stop_app()
    time.sleep(2)
    node.start_app()
    jobs = wait_all_terminal(stack, ids, timeout=240)
    assert len([j for j in all_jobs(stack) if j["id"] in set(ids)]) == 200
    states = [jobs[i]["state"] for i in ids]
    assert states.count("succeeded") == 200, {s: states.count(s) for s in set(states)}


def test_gateway_restart_records_events_that_waited(stack: Stack):
    stack.start_gateway()
    stack.start_worker(concurrency=2)
    job = stack.submit("sleep", ["2"])
    wait_for(lambda: stack.wait(job["id"], 0)["state"] == "running", what="job to run")
    assert stack.gateway is not None
    stack.gateway.send_signal(signal.SIGTERM)
    stack.gateway.wait(timeout=30)
    time.sleep(3)  # the job finishes while no gateway runs
    stack.start_gateway()
    done = stack.wait(job["id"], timeout=30)
    assert done["state"] == "succeeded"
    assert "done" in output_text(stack, job["id"])


def test_broker_down_gives_503_then_recovers(stack: Stack, node: PrivateBroker,
                                            restore_broker: None):
    stack.start_gateway()
    stack.start_worker()
    node.stop_app()
    response = requests.post(f"{stack.url}/jobs", json={"tool": "exit", "args": ["0"]},
                             timeout=30)
    assert response.status_code == 503
    assert "broker" in response.json()["error"].lower() or "rabbitmq" in response.text.lower()
    node.start_app()

    def accepted() -> dict | None:
        r = requests.post(f"{stack.url}/jobs", json={"tool": "exit", "args": ["0"]}, timeout=30)
        return r.json() if r.status_code == 202 else None

    job = wait_for(accepted, timeout=60, interval=0.5, what="a 202 after the broker returned")
    assert stack.wait(job["id"], timeout=60)["state"] == "succeeded"


def test_malformed_message_is_dead_lettered_and_queue_keeps_flowing(stack: Stack):
    stack.start_gateway()
    stack.start_worker()
    bad_id = str(uuid.uuid4())
    connection = pika.BlockingConnection(pika.URLParameters(stack.env["OCHO_AMQP_URL"]))
    channel = connection.channel()
    channel.basic_publish("ocho.jobs", "cat", b'{"id": "' + bad_id.encode() + b'", "args": 5}',
                          pika.BasicProperties(message_id=bad_id, delivery_mode=2))
    connection.close()
    rejected = stack.wait(bad_id, timeout=30)
    assert rejected["state"] == "rejected"
    assert rejected["reason"]
    good = stack.submit("exit", ["0"])
    assert stack.wait(good["id"], timeout=30)["state"] == "succeeded"


def test_job_that_kills_its_worker_every_time_ends_rejected(stack: Stack):
    stack.start_gateway()
    job = stack.submit("crash")
    deadline = time.monotonic() + 90
    workers_killed = 0
    while stack.wait(job["id"], 0)["state"] not in TERMINAL:
        assert time.monotonic() < deadline, stack.logs()
        worker = stack.start_worker(concurrency=1, wait_ready=False)
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            break
        workers_killed += worker.returncode == -signal.SIGKILL
    done = stack.wait(job["id"], timeout=30)
    assert done["state"] == "rejected", done
    # Stopped by the worker's own count of its starts (each redelivery's `started` is
    # sent before the tool runs), not by the broker's safety net after 10x as many.
    assert done["reason"] == ("started 3 times without finishing (OCHO_DELIVERY_LIMIT); "
                              "not run again"), done
    assert workers_killed <= 4, (workers_killed, stack.logs())
    stack.start_worker()
    assert stack.wait(stack.submit("exit", ["0"])["id"], timeout=30)["state"] == "succeeded"


def test_duplicate_and_out_of_order_events_leave_state_correct(stack: Stack):
    stack.start_gateway()
    job_id = str(uuid.uuid4())
    now = time.time()
    started = {"type": "started", "id": job_id, "tool": "exit", "attempt": 1,
               "worker": "test", "ts": now}
    out = {"type": "output", "id": job_id, "attempt": 1, "stream": "stdout", "offset": 0,
           "data": "hello\n"}
    finished = {"type": "finished", "id": job_id, "tool": "exit", "attempt": 1,
                "state": "succeeded", "exit_code": 0, "ms": 5, "truncated": False,
                "output_bytes": 6, "reason": None, "ts": now + 1}
    connection = pika.BlockingConnection(pika.URLParameters(stack.env["OCHO_AMQP_URL"]))
    channel = connection.channel()
    for event in (finished, out, started, out, started, finished):
        channel.basic_publish("ocho.events", f"job.{event['type']}", json.dumps(event),
                              pika.BasicProperties(correlation_id=job_id))
    connection.close()
    wait_for(lambda: requests.get(f"{stack.url}/jobs/{job_id}", timeout=5).status_code == 200)
    job = stack.wait(job_id, timeout=10)
    assert (job["state"], job["exit_code"], job["attempt"]) == ("succeeded", 0, 1)
    wait_for(lambda: output_text(stack, job_id) == "hello\n", what="output recorded once")


def test_cancel_queued_and_running(stack: Stack):
    stack.start_gateway()
    stack.start_worker(concurrency=1)
    running = stack.submit("sleep", ["60", "1"])
    queued = stack.submit("sleep", ["60"])
    pgid = pgid_in(wait_for_output(stack, running["id"], "pgid="))
    assert stack.wait(queued["id"], 0)["state"] == "queued"
    response = requests.post(f"{stack.url}/jobs/{queued['id']}/cancel", timeout=10)
    assert response.status_code == 202
    cancelled_at = time.monotonic()
    assert requests.post(f"{stack.url}/jobs/{running['id']}/cancel", timeout=10).status_code == 202
    wait_for(lambda: processes_in_group(pgid) == [], timeout=2, what="processes to die")
    assert time.monotonic() - cancelled_at < 2.5
    assert stack.wait(running["id"], timeout=10)["state"] == "cancelled"
    assert stack.wait(queued["id"], timeout=10)["state"] == "cancelled"
    # The queued one never ran: the worker, free again, has nothing of it.
    assert output_text(stack, queued["id"]) == ""
    time.sleep(0.5)
    assert stack.wait(queued["id"], 0)["started_at"] is None


@pytest.mark.timeout(600)
def test_2000_jobs_with_workers_killed_all_succeed(stack: Stack):
    stack.start_gateway()
    stack.start_worker(concurrency=2)
    stack.start_worker(concurrency=2)
    ids: list[str] = []
    submitting = threading.Thread(
        target=lambda: ids.extend(stack.submit("exit", ["0"])["id"] for _ in range(2000)))
    submitting.start()
    for _ in range(4):
        time.sleep(2)
        victim = next(w for w in stack.workers if w.poll() is None)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        stack.start_worker(concurrency=2)
    submitting.join()
    jobs = wait_all_terminal(stack, ids, timeout=400)
    states = [jobs[i]["state"] for i in ids]
    assert states.count("succeeded") == len(ids) == 2000, {s: states.count(s) for s in set(states)}


def test_shared_broker_kept_running_through_the_fault_tests(
        shared_broker_watch: tuple[float, int, pika.BlockingConnection]):
    """Last in the module: the shared node's VM was not restarted (its uptime grew by
    at least the time since the module began) and its app was not stopped (a
    connection opened before the first fault test still works)."""
    started, uptime_before, connection = shared_broker_watch
    elapsed_ms = (time.monotonic() - started) * 1000
    # Read before `started` and after `elapsed_ms`: the uptime grew by more than
    # elapsed_ms unless the VM restarted (a little slack for Erlang's clock correction).
    assert shared_broker_uptime_ms() >= uptime_before + elapsed_ms - 5000
    assert connection.is_open
    channel = connection.channel()
    channel.queue_declare("", exclusive=True)  # a round trip to the broker
    channel.close()
