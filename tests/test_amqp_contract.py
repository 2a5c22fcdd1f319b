"""docs/amqp.md, checked from the outside.

These tests talk to a real worker through kombu (py-amqp), not pika and not
ocho.client: if a service in another stack can only read docs/amqp.md, this
is what it would write. Nothing from the `ocho` package is imported on purpose.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Consumer, Producer, Queue

from tests.infra import Stack

# Names and values exactly as docs/amqp.md spells them.
JOBS_EXCHANGE = "ocho.jobs"
EVENTS_EXCHANGE = "ocho.events"
CONTROL_EXCHANGE = "ocho.control"
DEAD_QUEUE = "ocho.dead"
JSON = "application/json"
PERSISTENT = 2


class Inbox:
    """An exclusive queue of our own and everything that arrived on it."""

    def __init__(self, connection: Connection, *, bind_events: bool = False) -> None:
        self.connection = connection
        channel = connection.channel()
        # Server-named (amq.gen-…): the only kind of reply queue workers answer to. Once
        # named, it must not be declared again (the amq. prefix is reserved).
        self.name = channel.queue_declare("", exclusive=True, auto_delete=True).queue
        assert self.name.startswith("amq.gen-")
        if bind_events:
            channel.queue_bind(self.name, EVENTS_EXCHANGE, "job.#")
        self.queue = Queue(self.name, channel=channel, no_declare=True)
        self.received: list[tuple[dict[str, Any], Any]] = []
        self.consumer = Consumer(channel, queues=[self.queue], callbacks=[self._on_message],
                                 no_ack=True, accept=[JSON])
        self.consumer.consume()

    def _on_message(self, _decoded: Any, message: Any) -> None:
        # The raw body, parsed here: the contract is JSON, not a kombu serializer.
        self.received.append((json.loads(message.body), message))

    def events_of(self, job_id: str) -> list[dict[str, Any]]:
        return [event for event, _ in self.received if event["id"] == job_id]

    def messages_of(self, job_id: str) -> list[Any]:
        return [message for event, message in self.received if event["id"] == job_id]

    def wait_until(self, done: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; received {[e for e, _ in self.received]}")
            try:
                self.connection.drain_events(timeout=min(left, 0.5))
            except TimeoutError:
                pass

    def wait_finished(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        self.wait_until(lambda: any(e["type"] == "finished" for e in self.events_of(job_id)),
                        timeout)
        return next(e for e in self.events_of(job_id) if e["type"] == "finished")

    def chunks_of(self, job_id: str) -> list[dict[str, Any]]:
        """Output as docs/amqp.md says to read it: `output` events, then what the
        `finished` event carries."""
        chunks: list[dict[str, Any]] = []
        for event in self.events_of(job_id):
            if event["type"] == "output":
                chunks.append({k: event[k] for k in ("stream", "offset", "data")})
            elif event["type"] == "finished":
                chunks.extend(event["output"])
        return chunks

    def output_of(self, job_id: str) -> str:
        return "".join(chunk["data"] for chunk in self.chunks_of(job_id))


def publish_request(connection: Connection, body: dict[str, Any] | bytes, *, tool: str,
                    job_id: str, correlation_id: str, reply_to: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    # confirm_publish (below) makes this return only once the broker has the request.
    Producer(connection.channel()).publish(
        raw, exchange=JOBS_EXCHANGE, routing_key=tool, mandatory=True,
        content_type=JSON, content_encoding="utf-8", delivery_mode=PERSISTENT,
        message_id=job_id, correlation_id=correlation_id, reply_to=reply_to)


def publish_cancel(connection: Connection, job_id: str) -> None:
    Producer(connection.channel()).publish(
        json.dumps({"action": "cancel", "id": job_id}).encode(), exchange=CONTROL_EXCHANGE,
        routing_key="", content_type=JSON, content_encoding="utf-8", delivery_mode=PERSISTENT)


def take_dead_letter(connection: Connection, timeout: float = 10) -> Any:
    """The next message in ocho.dead (no gateway runs here to consume it first)."""
    dead = Queue(DEAD_QUEUE, channel=connection.channel(), no_declare=True)
    deadline = time.monotonic() + timeout
    while (letter := dead.get(no_ack=True)) is None:
        assert time.monotonic() < deadline, "nothing arrived in ocho.dead"
        time.sleep(0.05)
    return letter


@pytest.fixture
def stack(tmp_path: Path, fresh_amqp_url: str, tools_dir: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path, fresh_amqp_url, tools_dir=tools_dir, kill_grace=1)
    # The worker declares the topology; a client declares only its own queue.
    stack.start_worker()
    yield stack
    stack.stop()


@pytest.fixture
def connection(stack: Stack) -> Iterator[Connection]:
    with Connection(stack.env["OCHO_AMQP_URL"],
                    transport_options={"confirm_publish": True}) as connection:
        connection.connect()
        yield connection


def test_a_short_job_sends_one_finished_event_with_its_output(connection: Connection):
    replies = Inbox(connection)
    tap = Inbox(connection, bind_events=True)
    job_id, correlation_id = str(uuid.uuid4()), f"my-ref-{uuid.uuid4().hex[:6]}"
    request = {"id": job_id, "tool": "cat", "args": ["notes.txt"],
               "files": {"notes.txt": base64.b64encode(b"hello over AMQP\n").decode()},
               "timeout": 30}
    before = time.time()
    publish_request(connection, request, tool="cat", job_id=job_id,
                    correlation_id=correlation_id, reply_to=replies.name)

    finished = replies.wait_finished(job_id)
    # It ended within OCHO_OUTPUT_FLUSH_MS: no `started`, no `output` event.
    assert [e["type"] for e in replies.events_of(job_id)] == ["finished"]
    assert (finished["state"], finished["exit_code"], finished["attempt"]) == ("succeeded", 0, 1)
    assert finished["truncated"] is False and isinstance(finished["ms"], int)
    assert finished["output"] == [{"stream": "stdout", "offset": 0, "data": "hello over AMQP\n"}]
    assert finished["tool"] == "cat" and finished["worker"]
    assert before <= finished["started_ts"] <= finished["ts"]
    [message] = replies.messages_of(job_id)
    assert message.properties["correlation_id"] == correlation_id
    assert message.content_type == JSON
    assert message.properties["delivery_mode"] == PERSISTENT
    assert message.headers["job_id"] == job_id
    assert message.properties["type"] == "finished"

    # The same event on ocho.events under job.finished.
    tap.wait_finished(job_id)
    assert tap.events_of(job_id) == [finished]
    assert [m.delivery_info["routing_key"] for m in tap.messages_of(job_id)] == ["job.finished"]


def test_a_longer_job_streams_started_and_output_before_finished(connection: Connection):
    replies = Inbox(connection)
    tap = Inbox(connection, bind_events=True)
    job_id, correlation_id = str(uuid.uuid4()), f"my-ref-{uuid.uuid4().hex[:6]}"
    # Prints a line at once, one every 0.5 s, and `done` after 1.2 s.
    publish_request(connection, {"id": job_id, "tool": "sleep", "args": ["1.2"]}, tool="sleep",
                    job_id=job_id, correlation_id=correlation_id, reply_to=replies.name)

    # The first line arrives while the tool still runs.
    replies.wait_until(lambda: "pid=" in replies.output_of(job_id), timeout=10)
    assert "finished" not in [e["type"] for e in replies.events_of(job_id)]
    finished = replies.wait_finished(job_id)
    events = replies.events_of(job_id)
    types = [e["type"] for e in events]
    assert types[0] == "started" and types[-1] == "finished"
    assert set(types[1:-1]) == {"output"} and len(types) >= 4
    started = events[0]
    assert started["tool"] == "sleep" and started["attempt"] == 1 and started["worker"]
    assert started["ts"] == finished["started_ts"]
    assert finished["state"] == "succeeded"
    # Offsets run on without gaps from the output events into `finished`.
    offset = 0
    for chunk in replies.chunks_of(job_id):
        assert chunk["offset"] == offset
        offset += len(chunk["data"].encode())
    assert replies.output_of(job_id).endswith("tick 3\ndone\n")
    for message in replies.messages_of(job_id):
        assert message.properties["correlation_id"] == correlation_id
    assert [m.properties["type"] for m in replies.messages_of(job_id)] == types

    # The same events, in the same order, on ocho.events under job.<type>.
    tap.wait_finished(job_id)
    assert tap.events_of(job_id) == events
    assert [m.delivery_info["routing_key"] for m in tap.messages_of(job_id)] == [
        f"job.{t}" for t in types]


def test_output_offsets_count_utf8_bytes_without_gaps(connection: Connection):
    replies = Inbox(connection)
    job_id = str(uuid.uuid4())
    text = "naïve ☃ café\n" * 3
    publish_request(connection, {"id": job_id, "tool": "cat", "args": ["u.txt"],
                                 "files": {"u.txt": base64.b64encode(text.encode()).decode()}},
                    tool="cat", job_id=job_id, correlation_id=job_id, reply_to=replies.name)
    replies.wait_finished(job_id)
    offset = 0
    for chunk in replies.chunks_of(job_id):
        assert chunk["offset"] == offset
        offset += len(chunk["data"].encode())
    assert replies.output_of(job_id) == text


def test_failed_tool_reports_its_exit_code_and_stderr(connection: Connection):
    replies = Inbox(connection)
    job_id = str(uuid.uuid4())
    publish_request(connection, {"id": job_id, "tool": "exit", "args": ["3", "went wrong"]},
                    tool="exit", job_id=job_id, correlation_id=job_id, reply_to=replies.name)
    finished = replies.wait_finished(job_id)
    assert (finished["state"], finished["exit_code"]) == ("failed", 3)
    assert [(c["stream"], c["data"]) for c in replies.chunks_of(job_id)] == [
        ("stderr", "went wrong\n")]


def test_bad_request_is_rejected_on_the_reply_queue_and_dead_lettered(connection: Connection):
    replies = Inbox(connection)
    job_id = str(uuid.uuid4())
    # `args` must be a list of strings, never a shell string.
    publish_request(connection, {"id": job_id, "tool": "cat", "args": "notes.txt"},
                    tool="cat", job_id=job_id, correlation_id="bad-1", reply_to=replies.name)
    finished = replies.wait_finished(job_id)
    assert finished["state"] == "rejected"
    assert finished["exit_code"] is None
    assert finished["reason"].startswith("args:")
    assert [e["type"] for e in replies.events_of(job_id)] == ["finished"]
    assert replies.messages_of(job_id)[0].properties["correlation_id"] == "bad-1"

    letter = take_dead_letter(connection)
    assert letter.properties["message_id"] == job_id
    assert letter.headers["x-death"][0]["reason"] == "rejected"
    assert json.loads(letter.body)["args"] == "notes.txt"


def test_unknown_tool_is_rejected_with_a_reason(connection: Connection):
    replies = Inbox(connection)
    job_id = str(uuid.uuid4())
    publish_request(connection, {"id": job_id, "tool": "no-such-tool"}, tool="no-such-tool",
                    job_id=job_id, correlation_id=job_id, reply_to=replies.name)
    finished = replies.wait_finished(job_id)
    assert finished["state"] == "rejected"
    assert "unknown tool" in finished["reason"]


def test_cancel_on_the_control_exchange_stops_a_running_job(connection: Connection):
    replies = Inbox(connection)
    job_id = str(uuid.uuid4())
    publish_request(connection, {"id": job_id, "tool": "sleep", "args": ["60"]}, tool="sleep",
                    job_id=job_id, correlation_id=job_id, reply_to=replies.name)
    replies.wait_until(lambda: "pid=" in replies.output_of(job_id))
    cancelled_at = time.monotonic()
    publish_cancel(connection, job_id)
    finished = replies.wait_finished(job_id, timeout=10)
    assert finished["state"] == "cancelled"
    assert time.monotonic() - cancelled_at < 5


def test_cancel_before_the_job_runs_finishes_it_without_starting(connection: Connection):
    replies = Inbox(connection)
    job_id = str(uuid.uuid4())
    # The worker has two slots: fill them, so that the cancel is surely read
    # before the request is taken.
    for _ in range(2):
        blocker = str(uuid.uuid4())
        publish_request(connection, {"id": blocker, "tool": "sleep", "args": ["2"]},
                        tool="sleep", job_id=blocker, correlation_id=blocker,
                        reply_to=replies.name)
    publish_cancel(connection, job_id)
    publish_request(connection, {"id": job_id, "tool": "sleep", "args": ["60"]}, tool="sleep",
                    job_id=job_id, correlation_id=job_id, reply_to=replies.name)
    finished = replies.wait_finished(job_id, timeout=20)
    assert finished["state"] == "cancelled"
    assert [e["type"] for e in replies.events_of(job_id)] == ["finished"]


def test_request_that_expires_in_the_queue_is_dead_lettered_and_never_runs(
        connection: Connection):
    replies = Inbox(connection)
    # Both job slots busy: the worker takes nothing more for two seconds.
    for _ in range(2):
        blocker = str(uuid.uuid4())
        publish_request(connection, {"id": blocker, "tool": "sleep", "args": ["2"]},
                        tool="sleep", job_id=blocker, correlation_id=blocker,
                        reply_to=replies.name)
    job_id = str(uuid.uuid4())
    Producer(connection.channel()).publish(
        json.dumps({"id": job_id, "tool": "exit", "args": ["0"]}).encode(),
        exchange=JOBS_EXCHANGE, routing_key="exit", content_type=JSON,
        content_encoding="utf-8", delivery_mode=PERSISTENT, message_id=job_id,
        correlation_id=job_id, reply_to=replies.name, expiration=0.3)
    letter = take_dead_letter(connection)
    assert letter.properties["message_id"] == job_id
    assert letter.headers["x-death"][0]["reason"] == "expired"
    replies.wait_until(lambda: sum(e["type"] == "finished" for e, _ in replies.received) == 2)
    assert replies.events_of(job_id) == []
