"""The gateway's HTTP API, served by waitress in-process, against a real RabbitMQ vhost
and a real SQLite store. Worker events are published by the tests, as a worker would."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika
import pytest
import requests
import waitress
from flask import Flask

from ocho import contract, message, topology
from ocho.gateway.app import create_app
from ocho.gateway.services import of
from ocho.settings import Settings
from tests import infra

TOOL_SOURCE = '''"""Say hello; a tool for the gateway tests."""
import argparse
parser = argparse.ArgumentParser(prog="hello", description="HELLO-HELP-MARKER")
parser.add_argument("name", nargs="?")
parser.parse_args()
print("hello")
'''


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """Serve `app` with waitress, the production server, on a free loopback port."""
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=8)
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        of(app).stop()
        server.task_dispatcher.shutdown(timeout=2)
        waitress.wasyncore.close_all(server._map)
        thread.join(timeout=5)


def make_settings(tmp: Path, amqp_url: str, **overrides: Any) -> Settings:
    tools = tmp / "tools"
    tools.mkdir(exist_ok=True)
    (tools / "hello.py").write_text(TOOL_SOURCE)
    (tools / "_helper.py").write_text("X = 1\n")  # private: never a tool
    values: dict[str, Any] = {
        "amqp_url": amqp_url,
        "database_url": f"sqlite:///{tmp / 'jobs.sqlite3'}",
        "tools_dir": tools,
        "max_request_bytes": 256 * 1024,
        "max_file_bytes": 32 * 1024,
        "max_files": 3,
        "default_timeout": 60,
        "max_timeout": 600,
        "gateway_threads": 8,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def gateway(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(tmp_path_factory.mktemp("gateway"), amqp_url)
    app = create_app(settings)
    portal = of(app)
    with serving(app) as url:
        assert portal.publisher.wait_connected(10), portal.publisher.last_error
        assert portal.recorder.wait_connected(10), portal.recorder.last_error
        yield url


@pytest.fixture(scope="module")
def channel(amqp_url: str, gateway: str) -> Iterator[Any]:
    """The test's own channel in the gateway's vhost, playing the worker."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    chan = connection.channel()
    chan.confirm_delivery()
    yield chan
    connection.close()


