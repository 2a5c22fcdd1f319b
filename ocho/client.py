"""A Python client for other services, built on the AMQP contract alone.

    with Client("amqp://guest:guest@127.0.0.1:5672/%2F") as client:
        job_id = client.submit("deploy", ["--dry-run", "zookeeper.yml"],
                               files={"zookeeper.yml": Path("zookeeper.yml").read_bytes()})
        result = client.wait(job_id, timeout=60)
        print(result.state, result.output)

One exclusive reply queue per client receives the events of every job it
submitted; they are told apart by `correlation_id`.

`amqp_url` may list several broker nodes separated by `;`. The client connects to
the first that answers, from a random start; if its connection is lost, the next
`submit` connects to the next node and publishes again (a request is idempotent by
its job id, so a request that had reached the broker is not run twice). The events
of jobs submitted before the loss went to the lost reply queue: `events`/`wait`
then raise BrokerUnavailable, and the job's outcome is read over HTTP.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions

from ocho import contract, topology
from ocho.amqp import CONNECTION_ERRORS, Nodes, describe, node_name
from ocho.errors import BrokerUnavailable, InvalidRequest, PublishRejected


@dataclasses.dataclass
class Result:
    id: str
    state: str
    exit_code: int | None
    ms: int
    truncated: bool
    attempt: int
    reason: str | None
    output: str
    events: list[dict[str, Any]]


class Client:
    def __init__(self, amqp_url: str, *, heartbeat: int = 30,
                 delivery_limit: int = topology.DEFAULT_DELIVERY_LIMIT,
                 max_queued: int = topology.DEFAULT_MAX_QUEUED) -> None:
        urls = [url.strip() for url in amqp_url.split(";") if url.strip()]
        self._nodes = Nodes(urls)
        self._heartbeat = heartbeat
        self._limits = (delivery_limit, max_queued)
        self._pending: dict[str, collections.deque[dict[str, Any]]] = {}
        # Jobs whose events went to a reply queue lost with its connection.
        self._lost: set[str] = set()
        self._connect()

    def _connect(self) -> None:
        """Connect to the first node that answers, trying each once."""
        errors = []
        for _ in range(len(self._nodes.urls)):
            url = self._nodes.url
            try:
                self._open(url)
                return
            except CONNECTION_ERRORS as exc:
                errors.append(f"{node_name(url)}: {describe(exc)}")
                self._nodes.next(connected=False)
        raise BrokerUnavailable("cannot reach RabbitMQ: " + "; ".join(errors))

    def _open(self, url: str) -> None:
        parameters = pika.URLParameters(url)
        parameters.heartbeat = self._heartbeat
        parameters.connection_attempts = 1
        parameters.socket_timeout = 5
        self._connection = pika.BlockingConnection(parameters)
        topology.ensure(self._connection, *self._limits)
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        declared = self._channel.queue_declare("", exclusive=True, auto_delete=True)
        self.reply_queue: str = declared.method.queue
        self._channel.basic_consume(self.reply_queue, self._on_event, auto_ack=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._connection.is_open:
            self._connection.close()

    def submit(self, tool: str, args: list[str] | tuple[str, ...] = (),
               files: dict[str, bytes] | None = None, timeout: int | None = None,
               job_id: str | None = None) -> str:
        """Publish a request; returns its job id once the broker confirmed it."""
        job_id = job_id or contract.new_job_id()
        body = contract.JobRequest(job_id, tool, tuple(args), files or {}, timeout).encode()
        properties = pika.BasicProperties(
            message_id=job_id, correlation_id=job_id, reply_to=self.reply_queue,
            content_type=contract.CONTENT_TYPE, delivery_mode=pika.DeliveryMode.Persistent)
        self._pending[job_id] = collections.deque()
        try:
            self._publish_or_reconnect(job_id, tool, body, properties)
        except pika.exceptions.NackError:
            self._pending.pop(job_id, None)
            raise PublishRejected(f"the broker refused job {job_id}: the job queue is full "
                                  "(OCHO_MAX_QUEUED); try again later") from None
        except pika.exceptions.UnroutableError as exc:
            self._pending.pop(job_id, None)
            raise PublishRejected(f"the broker refused job {job_id}: {exc!r}") from None
        return job_id

    def _publish_or_reconnect(self, job_id: str, tool: str, body: bytes,
                              properties: pika.BasicProperties) -> None:
        try:
            self._channel.basic_publish(topology.JOBS_EXCHANGE, tool, body, properties,
                                        mandatory=True)
            return
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
            raise
        except CONNECTION_ERRORS:
            self._nodes.next(connected=True)
        self._close_quietly()
        self._lost.update(self._pending)  # their events went to the lost reply queue
        self._pending.clear()
        self._connect()
        self._lost.discard(job_id)
        self._pending[job_id] = collections.deque()
        properties.reply_to = self.reply_queue
        self._channel.basic_publish(topology.JOBS_EXCHANGE, tool, body, properties,
                                    mandatory=True)

    def _close_quietly(self) -> None:
        try:
            self.close()
        except CONNECTION_ERRORS:
            pass

    def cancel(self, job_id: str) -> None:
        body = contract.Cancel(job_id).encode()
        self._channel.basic_publish(
            topology.CONTROL_EXCHANGE, "", body,
            pika.BasicProperties(content_type=contract.CONTENT_TYPE,
                                 delivery_mode=pika.DeliveryMode.Persistent),
            mandatory=True)

    def events(self, job_id: str, timeout: float) -> Iterator[dict[str, Any]]:
        """Yield the job's events as they arrive, ending with `finished`.

        The output a `finished` event carries is yielded first as `output`
        events of its own, so that all output comes the same way."""
        if job_id in self._lost:
            raise BrokerUnavailable(f"the broker connection was lost after job {job_id} was "
                                    "submitted; read its outcome over HTTP")
        queue = self._pending.setdefault(job_id, collections.deque())
        deadline = time.monotonic() + timeout
        while True:
            while queue:
                event = queue.popleft()
                if event["type"] == contract.FINISHED:
                    for chunk in event.get("output") or ():
                        yield {"type": contract.OUTPUT, "id": event["id"],
                               "attempt": event["attempt"], **chunk}
                    yield event
                    self._pending.pop(job_id, None)
                    return
                yield event
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
            try:
                self._connection.process_data_events(time_limit=min(left, 1.0))
            except CONNECTION_ERRORS as exc:
                raise BrokerUnavailable(
                    f"the broker connection was lost while waiting for job {job_id} "
                    f"({describe(exc)}); read its outcome over HTTP") from None

    def wait(self, job_id: str, timeout: float) -> Result:
        """Collect the job's events until it finished; output in offset order."""
        events = list(self.events(job_id, timeout))
        finished = events[-1]
        attempt = finished["attempt"]
        chunks = {e["offset"]: e["data"] for e in events
                  if e["type"] == contract.OUTPUT and e["attempt"] == attempt}
        return Result(id=job_id, state=finished["state"], exit_code=finished.get("exit_code"),
                      ms=finished.get("ms", 0), truncated=finished.get("truncated", False),
                      attempt=attempt, reason=finished.get("reason"),
                      output="".join(chunks[offset] for offset in sorted(chunks)), events=events)

    def _on_event(self, _channel: Any, _method: Any, properties: pika.BasicProperties,
                  body: bytes) -> None:
        try:
            event = contract.event_fields(contract.decode_event(body))
        except InvalidRequest:
            return
        job_id = properties.correlation_id or event.get("id")
        # Events of a job this client no longer waits for are dropped.
        if job_id in self._pending:
            self._pending[job_id].append(event)
