"""The AMQP side of a worker: consume requests, run them in job threads,
publish their events, and ack each request only after its `finished` event
was confirmed by the broker.

The connection is pika's asynchronous SelectConnection, owned by the main
thread's I/O loop, which also keeps heartbeats flowing while jobs run for
minutes. Job threads hand every publish and ack back to that loop with
`add_callback_threadsafe`. Events are published without waiting for each
confirm: confirms arrive in order, and the one for a `finished` event is
what acks its request.

No message can stop a worker: whatever fails while a request or a control
message is read (bad JSON, nesting, wrong types, a body too large, anything
raised) makes that one message rejected — logged once, with control
characters escaped, answered with a `finished`/`rejected` event when it has a
usable job id, dead-lettered — and the worker goes on. A request is run only
if its job id is a canonical UUID agreed by body and `message_id`, its
`content_type` is JSON, its routing key is its tool and its `reply_to` (if
any) is a server-named queue. Its `attempt` is 1 + the times the portal recorded
the job as started (ocho.worker.starts: the `started` events read from the cancel
log, read up to date before a redelivery is looked at); once that reaches
OCHO_DELIVERY_LIMIT the request is rejected instead of run. Redeliveries caused by
lost nodes or channels do not count. Every event
carries the request's digest, so that a request reusing another's id never
changes that job's record (the gateway's store compares it).
"""

from __future__ import annotations

import collections
import dataclasses
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

from ocho import contract, topology
from ocho.amqp import CONNECTION_ERRORS, Nodes, connection_parameters, describe
from ocho.contract import Cancel, Finished, JobRequest, Output, Started, Sync, shown
from ocho.errors import InvalidRequest, PayloadTooLarge
from ocho.settings import Settings
from ocho.worker import builtins, runner
from ocho.worker.limits import ProcessCounter
from ocho.worker.liveness import LivenessFile
from ocho.worker.metrics import WorkerMetrics
from ocho.worker.reaper import Reaper
from ocho.worker.starts import Starts

log = logging.getLogger("ocho.worker")

# How many cancelled job ids a worker remembers (about 15 MB): docs/amqp.md says
# what a flood of more cancels than this can and cannot do.
CANCELLED_MEMORY = 100_000
# How many job ids (with their request's digest) a worker remembers having run,
# to refuse a later request that reuses one of them for another body.
RAN_MEMORY = 10_000
# A control message is a few dozen bytes; a larger one is not even parsed.
MAX_CONTROL_BYTES = 64 * 1024
# Control-stream messages are acked in batches (the stream only needs credit back).
CONTROL_ACK_EVERY = 100
# Ignored control messages: at most this many log lines per window, then a count.
CONTROL_LOG_BURST = 10
CONTROL_LOG_WINDOW_S = 10.0
# How long a starting worker reads the cancel log before taking jobs anyway.
CANCEL_LOG_CATCH_UP_S = 30.0
# How long a redelivered request waits for the cancel log to be read up to date.
LOG_SYNC_WAIT_S = 5.0
# How often the I/O loop looks at the stop flag.
TICK_S = 0.1


@dataclasses.dataclass
class Delivery:
    channel: pika.channel.Channel
    tag: int
    properties: pika.BasicProperties
    attempt: int
    routing_key: str = ""
    digest: str | None = None  # of the body; set by the job thread (hashing takes time)

    @property
    def correlation_id(self) -> str | None:
        return self.properties.correlation_id or self.properties.message_id

    @property
    def reply_to(self) -> str | None:
        """Where events go besides ocho.events: only a server-named queue."""
        reply_to = self.properties.reply_to
        return reply_to if topology.is_reply_address(reply_to) else None


@dataclasses.dataclass
class RunningJob:
    job: runner.Job
    delivery: Delivery
    control: runner.Control