def take_request(channel: Any, job_id: str, ack: bool = True) -> tuple[Any, Any, bytes]:
    """Get one job's request from ocho.jobs (others there are acked away)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        method, properties, body = channel.basic_get(topology.JOBS_QUEUE)
        if method is None:
            time.sleep(0.02)
            continue
        if properties.message_id == job_id:
            if ack:
                channel.basic_ack(method.delivery_tag)
            return method, properties, body
        channel.basic_ack(method.delivery_tag)
    raise AssertionError(f"request of job {job_id} is not on {topology.JOBS_QUEUE}")


def emit(channel: Any, event: dict[str, Any]) -> None:
    """Publish an event on ocho.events as a worker does."""
    channel.basic_publish(topology.EVENTS_EXCHANGE, topology.event_routing_key(event["type"]),
                          json.dumps(event).encode(),
                          pika.BasicProperties(content_type=message.CONTENT_TYPE,
                                               correlation_id=event["id"], delivery_mode=2),
                          mandatory=True)


def started(job_id: str, attempt: int = 1, tool: str | None = "hello") -> dict[str, Any]:
    return {"type": "started", "id": job_id, "attempt": attempt, "worker": "test-worker",
            "tool": tool, "ts": time.time()}


def output(job_id: str, offset: int, data: str, stream: str = "stdout") -> dict[str, Any]:
    return {"type": "output", "id": job_id, "attempt": 1, "stream": stream, "offset": offset,
            "data": data}


def finished(job_id: str, state: str = "succeeded", exit_code: int | None = 0,
             tool: str | None = "hello") -> dict[str, Any]:
    return {"type": "finished", "id": job_id, "attempt": 1, "state": state,
            "exit_code": exit_code, "ms": 12, "truncated": False, "output_bytes": 0,
            "reason": None, "tool": tool, "ts": time.time()}


def submit(gateway: str, **body: Any) -> dict[str, Any]:
    response = requests.post(f"{gateway}/jobs", json={"tool": "hello", **body}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()


def job_state(gateway: str, job_id: str, wait: float = 0) -> dict[str, Any]:
    response = requests.get(f"{gateway}/jobs/{job_id}", params={"wait": wait} if wait else None,
                            timeout=wait + 10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_state(gateway: str, job_id: str, state: str) -> dict[str, Any]:
    """Wait for a state; a job only the broker knew about yet may still be a 404."""
    def reached() -> dict[str, Any] | None:
        response = requests.get(f"{gateway}/jobs/{job_id}", timeout=10)
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        job = response.json()
        return job if job["state"] == state else None

    return infra.wait_for(reached, timeout=10, what=f"job {job_id} to be {state}")


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (b"", "body"),
    (json.dumps({"args": ["-l"]}).encode(), "tool"),
    (json.dumps({"tool": "hello", "args": "-l"}).encode(), "args"),
    (json.dumps({"tool": "hello", "args": [1, {}]}).encode(), "args.0"),
    (json.dumps({"tool": "nope"}).encode(), "tool"),
    (json.dumps({"tool": "_helper"}).encode(), "tool"),
    (json.dumps({"tool": "hello", "timeout": "soon"}).encode(), "timeout"),
    (json.dumps({"tool": "hello", "timeout": 0}).encode(), "timeout"),
    (json.dumps({"tool": "hello", "bogus": 1}).encode(), "bogus"),
    (json.dumps({"tool": "hello", "id": "not-a-uuid"}).encode(), "id"),
    (json.dumps({"tool": "hello", "files": {"../x": "aGk="}}).encode(), "files"),
    (json.dumps({"tool": "hello", "files": {"x": "not base64!"}}).encode(), "files.x"),
])
def test_a_bad_json_request_is_a_400_naming_the_field(gateway: str, body: bytes,
                                                      field: str) -> None:
    response = requests.post(f"{gateway}/jobs", data=body,
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["field"] == field
    assert error["error"]


def test_an_unknown_tool_lists_the_tools(gateway: str) -> None:
    response = requests.post(f"{gateway}/jobs", json={"tool": "nope"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["tools"] == ["hello"]
    assert "hello" in response.json()["error"]


@pytest.mark.parametrize(("form", "files", "field"), [
    ({"line": 'hello "unbalanced'}, None, "line"),
    ({"line": "   "}, None, "line"),
    ({"tool": "hello", "args": "-l"}, None, "args"),
    ({"args": "[]"}, None, "tool"),
    ({"line": "hello", "timeout": "ten"}, None, "timeout"),
    ({"line": "hello", "colour": "red"}, None, "colour"),
    ({"line": "hello"}, {"f": (".hidden", b"x")}, "files..hidden"),
    ({"line": "hello"}, {"f": ("../etc/passwd", b"x")}, "files.../etc/passwd"),
])
def test_a_bad_form_is_a_400_naming_the_field(gateway: str, form: dict[str, str],
                                              files: dict[str, Any] | None, field: str) -> None:
    # Always multipart/form-data, as curl -F and browsers send it.
    response = requests.post(f"{gateway}/jobs", data=form,
                             files=files or {"empty.txt": ("empty.txt", b"")}, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


def test_limits_are_413_with_a_message(gateway: str) -> None:
    too_big = requests.post(f"{gateway}/jobs", data={"line": "hello"},
                            files={"big.bin": ("big.bin", b"x" * (300 * 1024))}, timeout=10)
    assert too_big.status_code == 413
    assert "OCHO_MAX_REQUEST_BYTES" in too_big.json()["error"]
    big_file = requests.post(f"{gateway}/jobs", data={"line": "hello"},
                             files={"f.bin": ("f.bin", b"x" * (40 * 1024))}, timeout=10)
    assert big_file.status_code == 413
    assert big_file.json()["field"] == "files.f.bin"
    many = requests.post(f"{gateway}/jobs", data={"line": "hello"},
                         files=[("f", (f"f{i}", b"x")) for i in range(4)], timeout=10)
    assert many.status_code == 413
    assert many.json()["field"] == "files"


def test_unknown_things_are_json_404_and_405(gateway: str) -> None:
    for path in (f"/jobs/{uuid.uuid4()}", f"/jobs/{uuid.uuid4()}/output",
                 f"/jobs/{uuid.uuid4()}/events", "/no/such/endpoint", "/tools/nope"):
        response = requests.get(f"{gateway}{path}", timeout=10)
        assert response.status_code == 404, path
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["error"]
    response = requests.post(f"{gateway}/jobs/{uuid.uuid4()}/cancel", timeout=10)
    assert response.status_code == 404
    response = requests.delete(f"{gateway}/jobs", timeout=10)
    assert response.status_code == 405
    assert "GET" in response.json()["error"]


def test_bad_query_parameters_are_400(gateway: str) -> None:
    job = submit(gateway)
    for path, params, field in [
        (f"/jobs/{job['id']}", {"wait": "61"}, "wait"),
        (f"/jobs/{job['id']}", {"wait": "soon"}, "wait"),
        (f"/jobs/{job['id']}/output", {"offset": "-1"}, "offset"),
        ("/jobs", {"limit": "501"}, "limit"),
        ("/jobs", {"state": "sleeping"}, "state"),
        ("/jobs", {"before": str(uuid.uuid4())}, "before"),
    ]:
        response = requests.get(f"{gateway}{path}", params=params, timeout=10)
        assert response.status_code == 400, (path, params, response.text)
        assert response.json()["field"] == field


# -- submitting -----------------------------------------------------------------------------


def test_a_job_is_accepted_only_once_it_is_on_the_queue(gateway: str, channel: Any) -> None:
    response = requests.post(f"{gateway}/jobs",
                             json={"tool": "hello", "args": ["-l", "a b"], "timeout": 99999},
                             headers={"X-Correlation-Id": "ci-run-7"}, timeout=10)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert (job["state"], job["tool"], job["args"]) == ("queued", "hello", ["-l", "a b"])
    assert job["timeout"] == 600  # capped at max_timeout
    assert job["correlation_id"] == "ci-run-7"
    method, properties, body = take_request(channel, job["id"])
    assert method.routing_key == "hello"
    assert properties.message_id == job["id"]
    assert properties.correlation_id == "ci-run-7"
    assert properties.content_type == "application/json"
    assert properties.delivery_mode == 2
    assert json.loads(body) == {"id": job["id"], "tool": "hello", "args": ["-l", "a b"],
                                "files": {}, "timeout": 600}
    assert job_state(gateway, job["id"])["state"] == "queued"


def test_the_default_timeout_and_a_correlation_id_field(gateway: str, channel: Any) -> None:
    job = submit(gateway, correlation_id="mine")
    assert (job["timeout"], job["correlation_id"]) == (60, "mine")
    _method, properties, body = take_request(channel, job["id"])
    assert (properties.correlation_id, json.loads(body)["timeout"]) == ("mine", 60)


def test_a_multipart_line_with_files(gateway: str, channel: Any) -> None:
    response = requests.post(
        f"{gateway}/jobs",
        data={"line": "hello --file 'zoo keeper.yml' -p 3", "timeout": "30"},
        files=[("zoo keeper.yml", ("zoo keeper.yml", b"cluster: zk\n")),
               ("file", ("extra.bin", bytes(range(256))))],
        timeout=10)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["args"] == ["--file", "zoo keeper.yml", "-p", "3"]
    _method, _properties, body = take_request(channel, job["id"])
    request = json.loads(body)
    assert request["timeout"] == 30
    assert contract.decode_files(request["files"]) == {"zoo keeper.yml": b"cluster: zk\n",
                                                      "extra.bin": bytes(range(256))}
    assert base64.b64decode(request["files"]["extra.bin"]) == bytes(range(256))


def test_a_multipart_tool_and_json_args(gateway: str, channel: Any) -> None:
    response = requests.post(f"{gateway}/jobs",
                             data={"tool": "hello", "args": json.dumps(["x y", "*"])},
                             files={"a.txt": ("a.txt", b"A")}, timeout=10)
    assert response.status_code == 202, response.text
    _method, _properties, body = take_request(channel, response.json()["id"])
    assert json.loads(body)["args"] == ["x y", "*"]
    assert json.loads(body)["files"] == {"a.txt": "QQ=="}


def test_a_retry_with_the_same_id_gets_the_job_and_another_request_a_conflict(
        gateway: str, channel: Any) -> None:
    job_id = str(uuid.uuid4())
    first = submit(gateway, id=job_id, args=["a"])
    retry = requests.post(f"{gateway}/jobs", json={"tool": "hello", "id": job_id,
                                                   "args": ["a"]}, timeout=10)
    assert retry.status_code == 200, retry.text
    assert retry.headers["Location"] == f"/jobs/{job_id}"
    assert (retry.json()["id"], retry.json()["state"]) == (job_id, first["state"])
    take_request(channel, job_id)  # published once
    assert channel.basic_get("ocho.jobs", auto_ack=False) == (None, None, None)
    other = requests.post(f"{gateway}/jobs", json={"tool": "hello", "id": job_id,
                                                   "args": ["b"]}, timeout=10)
    assert other.status_code == 409
    assert job_id in other.json()["error"] and "different request" in other.json()["error"]


# -- worker events ----------------------------------------------------------------------------


def test_worker_events_become_the_job_state_and_output(gateway: str, channel: Any) -> None:
    job = submit(gateway)
    job_id = job["id"]
    emit(channel, started(job_id))
    running = wait_state(gateway, job_id, "running")
    assert (running["attempt"], running["worker"]) == (1, "test-worker")
    assert running["started_at"].endswith("Z")
    emit(channel, output(job_id, 0, "héllo\n"))
    emit(channel, output(job_id, 7, "oops\n", stream="stderr"))
    tail = infra.wait_for(lambda: (r := requests.get(f"{gateway}/jobs/{job_id}/output",
                                                     timeout=10).json())["next_offset"] == 12
                          and r, what="output to be recorded")
    assert tail == {"data": "héllo\noops\n", "offset": 0, "next_offset": 12, "finished": False,
                    "state": "running", "truncated": False, "attempt": 1}
    part = requests.get(f"{gateway}/jobs/{job_id}/output", params={"offset": 7, "limit": 100},
                        timeout=10).json()
    assert (part["data"], part["next_offset"]) == ("oops\n", 12)

    # ?wait returns as soon as the job ends, not at the end of the wait.
    threading.Timer(0.3, emit, args=(channel, finished(job_id, "failed", 3))).start()
    began = time.monotonic()
    done = job_state(gateway, job_id, wait=30)
    assert time.monotonic() - began < 5
    assert (done["state"], done["exit_code"], done["ms"]) == ("failed", 3, 12)
    end = requests.get(f"{gateway}/jobs/{job_id}/output", params={"offset": 12},
                       timeout=10).json()
    assert (end["data"], end["finished"], end["state"]) == ("", True, "failed")

    # A late duplicate does not move it back.
    emit(channel, started(job_id))
    emit(channel, finished(job_id, "succeeded", 0))
    other = submit(gateway)
    emit(channel, finished(other["id"]))
    wait_state(gateway, other["id"], "succeeded")  # recorded after the duplicates
    assert job_state(gateway, job_id)["state"] == "failed"


def test_output_long_poll_wakes_on_new_output(gateway: str, channel: Any) -> None:
    job = submit(gateway)
    emit(channel, started(job["id"]))
    wait_state(gateway, job["id"], "running")
    threading.Timer(0.3, emit, args=(channel, output(job["id"], 0, "late\n"))).start()
    began = time.monotonic()
    tail = requests.get(f"{gateway}/jobs/{job['id']}/output",
                        params={"offset": 0, "wait": 30}, timeout=40).json()
    assert time.monotonic() - began < 5
    assert tail["data"] == "late\n"


def read_sse(response: requests.Response) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(event, id, data) of each event of a text/event-stream response."""
    fields: dict[str, str] = {}
    for line in response.iter_lines(decode_unicode=True):
        if line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif "event" in fields:  # not a `retry:` hint or a keep-alive comment
            yield fields["event"], fields["id"], json.loads(fields["data"])
            fields = {}
        else:
            fields = {}


