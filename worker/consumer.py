"""The AMQP side of a worker: consume requests, run them in job threads,
publish their events, and ack each request only after its `finished` event
was confirmed by the broker.

pika connections are not thread-safe. The main thread owns the connection and
keeps calling `process_data_events`, which also keeps heartbeats flowing while
jobs run for minutes; job threads hand every publish and ack back to it with
`add_callback_threadsafe`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ocho import message, topology
from ocho.errors import InvalidRequest, PayloadTooLarge
from ocho.settings import Settings
from worker import runner
from worker.limits import ProcessCounter
from worker.reaper import Reaper

log = logging.getLogger("ocho.worker")

CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    ConnectionError,
)
# How many cancelled job ids a worker remembers.
CANCELLED_MEMORY = 100_000


@dataclasses.dataclass
class Delivery:
    channel: BlockingChannel
    tag: int
    properties: pika.BasicProperties
    attempt: int

    @property
    def correlation_id(self) -> str | None:
        return self.properties.correlation_id or self.properties.message_id


@dataclasses.dataclass
class RunningJob:
    job: runner.Job
    delivery: Delivery
    control: runner.Control


class Backoff:
    def __init__(self, first: float = 0.5, most: float = 15.0) -> None:
        self.first, self.most, self.next = first, most, first

    def wait(self, stopping: threading.Event) -> None:
        stopping.wait(self.next)
        self.next = min(self.next * 2, self.most)

    def reset(self) -> None:
        self.next = self.first


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # Forked first, while this process has a single thread.
        self.reaper = Reaper()
        self.process_counter = ProcessCounter(settings, str(os.getpid()))
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="job")
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, RunningJob] = {}
        self._cancelled: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._consumer_tag: str | None = None
        self._synced: str | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                self._connect()
                backoff.reset()
                self._serve()
            except CONNECTION_ERRORS as exc:
                log.warning("broker connection lost (%s); reconnecting", _describe(exc))
                self._abandon_running("the broker connection was lost")
                backoff.wait(self.stopping)
        self._close()
        self.pool.shutdown(wait=True)
        self.reaper.close()
        self.process_counter.close()
        log.info("worker %s stopped", self.name)

    def stop(self) -> None:
        self.stopping.set()

    def _connect(self) -> None:
        parameters = pika.URLParameters(self.settings.amqp_url)
        parameters.heartbeat = self.settings.heartbeat
        parameters.blocked_connection_timeout = 60
        parameters.client_properties = {"connection_name": f"ocho-worker {self.name}"}
        self._connection = pika.BlockingConnection(parameters)
        channel = self._connection.channel()
        channel.confirm_delivery()
        topology.declare(channel, self.settings.delivery_limit)
        channel.basic_qos(prefetch_count=self.settings.concurrency)
        self._channel = channel
        control = self._connection.channel()
        control.basic_qos(prefetch_count=1000)
        control.basic_consume(topology.CONTROL_LOG, self._on_control,
                              arguments={"x-stream-offset": "first"})
        self._catch_up_on_cancels(channel)
        self._consumer_tag = channel.basic_consume(topology.JOBS_QUEUE, self._on_request)
        log.info("worker %s consuming %s with %d job slots", self.name, topology.JOBS_QUEUE,
                 self.settings.concurrency)

    def _catch_up_on_cancels(self, channel: BlockingChannel) -> None:
        """Read the cancel log to its end before taking any job.

        The worker appends a marker of its own and reads until it sees it:
        then every cancel published before this moment is known.
        """
        assert self._connection is not None
        marker = str(uuid.uuid4())
        channel.basic_publish(topology.CONTROL_EXCHANGE, "",
                              json.dumps({"action": "sync", "id": marker}).encode(),
                              pika.BasicProperties(content_type=message.CONTENT_TYPE),
                              mandatory=True)
        deadline = time.monotonic() + 30
        while self._synced != marker and time.monotonic() < deadline:
            self._connection.process_data_events(time_limit=0.05)
        if self._synced != marker:
            log.warning("worker %s: the cancel log was not read to its end in 30 s", self.name)

    def _serve(self) -> None:
        assert self._connection is not None and self._channel is not None
        drain_deadline: float | None = None
        while True:
            if self.stopping.is_set() and drain_deadline is None:
                # Take nothing new; running jobs get the grace period to finish.
                if self._consumer_tag is not None:
                    self._channel.basic_cancel(self._consumer_tag)
                drain_deadline = time.monotonic() + self.settings.shutdown_grace
                log.info("worker %s stopping: %d job(s) running, waiting up to %ss",
                         self.name, len(self._running), self.settings.shutdown_grace)
            if drain_deadline is not None and (not self._running
                                               or time.monotonic() > drain_deadline):
                self._abandon_running("the worker is shutting down")
                # Let the abandoned jobs' threads end before the channel closes.
                self._connection.process_data_events(time_limit=0.1)
                return
            self._connection.process_data_events(time_limit=0.2)

    def _close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.close()
            except CONNECTION_ERRORS:
                pass
        self._connection = None
        self._channel = None

    def _abandon_running(self, why: str) -> None:
        """Kill running jobs without reporting them: the broker redelivers them."""
        with self._lock:
            running = list(self._running.values())
        for item in running:
            log.info("job %s abandoned: %s; it will be redelivered", item.job.id, why)
            item.control.abandon = True
            item.control.cancel.set()

    # -- control ---------------------------------------------------------------------------
    def _on_control(self, channel: BlockingChannel, method: Any, _props: Any, body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)
        try:
            command = json.loads(body)
            action, job_id = command["action"], str(command["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a control message that is not {action, id}: %.200r", body)
            return
        if action == "sync":
            self._synced = job_id
            return
        if action != "cancel":
            log.warning("ignored unknown control action %r for job %s", action, job_id)
            return
        with self._lock:
            self._cancelled[job_id] = None
            while len(self._cancelled) > CANCELLED_MEMORY:
                self._cancelled.popitem(last=False)
            item = self._running.get(job_id)
        if item is not None:
            log.info("job %s cancel requested; killing its process group", job_id)
            item.control.cancel.set()

    # -- requests --------------------------------------------------------------------------
    def _on_request(self, channel: BlockingChannel, method: Any, props: pika.BasicProperties,
                    body: bytes) -> None:
        headers = props.headers or {}
        attempt = 1 + int(headers.get("x-delivery-count") or 0)
        delivery = Delivery(channel, method.delivery_tag, props, attempt)
        self.pool.submit(self._handle, delivery, body)

    def _handle(self, delivery: Delivery, body: bytes) -> None:
        try:
            job = self._parse(delivery, body)
        except InvalidRequest as exc:
            # An oversized body is not parsed even to find its id (message_id has it).
            oversized = len(body) > self.settings.max_message_bytes
            job_id, tool = _identify(delivery, b"" if oversized else body)
            self._reject(delivery, job_id, str(exc), tool)
            return
        with self._lock:
            cancelled = job.id in self._cancelled
        if cancelled:
            log.info("job %s was cancelled before it ran", job.id)
            self._finish(delivery, job, runner.Outcome(message.CANCELLED, None, 0, False, 0,
                                                       reason="cancelled before it started"))
            return
        def on_spawn(pid: int) -> None:
            self.reaper.track(pid)
            self.process_counter.attach(job.id, pid)

        def on_exit(pid: int) -> None:
            self.reaper.forget(pid)
            self.process_counter.release(job.id)

        control = runner.Control(on_spawn=on_spawn, on_exit=on_exit)
        with self._lock:
            self._running[job.id] = RunningJob(job, delivery, control)
        try:
            log.info("job %s started: %s attempt %d", job.id, job.tool, job.attempt)
            self._publish(delivery, {"type": message.STARTED, "id": job.id, "tool": job.tool,
                                     "attempt": job.attempt, "worker": self.name,
                                     "ts": time.time()})

            def emit(stream: str, offset: int, data: str) -> None:
                self._publish(delivery, {"type": message.OUTPUT, "id": job.id,
                                         "attempt": job.attempt, "stream": stream,
                                         "offset": offset, "data": data})

            outcome = runner.run(self.settings, job, emit, control)
        except Exception:
            log.exception("job %s crashed the worker's job thread", job.id)
            outcome = runner.Outcome(message.FAILED, None, 0, False, 0,
                                     reason="internal error in the worker; see its log")
        finally:
            with self._lock:
                self._running.pop(job.id, None)
        if control.abandon:
            return
        if outcome.state == message.REJECTED:
            self._reject(delivery, job.id, outcome.reason or "rejected", job.tool)
            return
        self._finish(delivery, job, outcome)

    def _parse(self, delivery: Delivery, body: bytes) -> runner.Job:
        # The same caps as over HTTP (gateway.submission), checked before any parsing.
        if len(body) > self.settings.max_message_bytes:
            raise PayloadTooLarge(f"body: {len(body)} bytes; at most "
                                  f"{self.settings.max_message_bytes} per request "
                                  "(from OCHO_MAX_REQUEST_BYTES)", field="body")
        request = message.load_request(body)
        files = message.decode_files(request["files"])
        if len(files) > self.settings.max_files:
            raise InvalidRequest(f"files: {len(files)} files; at most {self.settings.max_files}"
                                 " are allowed per job", field="files")
        for name, content in files.items():
            if len(content) > self.settings.max_file_bytes:
                raise InvalidRequest(f"files.{name}: {len(content)} bytes; at most "
                                     f"{self.settings.max_file_bytes} per file", field="files")
        total = sum(len(content) for content in files.values())
        if total > self.settings.max_request_bytes:
            raise PayloadTooLarge(f"files: {total} bytes in all; at most "
                                  f"{self.settings.max_request_bytes} per job", field="files")
        if runner.tool_path(self.settings, request["tool"]) is None:
            raise InvalidRequest(f"unknown tool {request['tool']!r}", field="tool")
        timeout = min(request["timeout"] or self.settings.default_timeout,
                      self.settings.max_timeout)
        return runner.Job(request["id"], request["tool"], request["args"], files, timeout,
                          delivery.attempt)

    def _finish(self, delivery: Delivery, job: runner.Job, outcome: runner.Outcome) -> None:
        log.info("job %s %s: exit %s in %d ms%s", job.id, outcome.state, outcome.exit_code,
                 outcome.ms, " (output truncated)" if outcome.truncated else "")
        self._publish(delivery, _finished_event(job.id, job.tool, delivery.attempt, outcome),
                      then_ack=True)

    def _reject(self, delivery: Delivery, job_id: str | None, reason: str,
                tool: str | None = None) -> None:
        """Report a request that must never run, then dead-letter it."""
        log.warning("job %s rejected: %s", job_id or "(no id)", reason)
        if job_id is not None:
            outcome = runner.Outcome(message.REJECTED, None, 0, False, 0, reason=reason)
            self._publish(delivery, _finished_event(job_id, tool, delivery.attempt, outcome))
        self._on_io_thread(delivery, lambda: delivery.channel.basic_reject(delivery.tag,
                                                                           requeue=False))

    # -- publishing through the connection's thread -----------------------------------------
    def _publish(self, delivery: Delivery, event: dict[str, Any], then_ack: bool = False) -> None:
        body = message.dump_event(event)
        routing_key = topology.event_routing_key(event["type"])
        properties = pika.BasicProperties(
            content_type=message.CONTENT_TYPE,
            delivery_mode=pika.DeliveryMode.Persistent,
            correlation_id=delivery.correlation_id,
            message_id=str(uuid.uuid4()),
            type=event["type"],
            headers={"job_id": event["id"]},
        )
        reply_to = delivery.properties.reply_to

        def send() -> None:
            channel = delivery.channel
            channel.basic_publish(topology.EVENTS_EXCHANGE, routing_key, body, properties,
                                  mandatory=True)
            if reply_to:
                try:
                    channel.basic_publish("", reply_to, body, properties, mandatory=True)
                except pika.exceptions.UnroutableError:
                    log.info("job %s: reply queue %s is gone; event kept in ocho.events only",
                             event["id"], reply_to)
            if then_ack:
                channel.basic_ack(delivery.tag)

        self._on_io_thread(delivery, send)

    def _on_io_thread(self, delivery: Delivery, callback: Any) -> None:
        def guarded() -> None:
            # A delivery tag belongs to its channel: after a reconnect it is
            # stale and must never be acked on the new one.
            if delivery.channel is not self._channel or not delivery.channel.is_open:
                return
            callback()

        connection = self._connection
        if connection is None:
            return
        try:
            connection.add_callback_threadsafe(guarded)
        except CONNECTION_ERRORS:
            pass


def _finished_event(job_id: str, tool: str | None, attempt: int,
                    outcome: runner.Outcome) -> dict[str, Any]:
    return {"type": message.FINISHED, "id": job_id, "tool": tool, "attempt": attempt,
            "state": outcome.state, "exit_code": outcome.exit_code, "ms": outcome.ms,
            "truncated": outcome.truncated, "output_bytes": outcome.output_bytes,
            "reason": outcome.reason, "ts": time.time()}


def _identify(delivery: Delivery, body: bytes) -> tuple[str | None, str | None]:
    """The job id and tool of a request too broken to run, as far as they can be told."""
    candidates = [delivery.properties.message_id]
    tool = None
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            candidates.insert(0, parsed.get("id"))
            if isinstance(parsed.get("tool"), str) and message.TOOL_NAME.match(parsed["tool"]):
                tool = parsed["tool"]
    except (ValueError, UnicodeDecodeError):
        pass
    for candidate in candidates:
        try:
            return str(uuid.UUID(str(candidate))), tool
        except ValueError:
            continue
    return None, tool


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
