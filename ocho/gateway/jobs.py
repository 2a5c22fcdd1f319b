"""HTTP resources for jobs: submit, look up (with long-poll), tail output, stream
events, cancel, list."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import ServiceUnavailable

from ocho.errors import InvalidRequest, JobConflict
from ocho.gateway import metrics
from ocho.gateway.handoff import accept_job
from ocho.gateway.schemas import ATTEMPT_EVENT, JOB, JOB_OUTPUT, JOB_PAGE, OUTPUT_EVENT
from ocho.gateway.services import Services, WaitingSlots, services
from ocho.gateway.store import Job, OutputSlice
from ocho.gateway.submission import read_submission
from ocho.message import STATES

log = logging.getLogger(__name__)

blueprint = Blueprint("jobs", __name__)

MAX_WAIT_S = 60
# A waiter re-reads the store this often even unwoken: a safety net only, since
# another gateway's changes wake it too (LISTEN/NOTIFY, see ocho.gateway.notifier).
RECHECK_S = 2.0
# How long a long-poll waits for a free waiting slot before answering as things are.
SLOT_WAIT_S = 0.5
SSE_KEEPALIVE_S = 15.0
SSE_RETRY_MS = 2000
DEFAULT_OUTPUT_LIMIT = 1024 * 1024
SSE_READ_LIMIT = 256 * 1024
DEFAULT_PAGE = 50
MAX_PAGE = 500
# Byte offsets and counts past this are not numbers a database column or a JavaScript
# client holds exactly; nothing is ever that large.
MAX_NUMBER = 2**53 - 1
OUTPUT_FORMATS = ("json", "text")


@blueprint.post("/jobs")
def submit() -> tuple[Response, int, dict[str, str]]:
    """202 for a new job; 200 with the existing job for a retry of the same request with
    the same id (ocho.gateway.handoff)."""
    portal = services()
    with metrics.counting_submission("jobs"):
        submission = read_submission(request, portal.settings, portal.catalog)
        job, created = accept_job(portal, submission)
    return jsonify(JOB.dump(job)), 202 if created else 200, {"Location": f"/jobs/{job.id}"}


@blueprint.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    wait = _float_arg("wait", 0.0, 0.0, MAX_WAIT_S)
    job = _await(services(), job_id, wait, lambda job: job.terminal)
    return jsonify(JOB.dump(job))


@blueprint.get("/jobs/<job_id>/output")
def get_output(job_id: str) -> Response:
    portal = services()
    offset = _int_arg("offset", 0, 0, MAX_NUMBER)
    limit = _int_arg("limit", DEFAULT_OUTPUT_LIMIT, 4, MAX_NUMBER)
    wait = _float_arg("wait", 0.0, 0.0, MAX_WAIT_S)
    output_format = query_arg("format") or "json"
    if output_format not in OUTPUT_FORMATS:
        raise InvalidRequest(f"format must be one of {', '.join(OUTPUT_FORMATS)}",
                             field="format")
    out = portal.store.read_output(job_id, offset, limit)
    if wait and not out.chunks and not out.finished:
        # Long-poll for output past `offset` (or the end of the job).
        def has_news(job: Job) -> bool:
            nonlocal out
            out = portal.store.read_output(job_id, offset, limit)
            return bool(out.chunks) or out.finished

        _await(portal, job_id, wait, has_news)
    if output_format == "text":
        return _output_text(out)
    return jsonify(JOB_OUTPUT.dump(out))


def _output_text(out: OutputSlice) -> Response:
    """The output as it is, for `curl` and for big outputs: no JSON escaping; the
    slice's facts travel in headers."""
    response = Response(b"".join(chunk.data for chunk in out.chunks),
                        mimetype="text/plain", content_type="text/plain; charset=utf-8")
    response.headers.update({
        "Ocho-Offset": str(out.offset),
        "Ocho-Next-Offset": str(out.next_offset),
        "Ocho-Finished": "true" if out.finished else "false",
        "Ocho-State": out.job.state,
        "Ocho-Truncated": "true" if out.job.truncated else "false",
        "Ocho-Attempt": str(out.job.attempt),
    })
    return response


@blueprint.get("/jobs/<job_id>/events")
def stream_events(job_id: str) -> Response:
    portal = services()
    portal.store.get_job(job_id)  # a 404 now, not an empty stream
    offset = _int_arg("offset", 0, 0, MAX_NUMBER)  # checked even when Last-Event-ID wins
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id is not None:
        try:
            offset = int(last_event_id)
        except ValueError:
            offset = -1
        if not 0 <= offset <= MAX_NUMBER:
            raise InvalidRequest("Last-Event-ID must be a byte offset sent as an event id",
                                 field="Last-Event-ID")
    if not portal.waiting_slots.acquire(blocking=False):
        raise ServiceUnavailable("too many event streams and long-polls are open on this "
                                 "gateway; retry shortly or poll GET /jobs/<id>/output")
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(_SlotHeld(_events(portal, job_id, offset), portal.waiting_slots),
                    mimetype="text/event-stream", headers=headers)


@blueprint.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> tuple[Response, int]:
    portal = services()
    job = portal.store.get_job(job_id)
    if job.terminal:
        raise JobConflict(f"job {job_id} already ended ({job.state}); there is nothing to cancel")
    return jsonify(JOB.dump(cancel_job(portal, job_id))), 202


