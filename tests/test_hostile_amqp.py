"""Hostile clients over AMQP (issue 11): no message stops the portal.

A real gateway and real workers; the attacker is a pika client logged in as a
RabbitMQ user of its own holding exactly the permissions the README gives
other services (configure and read its `amq.gen-*` reply queue, write to
`ocho.jobs` and `ocho.control`). After each attack: an ordinary job submitted
over HTTP succeeds within 10 s, /readyz is 200, and a victim job's record is
unchanged; after the attacks on the control stream, a worker started then
takes jobs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import requests

from ocho.worker.cancel_log import CANCEL_LOG_CATCH_UP_S
from tests import infra
from tests.infra import Stack

JSON = "application/json"
NESTED = b"[" * 100_000 + b"]" * 100_000
# The README's permissions for other services (Deploying it → RabbitMQ).
CLIENT_PERMISSIONS = (r"^amq\.gen-", r"^ocho\.(jobs|control)$", r"^amq\.gen-")
# The cancel flood of the acceptance, all of it, published within FLOOD_BUDGET_S (it took
# 21-35 s, 5 800-9 300 cancels/s, on the shared 2-core test machine under load).
FLOOD = 200_000
FLOOD_BUDGET_S = 60.0


class Attacker:
    """A least-privilege AMQP client with a server-named reply queue."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.replies = self.channel.queue_declare("", exclusive=True).method.queue

    def publish(self, body: bytes, *, job_id: str | None = None, tool: str = "exit",
                reply_to: str | None = "", exchange: str = "ocho.jobs",
                **properties: Any) -> None:
        props = pika.BasicProperties(
            content_type=properties.pop("content_type", JSON), delivery_mode=2,
            message_id=job_id, correlation_id=properties.pop("correlation_id", job_id),
            reply_to=self.replies if reply_to == "" else reply_to, **properties)
        self.channel.basic_publish(exchange, tool, body, props, mandatory=True)

    def request(self, job_id: str, tool: str = "exit", args: list[str] | None = None,
                **properties: Any) -> None:
        body = json.dumps({"id": job_id, "tool": tool, "args": args or ["0"]}).encode()
        self.publish(body, job_id=job_id, tool=tool, **properties)

    def finished(self, job_id: str, timeout: float = 15) -> dict[str, Any]:
        """The finished event of job `job_id` (or with that correlation id)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            method, props, body = self.channel.basic_get(self.replies, auto_ack=True)
            if method is None:
                self.connection.process_data_events(time_limit=0.05)
                continue
            event = json.loads(body)
            if job_id in (event["id"], props.correlation_id) and event["type"] == "finished":
                return event  # type: ignore[no-any-return]
        raise AssertionError(f"no finished event for {job_id} within {timeout} s")

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


def least_privileged_user(vhost: str) -> tuple[str, str]:
    user, password = f"ocho-hostile-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    infra.rabbitmqctl("add_user", user, password)
    infra.rabbitmqctl("set_permissions", "-p", vhost, user, *CLIENT_PERMISSIONS)
    return user, password


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    name, _url = infra.create_vhost()
    yield name
    infra.delete_vhost(name)


@pytest.fixture(scope="module")
def user(vhost: str) -> Iterator[tuple[str, str]]:
    user, password = least_privileged_user(vhost)
    yield user, password
    infra.rabbitmqctl("delete_user", user)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, vhost: str) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("hostile")
    tools = infra.clone_tools_dir(workdir / "tools")
    stack = Stack(workdir, f"amqp://guest:guest@127.0.0.1:5672/{vhost}", tools_dir=tools,
                  kill_grace=1)
    stack.start_gateway()
    stack.start_worker(concurrency=2)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def victim(stack: Stack) -> dict[str, Any]:
    """A finished job whose record no attack may change."""
    job = stack.submit("args", ["victim", "record"])
    record = stack.wait(job["id"], timeout=30)
    assert record["state"] == "succeeded", stack.logs()
    return record


@pytest.fixture
def attacker(stack: Stack, vhost: str, user: tuple[str, str]) -> Iterator[Attacker]:
    name, password = user
    client = Attacker(f"amqp://{name}:{password}@127.0.0.1:5672/{vhost}")
    yield client
    client.close()


def get(stack: Stack, path: str) -> requests.Response:
    return requests.get(f"{stack.url}{path}", timeout=10)


def assert_portal_healthy(stack: Stack, victim: dict[str, Any]) -> dict[str, Any]:
    """An ordinary HTTP job succeeds within 10 s; /readyz 200; the victim unchanged."""
    started = time.monotonic()
    job = stack.submit("exit", ["0"])
    record = stack.wait(job["id"], timeout=10)
    assert record["state"] == "succeeded", (record, stack.logs())
    assert time.monotonic() - started < 10
    assert get(stack, "/readyz").status_code == 200, stack.logs()
    assert get(stack, f"/jobs/{victim['id']}").json() == victim
    return record


def replace_worker(stack: Stack, victim: dict[str, Any], ready_within: float = 30) -> None:
    """A worker started now (it reads the whole cancel log first) takes the next job."""
    old = stack.workers[-1]
    new = stack.start_worker(concurrency=2, wait_ready=False)
    log = f"worker{len(stack.workers) - 1}.log"
    started = time.monotonic()
    infra.wait_for(lambda: "consuming" in stack.read_log(log) or new.poll() is not None,
                   timeout=ready_within, what="the new worker to take jobs")
    assert new.poll() is None, stack.read_log(log)
    caught_up = "not read to its end" not in stack.read_log(log)
    print(f"a new worker took jobs after {time.monotonic() - started:.1f} s "
          f"({'the cancel log read to its end' if caught_up else 'catch-up given up'})")
    old.terminate()
    old.wait(timeout=30)
    record = assert_portal_healthy(stack, victim)
    assert record["worker"].endswith(f":{new.pid}"), record


# -- 1. bodies no parser survives ------------------------------------------------------------


def test_nested_and_broken_bodies_on_ocho_jobs_are_rejected_with_a_reason(
        stack: Stack, victim: dict[str, Any], attacker: Attacker) -> None:
    cases = {
        "nested": (NESTED, "nested"),
        "bad UTF-8": (b'{"id": "\xff\xfe", "tool": "exit"}', "JSON"),
        "wrong types": (json.dumps({"tool": ["exit"], "args": {"a": 1}}).encode(), "tool"),
        "an object nested in args": (json.dumps({"tool": "exit", "args": [[[["0"]]]]}).encode(),
                                     "args"),
    }
    for what, (body, mentioned) in cases.items():
        job_id = str(uuid.uuid4())
        attacker.publish(body, job_id=job_id)
        event = attacker.finished(job_id)
        assert event["state"] == "rejected" and mentioned in event["reason"], (what, event)
        assert stack.wait(job_id, timeout=10)["state"] == "rejected", what
    assert_portal_healthy(stack, victim)


def test_nested_json_that_expires_into_ocho_dead_is_recorded_and_the_recorder_goes_on(
        stack: Stack, victim: dict[str, Any], attacker: Attacker) -> None:
    # Both job slots busy: the expiring message waits in the queue until it dies.
    busy = [stack.submit("sleep", ["1.5"]) for _ in range(2)]
    job_id = str(uuid.uuid4())
    attacker.publish(NESTED, job_id=job_id, expiration="50")
    record = stack.wait(job_id, timeout=15)
    assert record["state"] == "rejected" and "expired" in record["reason"], record
    for job in busy:
        assert stack.wait(job["id"], timeout=15)["state"] == "succeeded"
    assert_portal_healthy(stack, victim)


def test_nested_json_on_the_control_exchange_stops_no_worker(
        stack: Stack, victim: dict[str, Any], attacker: Attacker) -> None:
    for body in (NESTED, b"\xff", b'{"action": "cancel", "id": ["x"]}', b"[]",
                 json.dumps({"action": "cancel", "id": victim["id"].upper()}).encode()):
        attacker.publish(body, exchange="ocho.control", tool="", reply_to=None)
    assert_portal_healthy(stack, victim)
    # The poison stays in the 7-day control log: a new worker reads it all, and works.
    replace_worker(stack, victim)


# -- 2. job identity -------------------------------------------------------------------------


@pytest.mark.parametrize("count", ["abc", -7, 1000])
def test_a_forged_delivery_count_is_not_an_attempt(
        stack: Stack, victim: dict[str, Any], attacker: Attacker, count: Any) -> None:
    job_id = str(uuid.uuid4())
    attacker.request(job_id, headers={"x-delivery-count": count})
    event = attacker.finished(job_id)
    assert (event["state"], event["attempt"]) == ("succeeded", 1), event
    record = stack.wait(job_id, timeout=10)
    assert (record["state"], record["attempt"]) == ("succeeded", 1), record
    assert_portal_healthy(stack, victim)


def test_a_request_reusing_a_job_id_never_touches_that_job(
        stack: Stack, victim: dict[str, Any], attacker: Attacker) -> None:
    running = stack.submit("sleep", ["2"])
    infra.wait_for(lambda: get(stack, f"/jobs/{running['id']}").json()["state"] == "running",
                   timeout=10, what="the job to run")
    attacker.request(running["id"], args=["0"])
    event = attacker.finished(running["id"])
    assert event["state"] == "rejected" and "already taken" in event["reason"], event
    # The finished victim's id, too. The worker that ran it is gone (replaced above), so
    # this one may run the request; the victim's record must not change either way.
    attacker.request(victim["id"], tool="args", args=["forged"])
    attacker.finished(victim["id"])

    record = stack.wait(running["id"], timeout=15)
    assert (record["state"], record["attempt"], record["exit_code"]) == ("succeeded", 1, 0)
    assert stack.output(running["id"])["data"].endswith("done\n")
    assert_portal_healthy(stack, victim)


def test_ids_that_are_not_canonical_uuids_are_refused_over_amqp_and_http(
        stack: Stack, victim: dict[str, Any], attacker: Attacker) -> None:
    canonical = str(uuid.uuid4())
    for bad in ("\n" + uuid.uuid4().hex[:31], "{" + canonical + "}", "urn:uuid:" + canonical,
                " " + canonical, canonical.upper()):
        # Answered on the reply queue (by correlation id) though no job can have that id.
        attacker.publish(json.dumps({"id": bad, "tool": "exit", "args": ["0"]}).encode(),
                         correlation_id="bad-id")
        event = attacker.finished("bad-id")
        assert event["state"] == "rejected" and "canonical" in event["reason"], (bad, event)
        attacker.publish(b"{}", job_id=bad)
        assert attacker.finished(bad)["id"] == bad
        response = requests.post(f"{stack.url}/jobs", json={"id": bad, "tool": "exit"},
                                 timeout=10)
        assert response.status_code == 400 and "canonical" in response.json()["error"], bad
    # Body id and message_id disagree: rejected, answered under the message_id.
    other = str(uuid.uuid4())
    attacker.publish(json.dumps({"id": other, "tool": "exit"}).encode(), job_id=canonical)
    assert "differ" in attacker.finished(canonical)["reason"]
    # No id at all: rejected, answered by correlation id. Only message_id: it is the id.
    attacker.publish(json.dumps({"tool": "exit", "args": ["0"]}).encode(),
                     correlation_id="no-id")
    assert "no job id" in attacker.finished("no-id")["reason"]
    only = str(uuid.uuid4())
    attacker.publish(json.dumps({"tool": "exit", "args": ["0"]}).encode(), job_id=only)
    assert attacker.finished(only)["state"] == "succeeded"
    assert stack.wait(only, timeout=10)["state"] == "succeeded"
    assert_portal_healthy(stack, victim)


def test_content_type_and_routing_key_are_checked(
        stack: Stack, victim: dict[str, Any], attacker: Attacker) -> None:
    job_id = str(uuid.uuid4())
    attacker.request(job_id, content_type="text/plain")
    assert "content_type" in attacker.finished(job_id)["reason"]
    job_id = str(uuid.uuid4())
    attacker.publish(json.dumps({"id": job_id, "tool": "exit", "args": ["0"]}).encode(),
                     job_id=job_id, tool="args")
    assert "routing key" in attacker.finished(job_id)["reason"]
    assert_portal_healthy(stack, victim)


# -- 3. replies -----------------------------------------------------------------------------


def test_events_never_go_to_a_foreign_reply_queue(
        stack: Stack, victim: dict[str, Any], attacker: Attacker) -> None:
    # Another service's named queue (guest may declare names; the attacker may not).
    bystander = pika.BlockingConnection(pika.URLParameters(stack.env["OCHO_AMQP_URL"]))
    channel = bystander.channel()
    target = f"ocho.inbox-{uuid.uuid4().hex[:6]}"
    channel.queue_declare(target, auto_delete=True)
    try:
        job_id = str(uuid.uuid4())
        attacker.request(job_id, reply_to=target)
        record = stack.wait(job_id, timeout=10)
        assert record["state"] == "rejected" and "reply_to" in record["reason"], record
        assert channel.queue_declare(target, passive=True).method.message_count == 0
    finally:
        bystander.close()
    assert_portal_healthy(stack, victim)


def flood_control(url: str, bodies: list[bytes], budget: float) -> float:
    """Publish `bodies` to ocho.control as fast as the broker takes them; the seconds it
    took. pika's SelectConnection with no confirms: ~10x the publishes per second of a
    BlockingConnection (which runs its I/O loop on every publish). Closing the channel
    waits for its CloseOk, which the broker sends after every publish before it."""
    took: dict[str, float] = {}

    def on_channel(channel: Any) -> None:
        started = time.monotonic()
        for body in bodies:
            channel.basic_publish("ocho.control", "", body)
        channel.close()
        took["started"] = started

    def on_channel_closed(_channel: Any, _reason: Any) -> None:
        took["s"] = time.monotonic() - took["started"]
        connection.close()

    connection = pika.SelectConnection(
        pika.URLParameters(url), on_open_callback=lambda c: c.channel(
            on_open_callback=lambda ch: (ch.add_on_close_callback(on_channel_closed),
                                         on_channel(ch))),
        on_close_callback=lambda c, _reason: c.ioloop.stop())
    connection.ioloop.call_later(budget, connection.ioloop.stop)  # bounded in time
    connection.ioloop.start()
    assert "s" in took, f"{len(bodies)} cancels not published within {budget} s"
    return took["s"]


def worker_logs(stack: Stack) -> str:
    return "".join(stack.read_log(f"worker{index}.log") for index in range(len(stack.workers)))


def test_a_cancel_flood_stops_nothing(stack: Stack, victim: dict[str, Any], vhost: str,
                                      user: tuple[str, str]) -> None:
    # A real cancel of a queued job (both job slots busy) goes out before the flood.
    busy = [stack.submit("sleep", ["1"]) for _ in range(2)]
    infra.wait_for(lambda: all(get(stack, f"/jobs/{job['id']}").json()["state"] == "running"
                               for job in busy), timeout=10, what="both job slots busy")
    queued = stack.submit("args", ["must", "not", "run"])
    response = requests.post(f"{stack.url}/jobs/{queued['id']}/cancel", timeout=10)
    assert response.status_code == 202, response.text

    template = b'{"action": "cancel", "id": "%s"}'
    bodies = [template % str(uuid.uuid4()).encode() for _ in range(FLOOD)]
    name, password = user
    took = flood_control(f"amqp://{name}:{password}@127.0.0.1:5672/{vhost}", bodies,
                         FLOOD_BUDGET_S)
    print(f"published {FLOOD} cancels in {took:.1f} s ({FLOOD / took:.0f}/s)")

    # The queued job's cancel took effect: taken after the sleeps (while the worker reads
    # the flood), never run. A job still queued after 100 000 later cancels is the limit
    # docs/amqp.md states: its record stays `cancelled` either way.
    infra.wait_for(lambda: f"job {queued['id']} was cancelled before it ran"
                   in worker_logs(stack), timeout=30, what="the queued job to be taken")
    assert f"job {queued['id']} started" not in worker_logs(stack)
    record = get(stack, f"/jobs/{queued['id']}").json()
    assert (record["state"], record["reason"], record["started_at"]) == (
        "cancelled", "cancelled before it started", None), record
    assert stack.output(queued["id"])["data"] == "", record
    assert_portal_healthy(stack, victim)
    # It reads all 200 000 first; on a loaded machine it may give up after
    # CANCEL_LOG_CATCH_UP_S and take jobs anyway.
    replace_worker(stack, victim, ready_within=CANCEL_LOG_CATCH_UP_S + 30)


# -- 4. a bounded queue ------------------------------------------------------------------------


def test_a_full_queue_is_a_503_over_http_and_a_nack_over_amqp(
        tmp_path: Path, fresh_amqp_url: str, tools_dir: Path) -> None:
    vhost = fresh_amqp_url.rsplit("/", 1)[1]
    name, password = least_privileged_user(vhost)
    stack = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir, max_queued=3)
    client = None
    try:
        stack.start_gateway()  # no worker: nothing leaves the queue
        accepted, refused = [], None
        for _ in range(6):
            job_id = str(uuid.uuid4())
            response = requests.post(f"{stack.url}/jobs", json={"id": job_id, "tool": "exit",
                                                                 "args": ["0"]}, timeout=30)
            if response.status_code == 503:
                refused = (job_id, response)
                break
            assert response.status_code == 202, response.text
            accepted.append(job_id)
        assert refused is not None and 3 <= len(accepted) <= 4, accepted
        job_id, response = refused
        assert "queue is full" in response.json()["error"]
        assert int(response.headers["Retry-After"]) > 0
        # Nothing stuck `queued` for the refused job.
        assert get(stack, f"/jobs/{job_id}").status_code == 404
        queued = get(stack, "/jobs?state=queued").json()["jobs"]
        assert sorted(job["id"] for job in queued) == sorted(accepted)

        client = Attacker(f"amqp://{name}:{password}@127.0.0.1:5672/{vhost}")
        with pytest.raises(pika.exceptions.NackError):
            client.request(str(uuid.uuid4()))
        assert get(stack, "/readyz").status_code == 200

        stack.start_worker(concurrency=2)  # the queue drains; the portal works again
        for job_id in accepted:
            assert stack.wait(job_id, timeout=15)["state"] == "succeeded"
        job = stack.submit("exit", ["0"])
        assert stack.wait(job["id"], timeout=10)["state"] == "succeeded"
    finally:
        if client is not None:
            client.close()
        stack.stop()
        infra.rabbitmqctl("delete_user", name)


def test_a_jobs_queue_declared_before_the_length_limit_is_used_as_it_is(
        tmp_path: Path, fresh_amqp_url: str, tools_dir: Path) -> None:
    """An upgrade: ocho.jobs exists without x-max-length; redeclaring it with one is a
    406 PRECONDITION_FAILED, which must not keep the portal from starting."""
    connection = pika.BlockingConnection(pika.URLParameters(fresh_amqp_url))
    connection.channel().queue_declare("ocho.jobs", durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 5, "x-dead-letter-exchange": "ocho.dead"})
    connection.close()
    stack = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir)
    try:
        stack.start_gateway()
        stack.start_worker(concurrency=1)
        job = stack.submit("exit", ["0"])
        assert stack.wait(job["id"], timeout=15)["state"] == "succeeded"
        assert "x-max-length" in stack.read_log("gateway.log")
    finally:
        stack.stop()
