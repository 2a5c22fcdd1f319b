"""The AMQP side of a worker: consume requests, run them in job threads,
publish their events, and ack each request only after its `finished` event
was confirmed by the broker.

The connection is pika's asynchronous SelectConnection, owned by the main
thread's I/O loop, which also keeps heartbeats flowing while jobs run for
minutes. Job threads hand every publish and ack back to that loop with
`add_callback_threadsafe`. Events are published without waiting for each
confirm: confirms arrive in order, and the one for a `finished` event is
what acks its request.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pika.channel
import pika.spec

from ocho import message, topology
from ocho.amqp import CONNECTION_ERRORS, Backoff, connection_parameters, describe
from ocho.errors import InvalidRequest, PayloadTooLarge
from ocho.settings import Settings
from ocho.worker import builtins, runner
from ocho.worker.limits import ProcessCounter
from ocho.worker.reaper import Reaper

log = logging.getLogger("ocho.worker")

# How many cancelled job ids a worker remembers.
CANCELLED_MEMORY = 100_000
# How long a starting worker reads the cancel log before taking jobs anyway.
CANCEL_LOG_CATCH_UP_S = 30.0
# How often the I/O loop looks at the stop flag.
TICK_S = 0.1


@dataclasses.dataclass
class Delivery:
    channel: pika.channel.Channel
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
        self._connection: pika.SelectConnection | None = None
        self._channel: pika.channel.Channel | None = None
        self._consumer_tag: str | None = None
        self._sync_marker: str | None = None
        self._drain_deadline: float | None = None
        # Publisher confirms: the channel numbers publishes 1, 2, 3 … and
        # confirms them in that order; a callback waits on some of them.
        self._published = 0
        self._on_confirmed: dict[int, Callable[[bool], None]] = {}
        self._consuming = False

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                self._declare_topology()
                self._run_connection()
            except CONNECTION_ERRORS as exc:
                log.warning("worker %s: broker unreachable (%s); retrying", self.name,
                            describe(exc))
            self._abandon_running("the broker connection was lost")
            if self._consuming:
                backoff.reset()
            self._consuming = False
            if not self.stopping.is_set():
                backoff.wait(self.stopping)
        self.pool.shutdown(wait=True)
        self.reaper.close()
        self.process_counter.close()
        log.info("worker %s stopped", self.name)

    def stop(self) -> None:
        self.stopping.set()

    def _declare_topology(self) -> None:
        # Declaring is a chain of round trips; a short blocking connection reads plainer.
        connection = pika.BlockingConnection(
            connection_parameters(self.settings, f"ocho-worker {self.name} setup"))
        try:
            topology.declare(connection.channel(), self.settings.delivery_limit)
        finally:
            connection.close()

    def _run_connection(self) -> None:
        """One connection's life; returns when it has closed."""
        self._published = 0
        self._on_confirmed = {}
        self._sync_marker = None
        self._consumer_tag = None
        self._drain_deadline = None
        parameters = connection_parameters(self.settings, f"ocho-worker {self.name}")
        parameters.heartbeat = self.settings.heartbeat
        parameters.socket_timeout = 10
        self._connection = pika.SelectConnection(
            parameters,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_failed,
            on_close_callback=self._on_connection_closed,
        )
        self._connection.ioloop.call_later(TICK_S, self._tick)
        self._connection.ioloop.start()
        self._connection = None
        self._channel = None

    def _on_connection_failed(self, connection: pika.SelectConnection, error: Any) -> None:
        log.warning("worker %s: cannot connect to the broker (%s)", self.name, describe(error))
        connection.ioloop.stop()

    def _on_connection_closed(self, connection: pika.SelectConnection, reason: Any) -> None:
        if not self.stopping.is_set():
            log.warning("worker %s: broker connection lost (%s); reconnecting", self.name,
                        describe(reason))
        self._channel = None
        connection.ioloop.stop()

    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_returned)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm,
                                 callback=lambda _frame: channel.basic_qos(
                                     prefetch_count=self.settings.concurrency,
                                     callback=lambda _frame: self._open_control_channel()))

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: Any) -> None:
        # Without its channel the worker can neither report nor ack: start over.
        if self._connection is not None and self._connection.is_open:
            log.warning("worker %s: channel closed (%s); reconnecting", self.name,
                        describe(reason))
            self._connection.close()

    def _open_control_channel(self) -> None:
        assert self._connection is not None

        def on_open(control: pika.channel.Channel) -> None:
            # Without the cancel log a cancel could be missed: start over.
            control.add_on_close_callback(self._on_channel_closed)
            control.basic_qos(prefetch_count=1000, callback=lambda _frame: control.basic_consume(
                topology.CONTROL_LOG, self._on_control,
                arguments={"x-stream-offset": "first"},
                callback=lambda _frame: self._catch_up_on_cancels()))

        self._connection.channel(on_open_callback=on_open)

    def _catch_up_on_cancels(self) -> None:
        """Read the cancel log to its end before taking any job.

        The worker appends a marker of its own and reads until it sees it:
        then every cancel published before this moment is known.
        """
        assert self._connection is not None
        self._sync_marker = str(uuid.uuid4())
        self._send(topology.CONTROL_EXCHANGE, "",
                   json.dumps({"action": "sync", "id": self._sync_marker}).encode(),
                   pika.BasicProperties(content_type=message.CONTENT_TYPE))
        marker = self._sync_marker

        def give_up() -> None:
            if not self._consuming and self._sync_marker == marker:
                log.warning("worker %s: the cancel log was not read to its end in %ss",
                            self.name, CANCEL_LOG_CATCH_UP_S)
                self._start_consuming()

        self._connection.ioloop.call_later(CANCEL_LOG_CATCH_UP_S, give_up)

    def _start_consuming(self) -> None:
        if self._consuming or self._channel is None or self.stopping.is_set():
            return
        self._consuming = True
        self._consumer_tag = self._channel.basic_consume(topology.JOBS_QUEUE, self._on_request)
        log.info("worker %s consuming %s with %d job slots", self.name, topology.JOBS_QUEUE,
                 self.settings.concurrency)

    def _tick(self) -> None:
        connection = self._connection
        if connection is None or connection.is_closing or connection.is_closed:
            return
        if self.stopping.is_set() and connection.is_open:
            if self._drain_deadline is None:
                # Take nothing new; running jobs get the grace period to finish.
                if self._consumer_tag is not None and self._channel is not None:
                    self._channel.basic_cancel(self._consumer_tag)
                self._drain_deadline = time.monotonic() + self.settings.shutdown_grace
                log.info("worker %s stopping: %d job(s) running, waiting up to %ss",
                         self.name, len(self._running), self.settings.shutdown_grace)
            overdue = time.monotonic() > self._drain_deadline
            if overdue:
                self._abandon_running("the worker is shutting down")
            # Close once no job runs and every finished event is confirmed (so
            # its request is acked); unacked requests go back to the queue.
            if (not self._running and not self._on_confirmed) or \
                    time.monotonic() > self._drain_deadline + 2 * self.settings.kill_grace + 5:
                connection.close()
                return
        connection.ioloop.call_later(TICK_S, self._tick)

    def _abandon_running(self, why: str) -> None:
        """Kill running jobs without reporting them: the broker redelivers them."""
        with self._lock:
            running = list(self._running.values())
        for item in running:
            if not item.control.abandon:
                log.info("job %s abandoned: %s; it will be redelivered", item.job.id, why)
            item.control.abandon = True
            item.control.cancel.set()

    # -- control ---------------------------------------------------------------------------
    def _on_control(self, channel: pika.channel.Channel, method: Any, _props: Any,
                    body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)
        try:
            command = json.loads(body)
            action, job_id = command["action"], str(command["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a control message that is not {action, id}: %.200r", body)
            return
        if action == "sync":
            if job_id == self._sync_marker:
                self._start_consuming()
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
    def _on_request(self, channel: pika.channel.Channel, method: Any,
                    props: pika.BasicProperties, body: bytes) -> None:
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
        if job.tool in builtins.NAMES:
            self._finish(delivery, job, builtins.answer(self.settings.tools_dir, job.args))
            return
        control = self._control_for(job, delivery)
        reported = False

        def report(outcome: runner.Outcome) -> None:
            nonlocal reported
            reported = True
            self._report(delivery, job, outcome, control)

        control.on_outcome = report
        with self._lock:
            self._running[job.id] = RunningJob(job, delivery, control)
        try:
            log.info("job %s started: %s attempt %d", job.id, job.tool, job.attempt)

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
        if not reported:
            self._report(delivery, job, outcome, control)

    def _report(self, delivery: Delivery, job: runner.Job, outcome: runner.Outcome,
                control: runner.Control) -> None:
        if control.abandon:
            return  # killed, not finished: the broker delivers it again
        if outcome.state == message.REJECTED:
            self._reject(delivery, job.id, outcome.reason or "rejected", job.tool)
            return
        self._finish(delivery, job, outcome)

    def _control_for(self, job: runner.Job, delivery: Delivery) -> runner.Control:
        """The tool's process group is known to the reaper (so it dies with this
        worker) and counted in a pids cgroup for as long as it runs; `started` is
        published once the runner says the job has run long enough to need it."""

        def on_spawn(pid: int) -> None:
            self.reaper.track(pid)
            self.process_counter.attach(job.id, pid)

        def on_exit(pid: int) -> None:
            self.reaper.forget(pid)
            self.process_counter.release(job.id)

        def on_running(started_ts: float) -> None:
            self._publish(delivery, {"type": message.STARTED, "id": job.id, "tool": job.tool,
                                     "args": job.args, "attempt": job.attempt,
                                     "worker": self.name,
                                     "ts": started_ts})

        return runner.Control(on_spawn=on_spawn, on_exit=on_exit, on_running=on_running)

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
        if request["tool"] not in builtins.NAMES and \
                runner.tool_path(self.settings, request["tool"]) is None:
            raise InvalidRequest(f"unknown tool {request['tool']!r}", field="tool")
        timeout = min(request["timeout"] or self.settings.default_timeout,
                      self.settings.max_timeout)
        return runner.Job(request["id"], request["tool"], request["args"], files, timeout,
                          delivery.attempt)

    def _finish(self, delivery: Delivery, job: runner.Job, outcome: runner.Outcome) -> None:
        log.info("job %s %s: exit %s in %d ms%s", job.id, outcome.state, outcome.exit_code,
                 outcome.ms, " (output truncated)" if outcome.truncated else "")
        event = _finished_event(job.id, job.tool, delivery.attempt, outcome, self.name)
        self._publish(delivery, {**event, "args": job.args}, then_ack=True)

    def _reject(self, delivery: Delivery, job_id: str | None, reason: str,
                tool: str | None = None) -> None:
        """Report a request that must never run, then dead-letter it."""
        log.warning("job %s rejected: %s", job_id or "(no id)", reason)
        if job_id is not None:
            outcome = runner.Outcome(message.REJECTED, None, 0, False, 0, reason=reason)
            self._publish(delivery, _finished_event(job_id, tool, delivery.attempt, outcome,
                                                    self.name))
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

        def settle(confirmed: bool) -> None:
            if not self._is_current(delivery):
                return
            if confirmed:
                delivery.channel.basic_ack(delivery.tag)
            else:
                # The broker could not keep the result: run the job again.
                log.warning("job %s: finished event refused by the broker; requeued",
                            event["id"])
                delivery.channel.basic_nack(delivery.tag, requeue=True)

        def send() -> None:
            # The reply queue first: a waiting client is the one in a hurry.
            if reply_to:
                self._send("", reply_to, body, properties)
            self._send(topology.EVENTS_EXCHANGE, routing_key, body, properties,
                       settle if then_ack else None)

        self._on_io_thread(delivery, send)

    def _send(self, exchange: str, routing_key: str, body: bytes,
              properties: pika.BasicProperties,
              on_confirmed: Callable[[bool], None] | None = None) -> None:
        assert self._channel is not None
        self._channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        self._published += 1
        if on_confirmed is not None:
            self._on_confirmed[self._published] = on_confirmed

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        confirmed = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            settled = [n for n in self._on_confirmed if n <= method.delivery_tag]
        else:
            settled = [method.delivery_tag] if method.delivery_tag in self._on_confirmed else []
        for number in sorted(settled):
            self._on_confirmed.pop(number)(confirmed)

    def _on_returned(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        if method.exchange == "":
            log.info("job %s: reply queue %s is gone; events stay in %s only",
                     (properties.headers or {}).get("job_id"), method.routing_key,
                     topology.EVENTS_EXCHANGE)
        else:
            log.error("event for job %s unroutable on %s (%s): is %s bound?",
                      (properties.headers or {}).get("job_id"), method.exchange,
                      method.reply_text, topology.RECORDER_QUEUE)

    def _is_current(self, delivery: Delivery) -> bool:
        # A delivery tag belongs to its channel: after a reconnect it is stale
        # and must never be acked on the new one.
        return delivery.channel is self._channel and delivery.channel.is_open

    def _on_io_thread(self, delivery: Delivery, callback: Callable[[], None]) -> None:
        def guarded() -> None:
            if self._is_current(delivery):
                callback()

        connection = self._connection
        if connection is None:
            return
        try:
            connection.ioloop.add_callback_threadsafe(guarded)
        except Exception as exc:  # the loop is closing: the broker redelivers the job
            log.debug("worker %s: dropped a callback for job %s: %s", self.name,
                      delivery.properties.message_id, describe(exc))


def _finished_event(job_id: str, tool: str | None, attempt: int, outcome: runner.Outcome,
                    worker: str) -> dict[str, Any]:
    return {"type": message.FINISHED, "id": job_id, "tool": tool, "args": None,
            "attempt": attempt,
            "state": outcome.state, "exit_code": outcome.exit_code, "ms": outcome.ms,
            "truncated": outcome.truncated, "output_bytes": outcome.output_bytes,
            "reason": outcome.reason, "worker": worker, "started_ts": outcome.started_ts,
            "output": outcome.tail, "ts": time.time()}


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
