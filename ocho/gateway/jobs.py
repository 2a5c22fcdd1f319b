"""HTTP resources for jobs: submit, look up (with long-poll), tail output, stream
events, cancel, list."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Generator
from typing import Any

from flask import Blueprint, Response, jsonify, request

from ocho.errors import InvalidRequest
from ocho.gateway import counters, service
from ocho.gateway.params import parse_query
from ocho.gateway.schemas import (
    ATTEMPT_EVENT,
    EVENTS_QUERY,
    JOB,
    JOB_OUTPUT,
    JOB_PAGE,
    JOB_QUERY,
    LIST_QUERY,
    MAX_NUMBER,
    OUTPUT_EVENT,
    OUTPUT_QUERY,
)
from ocho.gateway.services import Services, services
from ocho.gateway.store import OutputSlice
from ocho.gateway.submission import read_submission

log = logging.getLogger(__name__)

blueprint = Blueprint("jobs", __name__)

SSE_KEEPALIVE_S = 15.0
SSE_RETRY_MS = 2000
SSE_READ_LIMIT = 256 * 1024
BUSY = ("too many event streams and long-polls are open on this gateway; retry shortly or "
        "poll GET /jobs/<id>/output")


@blueprint.post("/jobs")
def submit() -> tuple[Response, int, dict[str, str]]:
    """202 for a new job; 200 with the existing job for a retry of the same request with
    the same id (ocho.gateway.handoff)."""
    portal = services()
    with counters.counting_submission("jobs"):
        submission = read_submission(request, portal.settings, portal.catalog)
        job, created = service.submit(portal, submission)
    return jsonify(JOB.dump(job)), 202 if created else 200, {"Location": f"/jobs/{job.id}"}


@blueprint.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    wait = parse_query(JOB_QUERY)["wait"]
    job = service.wait_until(services(), job_id, wait, lambda job: job.terminal)
    return jsonify(JOB.dump(job))


@blueprint.get("/jobs/<job_id>/output")
def get_output(job_id: str) -> Response:
    portal = services()
    query = parse_query(OUTPUT_QUERY)
    out = service.read_output(portal, job_id, query["offset"], query["limit"], query["wait"])
    if query["format"] == "text":
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
    offset = parse_query(EVENTS_QUERY)["offset"]  # checked even when Last-Event-ID wins
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id is not None:
        try:
            offset = int(last_event_id)
        except ValueError:
            offset = -1
        if not 0 <= offset <= MAX_NUMBER:
            raise InvalidRequest("Last-Event-ID must be a byte offset sent as an event id",
                                 field="Last-Event-ID")
    service.take_slot(portal, busy=BUSY)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(service.held(portal, _events(portal, job_id, offset)),
                    mimetype="text/event-stream", headers=headers)


@blueprint.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> tuple[Response, int]:
    return jsonify(JOB.dump(service.cancel(services(), job_id))), 202


@blueprint.get("/jobs")
def list_jobs() -> Response:
    query = parse_query(LIST_QUERY)
    page = services().store.list_jobs(
        states=query["state"], tool=query["tool"], limit=query["limit"],
        before=query["before"], offset=query["offset"])
    return jsonify(JOB_PAGE.dump(page))


# -- helpers ------------------------------------------------------------------------------


def _events(portal: Services, job_id: str, offset: int) -> Generator[str, None, None]:
    """Server-sent events: `output` per chunk as recorded, then `finished`; the event id
    is the byte offset after the chunk, so a reconnecting client resumes where it was."""
    position = offset
    attempt: int | None = None
    # Sent at once so the client has the response headers (waitress sends them with
    # the first bytes) and knows how soon to reconnect if the stream breaks.
    yield f"retry: {SSE_RETRY_MS}\n\n"
    last_sent = time.monotonic()
    for _ in service.wakeups(portal, job_id, None):
        if time.monotonic() - last_sent > SSE_KEEPALIVE_S:
            yield ": keep-alive\n\n"  # also finds out when the client went away
            last_sent = time.monotonic()
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
            if not out.chunks:
                break  # wait for news; there may have been more than one read's worth


def _sse(event: str, data: dict[str, Any], event_id: int) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data)}\n\n"