def cancel_job(portal: Services, job_id: str) -> Job:
    """Tell every worker to stop (or never start) the job; mark it cancelled if queued."""
    portal.publisher.publish_cancel(job_id)
    job = portal.store.cancel_queued(job_id)
    portal.notifier.notify([job_id])
    log.info("job %s cancel requested (%s)", job_id,
             "cancelled before it started" if job.state != "running"
             else "the worker will stop it")
    return job


@blueprint.get("/jobs")
def list_jobs() -> Response:
    raw_states = query_arg("state")
    states = raw_states.split(",") if raw_states else []
    for state in states:
        if state not in STATES:
            raise InvalidRequest(f"state {state!r} is not one of {', '.join(STATES)}",
                                 field="state")
    page = services().store.list_jobs(
        states=states,
        tool=query_arg("tool") or None,
        limit=_int_arg("limit", DEFAULT_PAGE, 1, MAX_PAGE),
        before=query_arg("before") or None,
        offset=_int_arg("offset", 0, 0, MAX_NUMBER),
    )
    return jsonify(JOB_PAGE.dump(page))


# -- helpers ------------------------------------------------------------------------------


def _await(portal: Services, job_id: str, wait: float, done: Callable[[Job], bool]) -> Job:
    """The job once `done(job)` holds, or as it is after `wait` seconds."""
    job = portal.store.get_job(job_id)
    if wait <= 0 or done(job):
        return job
    deadline = time.monotonic() + wait
    # Busy: wait a moment for a slot, then answer as things are. Answering at
    # once made clients that ask again spin, which cost more than the wait.
    if not portal.waiting_slots.acquire(timeout=min(wait, SLOT_WAIT_S)):
        return portal.store.get_job(job_id)
    try:
        with portal.notifier.watch(job_id) as watch:
            while True:
                # Read after the watch is registered: a change recorded since the
                # first read must not wait for the next recheck.
                job = portal.store.get_job(job_id)
                if done(job):
                    return job
                left = deadline - time.monotonic()
                if left <= 0 or watch.closing:
                    return job
                watch.wait(min(left, RECHECK_S))
    finally:
        portal.waiting_slots.release()


class _SlotHeld:
    """An event stream that gives its waiting slot back when the server closes it,
    even if it never started (a generator's `finally` would not run then)."""

    def __init__(self, events: Generator[str, None, None], slot: WaitingSlots) -> None:
        self._events = events
        self._slot: WaitingSlots | None = slot

    def __iter__(self) -> Iterator[str]:
        return self._events

    def close(self) -> None:
        self._events.close()
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()


def _events(portal: Services, job_id: str, offset: int) -> Generator[str, None, None]:
    """Server-sent events: `output` per chunk as recorded, then `finished`; the event id
    is the byte offset after the chunk, so a reconnecting client resumes where it was."""
    position = offset
    attempt: int | None = None
    # Sent at once so the client has the response headers (waitress sends them with
    # the first bytes) and knows how soon to reconnect if the stream breaks.
    yield f"retry: {SSE_RETRY_MS}\n\n"
    last_sent = time.monotonic()
    with portal.notifier.watch(job_id) as watch:
        while True:
            out = portal.store.read_output(job_id, position, SSE_READ_LIMIT)
            if attempt is not None and out.job.attempt != attempt:
                # A redelivery replaced the output: start over from its beginning.
                yield _sse("attempt", ATTEMPT_EVENT.dump(out.job), 0)
                position, attempt = 0, out.job.attempt
                continue
            attempt = out.job.attempt
            for chunk in out.chunks:
                yield _sse("output", OUTPUT_EVENT.dump(chunk), chunk.end)
                last_sent = time.monotonic()
            position = out.next_offset
            if out.finished:
                yield _sse("finished", JOB.dump(out.job), position)
                return
            if out.chunks:
                continue  # there may be more than one read's worth
            if watch.closing:
                return
            watch.wait(RECHECK_S)
            if time.monotonic() - last_sent > SSE_KEEPALIVE_S:
                yield ": keep-alive\n\n"  # also finds out when the client went away
                last_sent = time.monotonic()


def _sse(event: str, data: dict[str, Any], event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"


def query_arg(name: str) -> str | None:
    """A query parameter given at most once (a repeated one is ambiguous: a 400)."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"{name} is given {len(values)} times; give it once", field=name)
    return values[0] if values else None


Number = TypeVar("Number", int, float)


def _int_arg(name: str, default: int, minimum: int, maximum: int) -> int:
    return _number_arg(name, default, minimum, maximum, int, "a whole number", "")


def _float_arg(name: str, default: float, minimum: float, maximum: float) -> float:
    return _number_arg(name, default, minimum, maximum, float, "a number of seconds", " seconds")


def _number_arg(name: str, default: Number, minimum: Number, maximum: Number,
                parse: Callable[[str], Number], kind: str, unit: str) -> Number:
    raw = query_arg(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be {kind}", field=name) from None
    if not minimum <= value <= maximum:
        style = "g" if parse is float else "d"
        raise InvalidRequest(f"{name} must be between {minimum:{style}} and {maximum:{style}}"
                             f"{unit}", field=name)
    return value