def test_server_sent_events_stream_output_then_finished(gateway: str, channel: Any) -> None:
    job = submit(gateway)
    job_id = job["id"]
    emit(channel, started(job_id))
    emit(channel, output(job_id, 0, "one\n"))
    events: list[tuple[str, str, dict[str, Any]]] = []

    def later() -> None:
        emit(channel, output(job_id, 4, "two\n", stream="stderr"))
        emit(channel, finished(job_id))

    with requests.get(f"{gateway}/jobs/{job_id}/events", stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for event in read_sse(response):
            events.append(event)
            if events[-1][0] == "output" and len(events) == 1:
                threading.Timer(0.2, later).start()  # after the stream is open
    assert events[0] == ("output", "4", {"offset": 0, "stream": "stdout", "data": "one\n"})
    assert events[1] == ("output", "8", {"offset": 4, "stream": "stderr", "data": "two\n"})
    assert events[2][0] == "finished"
    assert events[2][2]["state"] == "succeeded"
    assert len(events) == 3

    # Resuming with Last-Event-ID sends only what came after it.
    resumed = requests.get(f"{gateway}/jobs/{job_id}/events", headers={"Last-Event-ID": "4"},
                           timeout=10).text
    assert '"data": "two\\n"' in resumed and '"data": "one\\n"' not in resumed
    assert "event: finished" in resumed


def test_an_event_stream_starts_over_when_a_redelivery_replaces_the_output(
        gateway: str, channel: Any) -> None:
    job_id = submit(gateway)["id"]
    emit(channel, started(job_id))
    emit(channel, output(job_id, 0, "first try\n"))
    seen: list[tuple[str, str, dict[str, Any]]] = []
    with requests.get(f"{gateway}/jobs/{job_id}/events", stream=True, timeout=30) as response:
        for event in read_sse(response):
            seen.append(event)
            if len(seen) == 1:  # a worker died; the broker redelivered the request
                emit(channel, started(job_id, attempt=2))
                emit(channel, {**output(job_id, 0, "second\n"), "attempt": 2})
                emit(channel, {**finished(job_id), "attempt": 2})
    assert [(name, event_id) for name, event_id, _data in seen] == [
        ("output", "10"), ("attempt", "0"), ("output", "7"), ("finished", "7")]
    assert seen[1][2] == {"attempt": 2}
    assert seen[2][2]["data"] == "second\n"
    assert (seen[3][2]["state"], seen[3][2]["attempt"]) == ("succeeded", 2)


def test_a_job_submitted_straight_over_amqp_appears(gateway: str, channel: Any) -> None:
    job_id = str(uuid.uuid4())
    emit(channel, started(job_id, tool="hello"))
    emit(channel, output(job_id, 0, "hi\n"))
    emit(channel, finished(job_id))
    job = wait_state(gateway, job_id, "succeeded")
    assert job["tool"] == "hello"
    listed = requests.get(f"{gateway}/jobs", params={"tool": "hello", "state": "succeeded"},
                          timeout=10).json()
    assert job_id in [j["id"] for j in listed["jobs"]]


def test_an_undecodable_event_is_dropped_and_the_queue_keeps_flowing(gateway: str,
                                                                     channel: Any) -> None:
    channel.basic_publish(topology.EVENTS_EXCHANGE, "job.output", b"\xff not json",
                          mandatory=True)
    channel.basic_publish(topology.EVENTS_EXCHANGE, "job.output",
                          json.dumps({"type": "output", "id": "x"}).encode(), mandatory=True)
    job_id = str(uuid.uuid4())
    emit(channel, finished(job_id))
    wait_state(gateway, job_id, "succeeded")


def test_a_request_a_worker_rejects_ends_rejected(gateway: str, channel: Any) -> None:
    job = submit(gateway)
    method, _properties, _body = take_request(channel, job["id"], ack=False)
    channel.basic_reject(method.delivery_tag, requeue=False)
    rejected = wait_state(gateway, job["id"], "rejected")
    assert "rejected" in rejected["reason"]
    assert rejected["finished_at"]


def test_a_request_over_the_delivery_limit_ends_rejected(gateway: str, channel: Any) -> None:
    job = submit(gateway)
    limit = topology.broker_delivery_limit(Settings().delivery_limit)
    for _ in range(limit + 1):  # the first delivery and `limit` redeliveries
        method, _properties, _body = take_request(channel, job["id"], ack=False)
        channel.basic_nack(method.delivery_tag, requeue=True)
    rejected = wait_state(gateway, job["id"], "rejected")
    assert rejected["reason"].startswith(
        f"dead-lettered after {limit + 1} deliveries (the broker's delivery limit)")


def test_a_dead_letter_for_a_finished_job_changes_nothing(gateway: str, channel: Any) -> None:
    job = submit(gateway)
    emit(channel, finished(job["id"]))
    wait_state(gateway, job["id"], "succeeded")
    channel.basic_publish(
        topology.DEAD_EXCHANGE, "", json.dumps({"id": job["id"], "tool": "hello"}).encode(),
        pika.BasicProperties(message_id=job["id"], headers={
            "x-death": [{"reason": "expired", "queue": "ocho.jobs", "count": 1}]}))
    unknown = str(uuid.uuid4())
    channel.basic_publish(
        topology.DEAD_EXCHANGE, "",
        json.dumps({"id": unknown, "tool": "hello", "args": ["a"]}).encode(),
        pika.BasicProperties(message_id=unknown, headers={
            "x-death": [{"reason": "expired", "queue": "ocho.jobs", "count": 1}]}))
    created = wait_state(gateway, unknown, "rejected")
    assert (created["args"], created["tool"]) == (["a"], "hello")
    assert "expired" in created["reason"]
    assert job_state(gateway, job["id"])["state"] == "succeeded"


# -- cancel, listing -----------------------------------------------------------------------


def test_cancel_a_queued_job_then_a_finished_one(gateway: str, amqp_url: str) -> None:
    job = submit(gateway)
    response = requests.post(f"{gateway}/jobs/{job['id']}/cancel", timeout=10)
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "cancelled"
    again = requests.post(f"{gateway}/jobs/{job['id']}/cancel", timeout=10)
    assert again.status_code == 409
    assert "already ended" in again.json()["error"]
    # The cancel is on the control log every worker reads.
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        chan = connection.channel()
        chan.basic_qos(prefetch_count=100)
        seen: list[dict[str, Any]] = []
        chan.basic_consume(topology.CONTROL_LOG,
                           lambda ch, m, p, body: seen.append(json.loads(body)),
                           arguments={"x-stream-offset": "first"})
        deadline = time.monotonic() + 10
        while {"action": "cancel", "id": job["id"]} not in seen:
            assert time.monotonic() < deadline, seen
            connection.process_data_events(time_limit=0.1)
    finally:
        connection.close()


def test_cancel_a_running_job_waits_for_the_worker(gateway: str, channel: Any) -> None:
    job = submit(gateway)
    emit(channel, started(job["id"]))
    wait_state(gateway, job["id"], "running")
    response = requests.post(f"{gateway}/jobs/{job['id']}/cancel", timeout=10)
    assert (response.status_code, response.json()["state"]) == (202, "running")
    emit(channel, finished(job["id"], "cancelled", None))
    assert wait_state(gateway, job["id"], "cancelled")["exit_code"] is None


def test_listing_newest_first_with_filters_and_paging(gateway: str) -> None:
    ids = [submit(gateway, args=[str(i)])["id"] for i in range(5)]
    first = requests.get(f"{gateway}/jobs", params={"limit": 2, "tool": "hello"},
                         timeout=10).json()
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2]
    second = requests.get(f"{gateway}/jobs", params={"limit": 2, "before": first["next"]},
                          timeout=10).json()
    assert [j["id"] for j in second["jobs"]] == ids[::-1][2:4]
    queued = requests.get(f"{gateway}/jobs", params={"state": "queued", "limit": 500},
                          timeout=10).json()
    assert set(ids) <= {j["id"] for j in queued["jobs"]}
    assert all(j["state"] == "queued" for j in queued["jobs"])


