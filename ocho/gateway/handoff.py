"""From the store to the queue: a job is recorded before it is published, and nothing is
lost in between.

Invariants:

- a job is recorded `submitting` with its request body, published with confirms,
  then marked `queued`. A gateway killed in between leaves a `submitting` row
  that any gateway publishes again later; never a row nothing will publish;
- a publish that fails (broker away, message refused) removes the row again and
  the client gets the error (503): nothing was accepted;
- a retry with the same id and the same request (tool, args, files, timeout)
  gets the existing job, never a second one (a different request with that id
  is a conflict). If the job is still `submitting` and nobody tried to publish
  it for `recover_after` seconds, its gateway died: the retry publishes it;
- `republish` is the one way a left-over row is published again: claimed by one
  gateway at a time, sent as the same body with the same id (workers and the
  store treat a duplicate of a job id as the same job), or rejected with a
  reason when it cannot be.
"""

from __future__ import annotations

import logging
import shlex
import time
from typing import TYPE_CHECKING

from ocho.contract import SUBMITTING, JobRequest, request_digest
from ocho.errors import BrokerUnavailable, InvalidRequest, PublishRejected
from ocho.gateway.store import Job, Unconfirmed
from ocho.gateway.submission import Submission

if TYPE_CHECKING:
    from ocho.gateway.services import Services

log = logging.getLogger(__name__)

# A left-over request older than this is rejected instead of published: whoever
# sent it has long stopped waiting for it.
REPUBLISH_WITHIN_S = 3600.0


def accept_job(portal: Services, submission: Submission) -> tuple[Job, bool]:
    """How every job is accepted (through ocho.gateway.service.submit, for POST /jobs and
    POST /shell): (job, True) for a new job, published and confirmed; (the existing job,
    False) for a retry of the same request with the same id."""
    request = submission.request
    body = request.encode()
    job, created = portal.store.record_submission(
        request.id, request.tool, list(request.args), timeout=request.timeout,
        correlation_id=submission.correlation_id, request=body, digest=request_digest(body))
    if not created:
        log.info("job %s submitted again with the same request: it is %s", job.id, job.state)
        return _retried(portal, job), False
    try:
        portal.publisher.publish_job(request, correlation_id=submission.correlation_id)
    except (BrokerUnavailable, PublishRejected) as exc:
        portal.store.delete_unpublished(job.id)
        log.warning("job %s not submitted: %s", job.id, exc)
        raise
    job = portal.store.confirm_published(job.id)
    log.info("job %s submitted: %s (%d file(s), timeout %d s)", job.id,
             shlex.join([job.tool or "", *job.args]), len(request.files), job.timeout)
    return job, True


def _retried(portal: Services, job: Job) -> Job:
    if job.state != SUBMITTING:
        return job
    orphan = portal.store.claim_unconfirmed(time.time() - portal.settings.recover_after, job.id)
    if orphan is not None:
        republish(portal, orphan)
    return portal.store.get_job(job.id)


def republish(portal: Services, orphan: Unconfirmed) -> bool:
    """Publish a left-over job's request again, or reject the job saying why; False if the
    broker is away (the job stays `submitting`, to be claimed again later)."""
    why_not = _unpublishable(orphan)
    if why_not:
        _reject(portal, orphan.id, why_not)
        return True
    try:
        # The very bytes recorded: their digest is the job's.
        portal.publisher.publish_job(JobRequest.decode(orphan.request or b""),
                                     correlation_id=orphan.correlation_id, body=orphan.request)
    except BrokerUnavailable as exc:
        log.warning("job %s: publishing it again failed, will retry: %s", orphan.id, exc)
        return False
    except (PublishRejected, InvalidRequest) as exc:
        _reject(portal, orphan.id, f"its gateway stopped before the broker confirmed the "
                                   f"request, and publishing it again failed: {exc}")
        return True
    portal.store.confirm_published(orphan.id)
    log.info("job %s published again: its gateway had stopped before the broker confirmed "
             "it", orphan.id)
    return True


def _unpublishable(orphan: Unconfirmed) -> str | None:
    if orphan.request is None:
        return ("its gateway stopped before the broker confirmed the request, and the "
                "request was not kept; submit it again")
    if time.time() - orphan.created_at > REPUBLISH_WITHIN_S:
        return (f"its gateway stopped before the broker confirmed the request, and no "
                f"gateway could publish it within {REPUBLISH_WITHIN_S:.0f} s; submit it "
                "again")
    return None


def _reject(portal: Services, job_id: str, reason: str) -> None:
    portal.store.reject(job_id, reason)
    portal.notifier.notify([job_id])
    log.warning("job %s rejected: %s", job_id, reason)


def recover(portal: Services, most: int = 1000) -> int:
    """Publish again (or reject) the jobs gateways left `submitting`, at most `most`; how
    many were handled. Stops early while the broker is away."""
    if not portal.publisher.connected:
        return 0
    stale = time.time() - portal.settings.recover_after
    handled = 0
    while handled < most:
        orphan = portal.store.claim_unconfirmed(stale)
        if orphan is None or not republish(portal, orphan):
            break
        handled += 1
    return handled
