"""What a worker says about the requests it takes: the events of a job (`started`,
`output`, `finished`) and the rejection of a request that must never run.

Every event carries the request's digest, so that a request reusing another's id
never changes that job's record (the gateway's store compares it). A `finished`
event acks its request once the broker confirmed it (ocho.worker.publisher); a
rejected request is answered with a `finished`/`rejected` event when it has a
usable job id (or only to its reply queue when it has none), then dead-lettered.
Each job's outcome is logged and counted once.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from ocho import contract
from ocho.contract import Finished, Output, Started, shown
from ocho.worker import runner
from ocho.worker.deliveries import Delivery
from ocho.worker.metrics import WorkerMetrics
from ocho.worker.publisher import Publisher

log = logging.getLogger("ocho.worker")


class Reporter:
    def __init__(self, publisher: Publisher, metrics: WorkerMetrics, name: str) -> None:
        self._publisher = publisher
        self._metrics = metrics
        self._name = name

    def started(self, delivery: Delivery, job: runner.Job, started_ts: float,
                confirmed: threading.Event | None = None) -> None:
        """Publish the job's `started` event; `confirmed` is set once the broker confirms it."""
        self._publisher.publish(delivery, Started(job.id, job.attempt, self._name, started_ts,
                                                  job.tool, delivery.digest, tuple(job.args)),
                                confirmed=confirmed)

    def output(self, delivery: Delivery, job: runner.Job, stream: str, offset: int,
               data: str) -> None:
        self._publisher.publish(delivery, Output(job.id, job.attempt, stream, offset, data,
                                                 delivery.digest))

    def finish(self, delivery: Delivery, job: runner.Job, outcome: runner.Outcome) -> None:
        """Publish the job's `finished` event; its request is acked once it is confirmed."""
        log.info("job %s %s: exit %s in %d ms%s", job.id, outcome.state, outcome.exit_code,
                 outcome.ms, " (output truncated)" if outcome.truncated else "")
        self._metrics.job_finished(job.tool, outcome.state, outcome.ms)
        event = finished_event(job.id, job.tool, delivery, outcome, self._name)
        self._publisher.publish(delivery, dataclasses.replace(event, args=tuple(job.args)),
                                then_ack=True)

    def reject(self, delivery: Delivery, job_id: str | None, reason: str,
               tool: str | None = None) -> None:
        """Report a request that must never run, then dead-letter it."""
        log.warning("job %s rejected (message_id %s): %s", job_id or "(no usable id)",
                    shown(delivery.properties.message_id or "-", 80), shown(reason, 300))
        self._metrics.job_finished(tool, contract.REJECTED, 0)
        outcome = runner.Outcome(contract.REJECTED, None, 0, False, 0, reason=reason)
        if job_id is not None:
            self._publisher.publish(delivery, finished_event(job_id, tool, delivery, outcome,
                                                             self._name))
        elif delivery.reply_to:
            # No job to record, but the client may learn why (by its correlation_id):
            # `id` is its message_id as given, if any.
            given = delivery.properties.message_id
            self._publisher.publish(delivery, finished_event(
                given if isinstance(given, str) else None, tool, delivery, outcome,
                self._name), to_events=False)
        self._publisher.reject(delivery)


def finished_event(job_id: str | None, tool: str | None, delivery: Delivery,
                   outcome: runner.Outcome, worker: str) -> Finished:
    return Finished(
        id=job_id, attempt=delivery.attempt, state=outcome.state, exit_code=outcome.exit_code,
        ms=outcome.ms, truncated=outcome.truncated, output_bytes=outcome.output_bytes,
        reason=outcome.reason, tool=tool, worker=worker, started_ts=outcome.started_ts,
        output=tuple(contract.Chunk(**chunk) for chunk in outcome.tail), ts=time.time(),
        digest=delivery.digest)