# -- tools and health -------------------------------------------------------------------------


def test_tools_and_their_help(gateway: str) -> None:
    tools = requests.get(f"{gateway}/tools", timeout=10).json()
    assert tools == {"tools": [{"name": "hello",
                                "summary": "Say hello; a tool for the gateway tests."}]}
    help_page = requests.get(f"{gateway}/tools/hello", timeout=10).json()
    assert help_page["name"] == "hello"
    assert "HELLO-HELP-MARKER" in help_page["help"]
    assert requests.get(f"{gateway}/tools/_helper", timeout=10).status_code == 404


def test_health_and_readiness(gateway: str) -> None:
    assert requests.get(f"{gateway}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{gateway}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "publisher": "up", "recorder": "up", "store": "up",
                            "listener": "none"}  # SQLite: one gateway writes, none to hear


# -- the broker away ----------------------------------------------------------------------------


def test_with_the_broker_unreachable_submitting_is_a_503(tmp_path: Path) -> None:
    closed = f"amqp://guest:guest@127.0.0.1:{infra.free_port()}/%2F"
    app = create_app(make_settings(tmp_path, closed))
    with serving(app) as url:
        response = requests.post(f"{url}/jobs", json={"tool": "hello"}, timeout=10)
        assert response.status_code == 503
        assert "broker is unavailable" in response.json()["error"]
        assert response.headers["Retry-After"]
        assert requests.get(f"{url}/jobs", timeout=10).json()["jobs"] == []
        ready = requests.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["publisher"] == "down"
        assert "broker" in ready.json()["error"]
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200