class Worker:
    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics(settings)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # Forked first, while this process has a single thread.
        self.reaper = Reaper()
        self.process_counter = ProcessCounter(settings, str(os.getpid()))
        self.zygote = runner.start_zygote(settings)  # warm tool starts; None when cold
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="job")
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, RunningJob] = {}
        self._cancelled: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._starts = Starts()
        # Sync markers in flight on the cancel log, and what to do once each is read.
        self._syncs: dict[str, Callable[[], None]] = {}
        self._ran: collections.OrderedDict[str, str | None] = collections.OrderedDict()
        self._cancels_forgotten = 0
        self._control_unacked = 0
        self._control_ignored = 0
        self._control_window = (0.0, 0)  # (start, lines logged in it)
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
        self.liveness = LivenessFile(settings.liveness_file)
        self._nodes = Nodes(settings.amqp_urls)
        self._opened = False  # whether the current connection got as far as open

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stopping.is_set():
            self._opened = False
            try:
                self._declare_topology()
                self._run_connection()
            except CONNECTION_ERRORS as exc:
                log.warning("worker %s: broker node %s unreachable (%s)", self.name,
                            self._nodes.name, describe(exc))
            except Exception as exc:  # noqa: BLE001 - a bug in a callback must not end the worker
                log.error("worker %s: unexpected %s; reconnecting", self.name,
                          shown(describe(exc), 300))
                log.debug("worker %s: the unexpected error's traceback", self.name,
                          exc_info=exc)
                self._drop_connection()
            self._abandon_running("the broker connection was lost")
            self._consuming = False
            self._next_node()
        self.pool.shutdown(wait=True)
        if self.zygote is not None:
            self.zygote.close()
        self.reaper.close()
        self.process_counter.close()
        log.info("worker %s stopped", self.name)

    def _next_node(self) -> None:
        """Go on with the next broker node at once; wait only after a whole round failed."""
        delay = self._nodes.next(self._opened)
        if delay and not self.stopping.is_set():
            log.info("worker %s: no broker node answered; next try (%s) in %.1f s",
                     self.name, self._nodes.name, delay)
            self.stopping.wait(delay)

    def _drop_connection(self) -> None:
        """Close a connection whose I/O loop was left by an exception, so that the broker
        hands its unacked requests to another worker at once."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is None:
            return
        try:
            if connection.is_open:
                connection.close()
                connection.ioloop.call_later(5, connection.ioloop.stop)  # if no CloseOk
                connection.ioloop.start()  # until _on_connection_closed stops it
        except Exception as exc:  # noqa: BLE001 - it is being dropped anyway
            log.debug("worker %s: closing a broken connection: %s", self.name, describe(exc))

    def stop(self) -> None:
        self.stopping.set()

    def _declare_topology(self) -> None:
        # Declaring is a chain of round trips; a short blocking connection reads plainer.
        connection = pika.BlockingConnection(connection_parameters(
            self.settings, f"ocho-worker {self.name} setup", self._nodes.url))
        try:
            topology.declare(connection.channel(), self.settings.delivery_limit,
                             self.settings.max_queued, self.settings.quorum_group_size,
                             self.settings.stream_cluster_size)
        finally:
            connection.close()

    def _run_connection(self) -> None:
        """One connection's life; returns when it has closed."""
        self._published = 0
        self._on_confirmed = {}
        self._sync_marker = None
        self._syncs = {}
        self._consumer_tag = None
        self._drain_deadline = None
        parameters = connection_parameters(self.settings, f"ocho-worker {self.name}",
                                           self._nodes.url)
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
        self.metrics.disconnected()
        if not self.stopping.is_set():
            log.warning("worker %s: broker connection lost (%s); reconnecting", self.name,
                        describe(reason))
        self._channel = None
        connection.ioloop.stop()

    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        self._opened = True
        log.info("worker %s: connected to broker node %s", self.name, self._nodes.name)
        self.metrics.connected()
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
            self._control_unacked = 0
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
        self._send(topology.CONTROL_EXCHANGE, "", Sync(self._sync_marker).encode(),
                   pika.BasicProperties(content_type=contract.CONTENT_TYPE))
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
        if self._consuming and connection.is_open:
            self.liveness.beat()
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
    def _on_control(self, channel: pika.channel.Channel, method: Any, props: Any,
                    body: bytes) -> None:
        self._ack_control(channel, method.delivery_tag)
        try:
            self._apply_control(body)
        except Exception as exc:  # noqa: BLE001 - no control message may stop the worker
            self._ignored_control(getattr(props, "message_id", None), exc)

    def _ack_control(self, channel: pika.channel.Channel, tag: int) -> None:
        """The stream wants credit back, not each ack: one ack now and then covers all."""
        self._control_unacked += 1
        if self._control_unacked >= CONTROL_ACK_EVERY:  # the rest stay within the prefetch
            channel.basic_ack(tag, multiple=True)
            self._control_unacked = 0

    def _apply_control(self, body: bytes) -> None:
        command = contract.decode_control(body, MAX_CONTROL_BYTES,
                                          self.settings.max_message_bytes)
        if isinstance(command, Started):  # a start the portal records
            if not self._starts.record(command):
                raise InvalidRequest(f"a started event of job {command.id} with attempt "
                                     f"{command.attempt}, beyond belief")
        elif isinstance(command, Cancel):
            self._cancel(command.id)
        elif command.id == self._sync_marker:
            self._start_consuming()
        elif command.id in self._syncs:
            self._syncs.pop(command.id)()

    def _cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled[job_id] = None
            self._cancelled.move_to_end(job_id)
            while len(self._cancelled) > CANCELLED_MEMORY:
                self._cancelled.popitem(last=False)
                self._cancels_forgotten += 1
                if self._cancels_forgotten == 1:
                    log.warning("worker %s: more than %d cancels; the oldest are forgotten "
                                "(see docs/amqp.md, Cancelling a job)", self.name,
                                CANCELLED_MEMORY)
            item = self._running.get(job_id)
        if item is not None:
            log.info("job %s cancel requested; killing its process group", job_id)
            item.control.cancel.set()

    def _ignored_control(self, message_id: object, exc: Exception) -> None:
        """One line per ignored message, but at most CONTROL_LOG_BURST per window: a
        flood of junk must not become a flood of log lines."""
        self._control_ignored += 1
        now = time.monotonic()
        start, lines = self._control_window
        if now - start > CONTROL_LOG_WINDOW_S:
            if lines > CONTROL_LOG_BURST:
                log.warning("worker %s: %d more control messages ignored in %.0f s",
                            self.name, lines - CONTROL_LOG_BURST, now - start)
            start, lines = now, 0
        self._control_window = (start, lines + 1)
        if lines < CONTROL_LOG_BURST:
            reason = str(exc) if isinstance(exc, InvalidRequest) else describe(exc)
            log.warning("worker %s: ignored control message %s: %s", self.name,
                        shown(message_id or "(no message_id)", 80), shown(reason, 200))

    # -- requests --------------------------------------------------------------------------
    def _on_request(self, channel: pika.channel.Channel, method: Any,
                    props: pika.BasicProperties, body: bytes) -> None:
        if method.redelivered:
            # Another worker may have started it just before its connection was lost:
            # read the cancel log up to now, so that its start is counted.
            self._after_log_read(lambda: self._dispatch(channel, method, props, body))
        else:
            self._dispatch(channel, method, props, body)

    def _after_log_read(self, then: Callable[[], None]) -> None:
        """Run `then` once the cancel log is read up to now, or after LOG_SYNC_WAIT_S
        (a log without a leader for a while must not hold the request forever)."""
        assert self._connection is not None
        marker = str(uuid.uuid4())
        self._syncs[marker] = then
        self._send(topology.CONTROL_EXCHANGE, "", Sync(marker).encode(),
                   pika.BasicProperties(content_type=contract.CONTENT_TYPE))

        def give_up() -> None:
            waiting = self._syncs.pop(marker, None)
            if waiting is not None:
                log.warning("worker %s: the cancel log was not read to its end in %ss; "
                            "counting the starts known so far", self.name, LOG_SYNC_WAIT_S)
                waiting()

        self._connection.ioloop.call_later(LOG_SYNC_WAIT_S, give_up)

    def _dispatch(self, channel: pika.channel.Channel, method: Any,
                  props: pika.BasicProperties, body: bytes) -> None:
        attempt = self._starts.count(props.message_id) + 1
        delivery = Delivery(channel, method.delivery_tag, props, attempt,
                            str(method.routing_key or ""))
        try:
            self.pool.submit(self.metrics.in_slot(self._handle), delivery, body)
        except RuntimeError:  # the pool is shut down: unacked, the broker redelivers it
            log.info("worker %s stopping: left request %s to the broker", self.name,
                     shown(props.message_id))

    def _handle(self, delivery: Delivery, body: bytes) -> None:
        try:
            delivery.digest = contract.request_digest(body)
            job = self._read(delivery, body)
        except Exception as exc:  # noqa: BLE001 - any failure to read is a rejected request
            try:
                self._refuse(delivery, body, exc)
            except Exception:
                log.exception("request %s: could not be rejected",
                              shown(delivery.properties.message_id))
            return
        try:
            if job is not None:
                self._take(delivery, job)
        except Exception:
            log.exception("job %s: the worker's job thread failed", job.id if job else "-")

    def _refuse(self, delivery: Delivery, body: bytes, exc: Exception) -> None:
        """Reject a request that cannot be read, answering it if it can be told apart."""
        reason = str(exc) if isinstance(exc, InvalidRequest) else \
            f"the request could not be read: {describe(exc)}"
        try:
            # An oversized body is not parsed even to find its id (message_id has it).
            oversized = len(body) > self.settings.max_message_bytes
            job_id, tool = _identify(delivery, b"" if oversized else body)
        except Exception:  # noqa: BLE001 - nothing more can be told of it
            job_id, tool = None, None
        self._reject(delivery, job_id, reason, tool)

    def _take(self, delivery: Delivery, job: runner.Job) -> None:
        if job.attempt > self.settings.delivery_limit:
            self._reject(delivery, job.id, f"started {job.attempt - 1} times without "
                         "finishing (OCHO_DELIVERY_LIMIT); not run again", job.tool)
            return
        with self._lock:
            cancelled = job.id in self._cancelled
        if cancelled:
            log.info("job %s was cancelled before it ran", job.id)
            self._finish(delivery, job, runner.Outcome(contract.CANCELLED, None, 0, False, 0,
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
        mine = RunningJob(job, delivery, control)
        with self._lock:
            self._running[job.id] = mine
        try:
            log.info("job %s started: %s attempt %d", job.id, job.tool, job.attempt)
            self.metrics.job_started(job.tool)

            def emit(stream: str, offset: int, data: str) -> None:
                self._publish(delivery, Output(job.id, job.attempt, stream, offset, data,
                                               delivery.digest))

            outcome = runner.run(self.settings, job, emit, control)
        except Exception:
            log.exception("job %s crashed the worker's job thread", job.id)
            outcome = runner.Outcome(contract.FAILED, None, 0, False, 0,
                                     reason="internal error in the worker; see its log")
        finally:
            with self._lock:
                if self._running.get(job.id) is mine:
                    del self._running[job.id]
                self._remember_ran(job.id, delivery.digest)
        if not reported:
            self._report(delivery, job, outcome, control)

    def _remember_ran(self, job_id: str, digest: str | None) -> None:
        self._ran[job_id] = digest
        self._ran.move_to_end(job_id)
        while len(self._ran) > RAN_MEMORY:
            self._ran.popitem(last=False)

    def _report(self, delivery: Delivery, job: runner.Job, outcome: runner.Outcome,
                control: runner.Control) -> None:
        if control.abandon:
            return  # killed, not finished: the broker delivers it again
        if outcome.state == contract.REJECTED:
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
            self._publish(delivery, Started(job.id, job.attempt, self.name, started_ts,
                                            job.tool, delivery.digest, tuple(job.args)))

        return runner.Control(on_spawn=on_spawn, on_exit=on_exit, on_running=on_running,
                              zygote=self.zygote)

    def _read(self, delivery: Delivery, body: bytes) -> runner.Job | None:
        """The job a delivery asks for; InvalidRequest naming what is wrong, or None
        for a copy of a request this worker is running now (acked, never run twice)."""
        # The same caps as over HTTP (gateway.submission), checked before any parsing.
        if len(body) > self.settings.max_message_bytes:
            raise PayloadTooLarge(f"body: {len(body)} bytes; at most "
                                  f"{self.settings.max_message_bytes} per request "
                                  "(from OCHO_MAX_REQUEST_BYTES)", field="body")
        _check_properties(delivery)
        request = JobRequest.decode(body, delivery.properties.message_id)
        if delivery.routing_key != request.tool:
            raise InvalidRequest(f"routing key {shown(delivery.routing_key, 80)!r} is not the "
                                 f"tool {request.tool!r}: publish with routing key = tool",
                                 field="routing_key")
        contract.check(request, self.settings)  # the same caps as over HTTP
        if request.tool not in builtins.NAMES and \
                runner.tool_path(self.settings, request.tool) is None:
            raise InvalidRequest(f"unknown tool {request.tool!r}", field="tool")
        if self._is_copy_of_running(request.id, delivery):
            return None
        request = request.with_timeout(self.settings.default_timeout, self.settings.max_timeout)
        return runner.Job(request.id, request.tool, list(request.args), dict(request.files),
                          request.timeout or self.settings.default_timeout, delivery.attempt)

    def _is_copy_of_running(self, job_id: str, delivery: Delivery) -> bool:
        """True for a second copy of a request that runs here now; InvalidRequest for
        another request that reuses the id of one this worker runs or ran."""
        with self._lock:
            running = self._running.get(job_id)
            ran = self._ran.get(job_id, delivery.digest)
        theirs = running.delivery.digest if running is not None else ran
        if theirs != delivery.digest:
            raise InvalidRequest(f"job id {job_id} is already taken by another request (a "
                                 "different body); give every request a new id", field="id")
        if running is None or running.control.abandon:
            return False  # a redelivery, or the same request published again later
        log.warning("job %s: a second copy of the running request arrived (message %s); "
                    "acked without running it twice", job_id, delivery.tag)
        self._on_io_thread(delivery, lambda: delivery.channel.basic_ack(delivery.tag))
        return True

    def _finish(self, delivery: Delivery, job: runner.Job, outcome: runner.Outcome) -> None:
        log.info("job %s %s: exit %s in %d ms%s", job.id, outcome.state, outcome.exit_code,
                 outcome.ms, " (output truncated)" if outcome.truncated else "")
        self.metrics.job_finished(job.tool, outcome.state, outcome.ms)
        event = _finished_event(job.id, job.tool, delivery, outcome, self.name)
        self._publish(delivery, dataclasses.replace(event, args=tuple(job.args)),
                      then_ack=True)

    def _reject(self, delivery: Delivery, job_id: str | None, reason: str,
                tool: str | None = None) -> None:
        """Report a request that must never run, then dead-letter it."""
        log.warning("job %s rejected (message_id %s): %s", job_id or "(no usable id)",
                    shown(delivery.properties.message_id or "-", 80), shown(reason, 300))
        self.metrics.job_finished(tool, contract.REJECTED, 0)
        outcome = runner.Outcome(contract.REJECTED, None, 0, False, 0, reason=reason)
        if job_id is not None:
            self._publish(delivery, _finished_event(job_id, tool, delivery, outcome, self.name))
        elif delivery.reply_to:
            # No job to record, but the client may learn why (by its correlation_id):
            # `id` is its message_id as given, if any.
            given = delivery.properties.message_id
            self._publish(delivery, _finished_event(given if isinstance(given, str) else None,
                                                    tool, delivery, outcome, self.name),
                          to_events=False)
        self._on_io_thread(delivery, lambda: delivery.channel.basic_reject(delivery.tag,
                                                                           requeue=False))

    # -- publishing through the connection's thread -----------------------------------------
    def _publish(self, delivery: Delivery, event: contract.Event, then_ack: bool = False,
                 to_events: bool = True) -> None:
        body = contract.encode_event(event)
        routing_key = topology.event_routing_key(event.type)
        properties = pika.BasicProperties(
            content_type=contract.CONTENT_TYPE,
            delivery_mode=pika.DeliveryMode.Persistent,
            correlation_id=delivery.correlation_id,
            message_id=str(uuid.uuid4()),
            type=event.type,
            headers={"job_id": event.id},
        )
        reply_to = delivery.reply_to

        def settle(confirmed: bool) -> None:
            if not self._is_current(delivery):
                return
            if confirmed:
                delivery.channel.basic_ack(delivery.tag)
            else:
                # The broker could not keep the result: run the job again.
                log.warning("job %s: finished event refused by the broker; requeued",
                            event.id)
                delivery.channel.basic_nack(delivery.tag, requeue=True)

        def send() -> None:
            # The reply queue first: a waiting client is the one in a hurry.
            if reply_to:
                self._send("", reply_to, body, properties)
            if to_events:
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
        channel = self._channel
        return channel is not None and delivery.channel is channel and channel.is_open

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


def _finished_event(job_id: str | None, tool: str | None, delivery: Delivery,
                    outcome: runner.Outcome, worker: str) -> Finished:
    return Finished(
        id=job_id, attempt=delivery.attempt, state=outcome.state, exit_code=outcome.exit_code,
        ms=outcome.ms, truncated=outcome.truncated, output_bytes=outcome.output_bytes,
        reason=outcome.reason, tool=tool, worker=worker, started_ts=outcome.started_ts,
        output=tuple(contract.Chunk(**chunk) for chunk in outcome.tail), ts=time.time(),
        digest=delivery.digest)


def _check_properties(delivery: Delivery) -> None:
    properties = delivery.properties
    content_type = (properties.content_type or "").split(";")[0].strip().lower()
    if content_type != contract.CONTENT_TYPE:
        raise InvalidRequest(f"content_type {shown(properties.content_type or '', 80)!r}: "
                             f"must be {contract.CONTENT_TYPE}", field="content_type")
    if properties.reply_to and delivery.reply_to is None:
        raise InvalidRequest(f"reply_to {shown(properties.reply_to, 80)!r}: must be a "
                             "server-named queue (amq.gen-…, declare it with an empty name) "
                             "or amq.rabbitmq.reply-to", field="reply_to")


def _identify(delivery: Delivery, body: bytes) -> tuple[str | None, str | None]:
    """The job id and tool of a request too broken to run, as far as they can be told."""
    salvaged = contract.salvage(body, delivery.properties.message_id)
    return salvaged.job_id, salvaged.tool
