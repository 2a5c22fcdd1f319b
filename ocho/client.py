"""A Python client for other services, built on the AMQP contract alone.

    with Client("amqp://guest:guest@127.0.0.1:5672/%2F") as client:
        job_id = client.submit("deploy", ["--dry-run", "zookeeper.yml"],
                               files={"zookeeper.yml": Path("zookeeper.yml").read_bytes()})
        result = client.wait(job_id, timeout=60)
        print(result.state, result.output)

One exclusive reply queue per client receives the events of every job it
submitted; they are told apart by `correlation_id`.
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
        parameters = pika.URLParameters(amqp_url)
        parameters.heartbeat = heartbeat
        try:
            self._connection = pika.BlockingConnection(parameters)
        except pika.exceptions.AMQPConnectionError as exc:
            raise BrokerUnavailable(f"cannot reach RabbitMQ: {exc!r}") from None
        topology.ensure(self._connection, delivery_limit, max_queued)
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        declared = self._channel.queue_declare("", exclusive=True, auto_delete=True)
        self.reply_queue: str = declared.method.queue
        self._pending: dict[str, collections.deque[dict[str, Any]]] = {}
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
            self._channel.basic_publish(topology.JOBS_EXCHANGE, tool, body, properties,
                                        mandatory=True)
        except pika.exceptions.NackError:
            del self._pending[job_id]
            raise PublishRejected(f"the broker refused job {job_id}: the job queue is full "
                                  "(OCHO_MAX_QUEUED); try again later") from None
        except pika.exceptions.UnroutableError as exc:
            del self._pending[job_id]
            raise PublishRejected(f"the broker refused job {job_id}: {exc!r}") from None
        return job_id

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
            self._connection.process_data_events(time_limit=min(left, 1.0))

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