def test_the_gateway_reconnects_when_the_broker_comes_back(tmp_path: Path) -> None:
    vhost, url = infra.create_vhost()
    try:
        app = create_app(make_settings(tmp_path, url))
        portal = of(app)
        with serving(app) as base:
            assert portal.publisher.wait_connected(10)
            submit(base)
            infra.delete_vhost(vhost)  # the broker closes every connection to it
            infra.wait_for(lambda: not portal.publisher.connected, what="publisher to notice")
            response = requests.post(f"{base}/jobs", json={"tool": "hello"}, timeout=10)
            assert response.status_code == 503
            infra.rabbitmqctl("add_vhost", vhost)
            infra.rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
            infra.wait_for(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200,
                           timeout=30, what="gateway to reconnect")
            job = submit(base)
            connection = pika.BlockingConnection(pika.URLParameters(url))
            try:
                chan = connection.channel()
                chan.confirm_delivery()
                take_request(chan, job["id"])
                emit(chan, finished(job["id"]))
                wait_state(base, job["id"], "succeeded")
            finally:
                connection.close()
    finally:
        infra.delete_vhost(vhost)


def test_tokens_protect_everything_but_healthz(tmp_path: Path, amqp_url: str) -> None:
    app = create_app(make_settings(tmp_path, amqp_url, tokens=("s3cret", "other")),
                     background=False)
    with serving(app) as url:
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        denied = requests.get(f"{url}/jobs", timeout=10)
        assert denied.status_code == 401
        assert "Bearer" in denied.json()["error"]
        assert denied.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = requests.get(f"{url}/jobs", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401
        allowed = requests.get(f"{url}/jobs", headers={"Authorization": "Bearer other"},
                               timeout=10)
        assert allowed.status_code == 200


# -- the real process ---------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_ocho_gateway_serves_and_stops_on_sigterm(tmp_path: Path, fresh_amqp_url: str,
                                                  database: str,
                                                  request: pytest.FixtureRequest) -> None:
    # A vhost of its own: the module's in-process gateway would compete for the events.
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "hello.py").write_text(TOOL_SOURCE)
    database_url = request.getfixturevalue("pg_url") if database == "postgresql" else None
    stack = infra.Stack(tmp_path, fresh_amqp_url, database_url, tools_dir=tools)
    connection = pika.BlockingConnection(pika.URLParameters(fresh_amqp_url))
    try:
        stack.start_gateway()
        chan = connection.channel()
        chan.confirm_delivery()
        job = stack.submit("hello", ["x"])
        assert job["state"] == "queued"
        take_request(chan, job["id"])
        emit(chan, started(job["id"]))
        emit(chan, output(job["id"], 0, "hi\n"))
        emit(chan, finished(job["id"]))
        assert stack.wait(job["id"], timeout=10)["state"] == "succeeded"
        assert stack.output(job["id"])["data"] == "hi\n"
    finally:
        connection.close()
        stack.stop()
    assert stack.gateway is not None and stack.gateway.returncode == 0, stack.logs()
    log = stack.read_log("gateway.log")
    assert "loopback only" in log
    assert f"job {job['id']} submitted" in log
    assert f"job {job['id']} succeeded" in log
    assert "received SIGTERM" in log and "stopped" in log



def test_waiting_requests_never_take_every_server_thread(gateway: str, channel: Any) -> None:
    job = submit(gateway)
    emit(channel, started(job["id"]))
    wait_state(gateway, job["id"], "running")
    streams = []
    try:
        # 8 threads: 6 may wait (long-poll or stream), 2 stay free for quick requests.
        for _ in range(6):
            stream = requests.get(f"{gateway}/jobs/{job['id']}/events", stream=True, timeout=30)
            assert stream.status_code == 200
            streams.append(stream)
        refused = requests.get(f"{gateway}/jobs/{job['id']}/events", timeout=10)
        assert refused.status_code == 503
        assert "too many" in refused.json()["error"]
        began = time.monotonic()
        assert job_state(gateway, job["id"], wait=30)["state"] == "running"
        assert time.monotonic() - began < 5  # answered at once instead of holding a thread
        assert requests.get(f"{gateway}/healthz", timeout=10).status_code == 200
    finally:
        emit(channel, finished(job["id"]))  # every stream ends and gives its slot back
        for stream in streams:
            stream.close()
    infra.wait_for(lambda: requests.get(f"{gateway}/jobs/{job['id']}/events",
                                        timeout=10).status_code == 200, what="slots back")
