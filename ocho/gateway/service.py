"""What a job's HTTP resources do, whatever the resource: submit, cancel, wait, read output.

Every blueprint (POST /jobs, the job lookups and streams, POST /shell) goes through
these functions; no blueprint imports another.

Invariants:

- waiting is one loop, `wakeups`: it registers its watch before the caller's first
  read, so a change recorded since is never missed, re-reads at least every
  RECHECK_S even unwoken, and ends at its deadline or when the gateway stops;
- a waiting slot is taken one way, `take_slot`, and given back exactly once by
  whoever took it (`release_slot`, or SlotHeld for a stream the server closes);
- a cancel is published before the store is told, so a worker that already took
  the job still hears it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

from werkzeug.exceptions import ServiceUnavailable

from ocho.errors import JobConflict
from ocho.gateway.handoff import accept_job
from ocho.gateway.services import Services
from ocho.gateway.slots import WaitingSlots
from ocho.gateway.store import Job, OutputSlice
from ocho.gateway.submission import Submission

log = logging.getLogger(__name__)

# A waiter re-reads the store this often even unwoken: a safety net only, since
# another gateway's changes wake it too (LISTEN/NOTIFY, see ocho.gateway.notifier).
RECHECK_S = 2.0
# How long a long-poll waits for a free waiting slot before answering as things are.
SLOT_WAIT_S = 0.5


def submit(portal: Services, submission: Submission) -> tuple[Job, bool]:
    """(job, True) for a new job the broker confirmed; (the existing job, False) for a
    retry of the same request with the same id (ocho.gateway.handoff)."""
    return accept_job(portal, submission)


def cancel(portal: Services, job_id: str) -> Job:
    """Cancel a job that has not ended (JobConflict if it has)."""
    job = portal.store.get_job(job_id)
    if job.terminal:
        raise JobConflict(f"job {job_id} already ended ({job.state}); there is nothing to cancel")
    return request_cancel(portal, job_id)


def request_cancel(portal: Services, job_id: str) -> Job:
    """Tell every worker to stop (or never start) the job; mark it cancelled if queued."""
    portal.publisher.publish_cancel(job_id)
    job = portal.store.cancel_queued(job_id)
    portal.notifier.notify([job_id])
    log.info("job %s cancel requested (%s)", job_id,
             "cancelled before it started" if job.state != "running"
             else "the worker will stop it")
    return job


# -- waiting ------------------------------------------------------------------------------


class Deadline:
    """A time limit that can start over (POST /shell's, when a job starts again)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.restart()

    def restart(self) -> None:
        self.at = time.monotonic() + self.seconds

    def left(self) -> float:
        return self.at - time.monotonic()


def wakeups(portal: Services, job_id: str, deadline: Deadline | None) -> Iterator[None]:
    """The one wait loop: yields at once, then whenever the job may have changed (at least
    every RECHECK_S); stops after the deadline passed or once the gateway is stopping.
    The caller re-reads the store at each turn."""
    with portal.notifier.watch(job_id) as watch:
        while True:
            yield
            left = RECHECK_S if deadline is None else min(deadline.left(), RECHECK_S)
            if left <= 0 or watch.closing:
                return
            watch.wait(left)


def stopping(portal: Services) -> bool:
    """The gateway is stopping: waits end early."""
    return portal.notifier.closing


def wait_until(portal: Services, job_id: str, wait: float, done: Callable[[Job], bool]) -> Job:
    """The job once `done(job)` holds, or as it is after `wait` seconds. Waiting takes a
    waiting slot; with none free within SLOT_WAIT_S, the job is answered as it is."""
    job = portal.store.get_job(job_id)
    if wait <= 0 or done(job):
        return job
    deadline = Deadline(wait)
    # Busy: wait a moment for a slot, then answer as things are. Answering at
    # once made clients that ask again spin, which cost more than the wait.
    if not take_slot(portal, patience=min(wait, SLOT_WAIT_S)):
        return portal.store.get_job(job_id)
    try:
        for _ in wakeups(portal, job_id, deadline):
            job = portal.store.get_job(job_id)
            if done(job):
                return job
        return job
    finally:
        release_slot(portal)


def read_output(portal: Services, job_id: str, offset: int, limit: int,
                wait: float = 0.0) -> OutputSlice:
    """The output past `offset`; with `wait`, held until there is some or the job ended."""
    out = portal.store.read_output(job_id, offset, limit)
    if wait and not out.chunks and not out.finished:
        def has_news(job: Job) -> bool:
            nonlocal out
            out = portal.store.read_output(job_id, offset, limit)
            return bool(out.chunks) or out.finished

        wait_until(portal, job_id, wait, has_news)
    return out


def whole_output(portal: Services, job_id: str) -> str:
    """The job's whole kept output (the store caps it; its truncation note included)."""
    parts: list[str] = []
    offset = 0
    while True:
        out = portal.store.read_output(job_id, offset)
        parts.append(out.data)
        if out.finished or not out.chunks:
            return "".join(parts)
        offset = out.next_offset


# -- waiting slots ------------------------------------------------------------------------


def take_slot(portal: Services, patience: float = 0.0, busy: str | None = None) -> bool:
    """Take one of the gateway's waiting slots, waiting up to `patience` seconds for one.
    False if none came free; with `busy`, a 503 saying so instead."""
    taken = (portal.waiting_slots.acquire(timeout=patience) if patience > 0
             else portal.waiting_slots.acquire(blocking=False))
    if not taken and busy is not None:
        raise ServiceUnavailable(busy)
    return taken


def release_slot(portal: Services) -> None:
    portal.waiting_slots.release()


class SlotHeld:
    """A streamed body that gives its waiting slot back when the server closes it, even
    if it never started (a generator's `finally` would not run then)."""

    def __init__(self, body: Iterator[str], slots: WaitingSlots) -> None:
        self._body = body
        self._slots: WaitingSlots | None = slots

    def __iter__(self) -> Iterator[str]:
        return self._body

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release()


def held(portal: Services, body: Iterable[str]) -> SlotHeld:
    """`body`, holding the slot the caller took until the server closes it."""
    return SlotHeld(iter(body), portal.waiting_slots)
