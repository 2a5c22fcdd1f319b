"""The AMQP side of a worker: consume requests, run them in job threads, publish
their events, and ack each request only after its `finished` event was confirmed
by the broker. `Worker` wires the pieces and owns the lifecycle:

    connection.py  the broker connection, one named method per step
    cancel_log.py  the cancel log: cancels, recorded starts, Sync markers
    deliveries.py  a request as delivered, read into a job or refused
    jobs.py        the jobs running now and the ones that ran
    publisher.py   events published with confirms; acks and rejects
    reports.py     the events of a job, and the rejection of a request

No message can stop a worker: whatever fails while a request is read (bad JSON,
nesting, wrong types, a body too large, anything raised) makes that one request
rejected — logged once, with control characters escaped, answered with a
`finished`/`rejected` event when it has a usable job id, dead-lettered — and the
worker goes on (control messages: ocho.worker.cancel_log). Its `attempt` is 1 +
the times the portal recorded the job as started (the `started` events read from
the cancel log, read up to date before a redelivery is looked at); once that
reaches OCHO_DELIVERY_LIMIT the request is rejected instead of run. Redeliveries
caused by lost nodes or channels do not count. A second copy of a request that
runs here now is acked without running it twice.

Invariants: jobs run only in the pool's job threads, and everything the broker
sees happens on the I/O loop of the main thread. A lost connection abandons the
running jobs (the broker delivers them again) and the worker reconnects to the
next node; a stop takes nothing new, gives running jobs OCHO_SHUTDOWN_GRACE, and
closes once no job runs and every `finished` event is confirmed.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import pika.channel

from ocho import contract
from ocho.amqp import CONNECTION_ERRORS, Nodes, describe
from ocho.contract import shown
from ocho.errors import InvalidRequest
from ocho.settings import Settings
from ocho.worker import builtins, deliveries, runner
from ocho.worker.cancel_log import CancelLog
from ocho.worker.connection import Connection, Routes
from ocho.worker.deliveries import Delivery
from ocho.worker.jobs import Jobs, RunningJob
from ocho.worker.limits import ProcessCounter
from ocho.worker.liveness import LivenessFile
from ocho.worker.metrics import WorkerMetrics
from ocho.worker.publisher import Publisher
from ocho.worker.reaper import Reaper
from ocho.worker.reports import Reporter

log = logging.getLogger("ocho.worker")
# How long a redelivered request's tool waits for its `started` event's confirm (a
# quorum queue without a leader may take seconds; the tool then starts anyway).
STARTED_CONFIRM_WAIT_S = 1.0

# How often the I/O loop looks at the stop flag.
TICK_S = 0.1


class Worker:
    def __init__(self, settings: Settings, metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics(settings)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # Forked first, while this process has a single thread.
        self.reaper = Reaper()
        self.process_counter = ProcessCounter(settings, str(os.getpid()), self.reaper.pid)
        self.zygote = runner.start_zygote(settings)  # warm tool starts; None when cold
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="job")
        self.stopping = threading.Event()
        self.liveness = LivenessFile(settings.liveness_file)
        self._nodes = Nodes(settings.amqp_urls)
        self.connection = Connection(settings, self.name, self._nodes, self.metrics,
                                     self.stopping)
        self.publisher = Publisher(self.connection, self.name)
        self.reports = Reporter(self.publisher, self.metrics, self.name)
        self.jobs = Jobs()
        self.cancel_log = CancelLog(settings, self.name, self.publisher, self.connection,
                                    self.jobs.cancel)
        self._routes = Routes(on_request=self._on_request,
                              on_control=self.cancel_log.on_message,
                              on_confirm=self.publisher.on_confirm,
                              on_returned=self.publisher.on_returned,
                              catch_up=self._catch_up)
        self._drain_deadline: float | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._run_connection()
            except CONNECTION_ERRORS as exc:
                log.warning("worker %s: broker node %s unreachable (%s)", self.name,
                            self._nodes.name, describe(exc))
            except Exception as exc:  # noqa: BLE001 - a bug in a callback must not end the worker
                log.error("worker %s: unexpected %s; reconnecting", self.name,
                          shown(describe(exc), 300))
                log.debug("worker %s: the unexpected error's traceback", self.name,
                          exc_info=exc)
                self.connection.drop()
            self.jobs.abandon_all("the broker connection was lost")
            self.connection.forget()
            self._next_node()
        self._close()

    def stop(self) -> None:
        self.stopping.set()

    def _close(self) -> None:
        self.pool.shutdown(wait=True)
        if self.zygote is not None:
            self.zygote.close()
        self.reaper.close()
        self.process_counter.close()
        log.info("worker %s stopped", self.name)

    def _next_node(self) -> None:
        """Go on with the next broker node at once; wait only after a whole round failed."""
        delay = self._nodes.next(self.connection.opened)
        if delay and not self.stopping.is_set():
            log.info("worker %s: no broker node answered; next try (%s) in %.1f s",
                     self.name, self._nodes.name, delay)
            self.stopping.wait(delay)

    def _run_connection(self) -> None:
        """One connection's life; returns when it has closed."""
        self.publisher.reset()
        self.cancel_log.reset()
        self._drain_deadline = None
        self.connection.connect(self._routes)
        self.connection.call_later(TICK_S, self._tick)
        self.connection.serve()

    def _catch_up(self) -> None:
        """Both channels are ready: take jobs once the cancel log is read to its end."""
        self.cancel_log.catch_up(then=self.connection.start_consuming,
                                 done=self.connection.is_consuming)

    def _tick(self) -> None:
        if not self.connection.is_usable():
            return
        if self.stopping.is_set() and self.connection.is_open() and self._drain():
            return
        if self.connection.is_consuming() and self.connection.is_open():
            self.liveness.beat()
        self.connection.call_later(TICK_S, self._tick)

    def _drain(self) -> bool:
        """Stopping: True once the connection is being closed."""
        if self._drain_deadline is None:
            # Take nothing new; running jobs get the grace period to finish.
            self.connection.stop_consuming()
            self._drain_deadline = time.monotonic() + self.settings.shutdown_grace
            log.info("worker %s stopping: %d job(s) running, waiting up to %ss",
                     self.name, self.jobs.count(), self.settings.shutdown_grace)
        if time.monotonic() > self._drain_deadline:
            self.jobs.abandon_all("the worker is shutting down")
        # Close once no job runs and every finished event is confirmed (so
        # its request is acked); unacked requests go back to the queue.
        if (not self.jobs.count() and not self.publisher.waiting()) or \
                time.monotonic() > self._drain_deadline + 2 * self.settings.kill_grace + 5:
            self.connection.close()
            return True
        return False

    # -- requests (on the I/O thread) ------------------------------------------------------
    def _on_request(self, channel: pika.channel.Channel, method: Any,
                    props: pika.BasicProperties, body: bytes) -> None:
        dispatch = functools.partial(self._dispatch, channel, method, props, body)
        if method.redelivered:
            # Another worker may have started it just before its connection was lost:
            # read the cancel log up to now, so that its start is counted.
            self.cancel_log.after_read(dispatch)
        else:
            dispatch()

    def _dispatch(self, channel: pika.channel.Channel, method: Any,
                  props: pika.BasicProperties, body: bytes) -> None:
        self.process_counter.prime()  # its tool will be moved into a cgroup soon
        attempt = self.cancel_log.starts(props.message_id) + 1
        delivery = Delivery(channel, method.delivery_tag, props, attempt,
                            str(method.routing_key or ""), bool(method.redelivered))
        try:
            self.pool.submit(self.metrics.in_slot(self._handle), delivery, body)
        except RuntimeError:  # the pool is shut down: unacked, the broker redelivers it
            log.info("worker %s stopping: left request %s to the broker", self.name,
                     shown(props.message_id))

    # -- requests (in a job thread) --------------------------------------------------------
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

    def _read(self, delivery: Delivery, body: bytes) -> runner.Job | None:
        """The job a delivery asks for; InvalidRequest naming what is wrong, or None
        for a copy of a request this worker is running now (acked, never run twice)."""
        request = deliveries.read(self.settings, delivery, body)
        if self._is_copy_of_running(request.id, delivery):
            return None
        return deliveries.job_of(self.settings, request, delivery.attempt)

    def _refuse(self, delivery: Delivery, body: bytes, exc: Exception) -> None:
        """Reject a request that cannot be read, answering it if it can be told apart."""
        job_id, tool, reason = deliveries.refusal(self.settings, delivery, body, exc)
        self.reports.reject(delivery, job_id, reason, tool)

    def _is_copy_of_running(self, job_id: str, delivery: Delivery) -> bool:
        """True for a second copy of a request that runs here now; InvalidRequest for
        another request that reuses the id of one this worker runs or ran."""
        running, theirs = self.jobs.holder(job_id, delivery.digest)
        if theirs != delivery.digest:
            raise InvalidRequest(f"job id {job_id} is already taken by another request (a "
                                 "different body); give every request a new id", field="id")
        if running is None or running.control.abandon:
            return False  # a redelivery, or the same request published again later
        log.warning("job %s: a second copy of the running request arrived (message %s); "
                    "acked without running it twice", job_id, delivery.tag)
        self.publisher.ack(delivery)
        return True

    def _take(self, delivery: Delivery, job: runner.Job) -> None:
        if job.attempt > self.settings.delivery_limit:
            self.reports.reject(delivery, job.id, f"started {job.attempt - 1} times without "
                                "finishing (OCHO_DELIVERY_LIMIT); not run again", job.tool)
        elif self.cancel_log.is_cancelled(job.id):
            log.info("job %s was cancelled before it ran", job.id)
            self.reports.finish(delivery, job, runner.Outcome(
                contract.CANCELLED, None, 0, False, 0, reason="cancelled before it started"))
        elif job.tool in builtins.NAMES:
            self.reports.finish(delivery, job, builtins.answer(self.settings.tools_dir, job.args))
        else:
            self._run(delivery, job)

    def _run(self, delivery: Delivery, job: runner.Job) -> None:
        control = self._control_for(job, delivery)
        reported = False

        def report(outcome: runner.Outcome) -> None:
            nonlocal reported
            reported = True
            self._report(delivery, job, outcome, control)

        control.on_outcome = report
        mine = RunningJob(job, delivery, control)
        self.jobs.add(mine)
        # A cancel read between the check in _take and add() found no running job to
        # kill; once the job is in the table, either this check or the cancel sees it.
        if self.cancel_log.is_cancelled(job.id):
            control.cancel.set()
        try:
            log.info("job %s started: %s attempt %d", job.id, job.tool, job.attempt)
            self.metrics.job_started(job.tool)
            emit = functools.partial(self.reports.output, delivery, job)
            outcome = runner.run(self.settings, job, emit, control)
        except Exception:
            log.exception("job %s crashed the worker's job thread", job.id)
            outcome = runner.Outcome(contract.FAILED, None, 0, False, 0,
                                     reason="internal error in the worker; see its log")
        finally:
            self.jobs.done(mine)
        if not reported:
            self._report(delivery, job, outcome, control)

    def _report(self, delivery: Delivery, job: runner.Job, outcome: runner.Outcome,
                control: runner.Control) -> None:
        if control.abandon:
            return  # killed, not finished: the broker delivers it again
        if outcome.state == contract.REJECTED:
            self.reports.reject(delivery, job.id, outcome.reason or "rejected", job.tool)
            return
        self.reports.finish(delivery, job, outcome)

    def _control_for(self, job: runner.Job, delivery: Delivery) -> runner.Control:
        """The tool's process group is known to the reaper (so it dies with this
        worker) and counted in a pids cgroup for as long as it runs; `started` is
        published once the runner says the job has run long enough to need it, or
        before the tool starts for a redelivered request."""
        return runner.Control(on_spawn=functools.partial(self._on_spawn, job.id),
                              on_exit=functools.partial(self._on_exit, job.id),
                              on_running=functools.partial(self._announce, delivery, job),
                              announce_at_start=delivery.redelivered,
                              zygote=self.zygote)

    def _announce(self, delivery: Delivery, job: runner.Job, started_ts: float) -> None:
        """Publish `started`. A redelivered request is announced before its tool is
        started, and the tool waits for the broker's confirm (at most
        STARTED_CONFIRM_WAIT_S): a tool that kills its worker at once still counts as
        started, and such a poison request is rejected at OCHO_DELIVERY_LIMIT."""
        confirmed = threading.Event() if delivery.redelivered else None
        self.reports.started(delivery, job, started_ts, confirmed)
        if confirmed is not None and not confirmed.wait(STARTED_CONFIRM_WAIT_S):
            log.warning("job %s: started event not confirmed within %ss; the tool starts "
                        "anyway", job.id, STARTED_CONFIRM_WAIT_S)

    def _on_spawn(self, job_id: str, pid: int) -> None:
        self.reaper.track(pid)
        self.process_counter.attach(job_id, pid)

    def _on_exit(self, job_id: str, pid: int) -> None:
        self.reaper.forget(pid)
        self.process_counter.release(job_id)
        # Jobs come in runs: the next one's cgroup move then rarely waits for a grace
        # period (priming only at its delivery left ~2 % of moves waiting ~10 ms).
        self.process_counter.prime()
