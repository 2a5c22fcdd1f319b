"""The jobs a worker runs now and the ones it ran, shared by the job threads and the
I/O loop (every access holds one lock).

Invariants: a job id is in the running table only while a job thread runs it, and
only the job thread that put it there takes it out (a newer run of the same id is
left alone); the ran table keeps the digest of the request each id last ran for,
the RAN_MEMORY most recent ids, so that a later request reusing an id for another
body can be refused. Abandoning a job (the connection is lost, or the shutdown
grace is over) kills it without a report, so the broker delivers it again.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading

from ocho.worker import runner
from ocho.worker.deliveries import Delivery

log = logging.getLogger("ocho.worker")

# How many job ids (with their request's digest) a worker remembers having run,
# to refuse a later request that reuses one of them for another body.
RAN_MEMORY = 10_000


@dataclasses.dataclass
class RunningJob:
    job: runner.Job
    delivery: Delivery
    control: runner.Control


class Jobs:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, RunningJob] = {}
        self._ran: collections.OrderedDict[str, str | None] = collections.OrderedDict()

    def count(self) -> int:
        """How many jobs run now."""
        return len(self._running)

    def add(self, running: RunningJob) -> None:
        with self._lock:
            self._running[running.job.id] = running

    def done(self, running: RunningJob) -> None:
        """The job thread of `running` is done with it: remember it as ran."""
        job_id = running.job.id
        with self._lock:
            if self._running.get(job_id) is running:
                del self._running[job_id]
            self._ran[job_id] = running.delivery.digest
            self._ran.move_to_end(job_id)
            while len(self._ran) > RAN_MEMORY:
                self._ran.popitem(last=False)

    def holder(self, job_id: str, digest: str | None) -> tuple[RunningJob | None, str | None]:
        """The job running under this id (or None), and the digest of the request that
        holds the id: the running one's, else the one that ran, else `digest`."""
        with self._lock:
            running = self._running.get(job_id)
            ran = self._ran.get(job_id, digest)
        return running, running.delivery.digest if running is not None else ran

    def cancel(self, job_id: str) -> None:
        """Kill the job if it runs here (it is then reported as cancelled)."""
        with self._lock:
            item = self._running.get(job_id)
        if item is not None:
            log.info("job %s cancel requested; killing its process group", job_id)
            item.control.cancel.set()

    def abandon_all(self, why: str) -> None:
        """Kill running jobs without reporting them: the broker redelivers them."""
        with self._lock:
            running = list(self._running.values())
        for item in running:
            if not item.control.abandon:
                log.info("job %s abandoned: %s; it will be redelivered", item.job.id, why)
            item.control.abandon = True
            item.control.cancel.set()
