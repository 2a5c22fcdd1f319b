"""POST /shell: the original Ochopod portal's call, kept for the scripts that use it.

    curl -X POST -H "X-Shell:deploy redis.yml -p 3" -F "redis.yml=@redis.yml" http://HOST:9000/shell
    → {"ok": true, "ms": 5113, "out": "...", "id": "...", "state": "succeeded", "exit_code": 0}

The command line comes in the X-Shell header and is split with shlex (never run
by a shell); each multipart part is a file named by its form field, as the
original saved them. The job is submitted exactly as POST /jobs submits one (it
is in GET /jobs too), and the call blocks until it ends: `ok` is true only if it
succeeded, `out` is its combined output with the portal's notes, `ms` what the
call took. As with the original, a command that does not exist is an answer,
not an error: `ok: false` and an `out` listing the commands there are; so is a
line that cannot be split (or is empty): `200`, `ok: false`, the
reason in `out` (and in `error`/`field`, as every error answer has them).

Every answer, error or not, carries `ok`, `ms` and `out` (invariant): the
original CLI does `json.loads(answer)['out']` on whatever comes back, so a 400
(bad upload, bad `timeout`), 401, 413, 415 or 503 keeps its status code and its
`error`/`field`, and has `ok: false` and the error text in `out` too
(`shaped`, run after every /shell request, auth's refusals included). As the
original did, form fields that are not files and url-encoded bodies are
ignored (one log line says so).

`help` is answered by the gateway itself: the tools and their summaries, or with
a tool's name, its --help.

A waiting call holds a server thread, so it takes one of the gateway's waiting
slots (shared with long-polls and event streams) before it submits anything; with
none free it is a 503 and nothing was submitted. It waits at most the job's
timeout for a worker to start it (then cancels it, so it never runs behind the
caller's back) and the job's timeout, plus the kill grace and a margin, for it to
end once started.
"""

from __future__ import annotations

import logging
import shlex
import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import UnsupportedMediaType

from ocho.errors import BrokerUnavailable, InvalidRequest, PublishRejected, UnknownTool
from ocho.gateway import auth, counters, service
from ocho.gateway.auth import LINE_HEADER
from ocho.gateway.catalog import help_text, unknown_command
from ocho.gateway.params import parse_query
from ocho.gateway.schemas import SHELL_QUERY, SHELL_RESULT
from ocho.gateway.services import Services, services
from ocho.gateway.store import Job
from ocho.gateway.submission import (
    CORRELATION_HEADER,
    Submission,
    check_correlation_id,
    make_submission,
    uploaded_files,
)
from ocho.message import QUEUED, SUCCEEDED

log = logging.getLogger(__name__)

blueprint = Blueprint("shell", __name__)

HELP = "help"
# Past the job's own time limit and kill grace: room for the last events to arrive.
MARGIN_S = 10.0
EXAMPLE = "curl -X POST -H 'X-Shell: ls' http://HOST:9000/shell"
# Bodies the original read files from (multipart), or ignored (no body, url-encoded).
IGNORED_BODIES = ("", "multipart/form-data", "application/x-www-form-urlencoded")


@blueprint.after_request
def shaped(response: Response) -> Response:
    """Give an error answer the original's shape too: `ok: false`, `ms`, `out`."""
    if response.status_code == 200 or response.mimetype != "application/json":
        return response
    body = response.get_json(silent=True)
    if not isinstance(body, dict) or "out" in body:
        return response
    began = g.get("shell_began", time.monotonic())
    error = str(body.get("error") or response.status)
    body.update(ok=False, ms=int((time.monotonic() - began) * 1000), out=error + "\n")
    response.set_data(jsonify(body).get_data())
    return response


@blueprint.post("/shell")
def shell() -> Response:
    began = g.shell_began = time.monotonic()
    portal = services()
    # Everything about the request is checked before anything is answered, `help` too.
    line = read_line()  # no X-Shell header at all: a 400 (in the original's shape)
    try:
        words = split_line(line)
    except InvalidRequest as exc:
        return _refused_line(began, exc)
    if request.mimetype not in IGNORED_BODIES and _has_body():
        raise UnsupportedMediaType("send files as multipart/form-data (curl -F name=@file), "
                                   "or no body")
    timeout = _timeout()
    check_correlation_id(request.headers.get(CORRELATION_HEADER), CORRELATION_HEADER)
    _ignore_text_fields()
    if words[0] == HELP:
        ok, out = help_text(portal.catalog, words[1:])
        return _answer(began, ok, out)
    try:
        with counters.counting_submission("shell"):
            submission = _read(portal, words, timeout)
            service.take_slot(portal, busy=(
                "too many calls are waiting on this gateway (POST /shell, long-polls, event "
                "streams); nothing was submitted: retry shortly, or submit with POST /jobs "
                "and follow GET /jobs/<id>"))
            try:
                job = service.submit(portal, submission)[0]
            except BaseException:
                service.release_slot(portal)
                raise
    except UnknownTool as exc:
        return _answer(began, False, unknown_command(exc.tool, exc.known))
    try:
        job, note = _wait(portal, job)
        out = service.whole_output(portal, job.id) + note
    finally:
        service.release_slot(portal)
    return _answer(began, job.state == SUCCEEDED, out, job)


def read_line() -> str:
    if request.headers.get(LINE_HEADER) is None:
        raise InvalidRequest(f"send the command line in the {LINE_HEADER} header, e.g. "
                             f"{EXAMPLE}; `{LINE_HEADER}: help` lists the tools",
                             field=LINE_HEADER)
    raw = auth.raw_line(request)  # as sent, as its signature covers it
    try:
        return raw.decode("utf-8")  # curl sends a UTF-8 line as its bytes
    except UnicodeError:
        return raw.decode("latin-1")


def split_line(line: str) -> list[str]:
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise InvalidRequest(f"cannot split the command line {line!r}: {exc}; quote it as "
                             "you would in a shell", field=LINE_HEADER) from None
    if not words:
        raise InvalidRequest(f"the command line is empty; start it with a tool name "
                             f"(`{LINE_HEADER}: help` lists them)", field=LINE_HEADER)
    return words


def _refused_line(began: float, exc: InvalidRequest) -> Response:
    """A line that cannot be run is an answer, as the original gave it: 200, ok false."""
    body = SHELL_RESULT.dump({"ok": False, "ms": int((time.monotonic() - began) * 1000),
                              "out": f"{exc}\n"})
    body.update(error=str(exc), field=exc.field)
    return jsonify(body)


def _ignore_text_fields() -> None:
    """The original saved only files; a text field is dropped, as it was there."""
    names = sorted(request.form)
    if names:
        log.info("POST /shell: ignored form field(s) that are not files: %s",
                 ", ".join(repr(name) for name in names))


def _has_body() -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get(
        "Transfer-Encoding", "").lower()


def _timeout() -> int | None:
    return parse_query(SHELL_QUERY)["timeout"]  # type: ignore[no-any-return]


def _read(portal: Services, words: list[str], timeout: int | None) -> Submission:
    """The submission for a command line and the request's uploads (InvalidRequest, 400,
    naming what is wrong; UnknownTool for a command that does not exist)."""
    files = uploaded_files(request, portal.settings, by_field_name=True)
    tool, args = words[0], words[1:]
    if tool not in portal.catalog.names():
        raise UnknownTool(tool, portal.catalog.names())
    raw: dict[str, Any] = {"tool": tool, "args": args}
    if timeout is not None:
        raw["timeout"] = timeout
    return make_submission(raw, None, request, portal.settings, portal.catalog, files=files)


def _wait(portal: Services, job: Job) -> tuple[Job, str]:
    """The job once it ended, else as it was when waiting on made no sense, with a note."""
    limit = (job.timeout or portal.settings.default_timeout) + portal.settings.kill_grace
    limit += MARGIN_S
    deadline = service.Deadline(limit)
    attempt = job.attempt
    for _ in service.wakeups(portal, job.id, deadline):
        job = portal.store.get_job(job.id)
        if job.terminal:
            return job, ""
        if job.state != QUEUED and job.attempt != attempt:
            # Started (or started again after a redelivery): its own time limit runs now.
            attempt = job.attempt
            deadline.restart()
    if service.stopping(portal):
        return job, (f"\n[ocho] the gateway is stopping: job {job.id} is still "
                     f"{job.state}; GET /jobs/{job.id} tells how it ends\n")
    return _gave_up(portal, job, limit)


def _gave_up(portal: Services, job: Job, waited: float) -> tuple[Job, str]:
    if job.state != QUEUED:
        return job, (f"\n[ocho] job {job.id} is still {job.state} after {waited:.0f} s; it goes "
                     f"on: follow it with GET /jobs/{job.id}/output\n")
    try:
        job = service.request_cancel(portal, job.id)
    except (BrokerUnavailable, PublishRejected) as exc:
        log.warning("job %s: no worker took it and it could not be cancelled: %s", job.id, exc)
        return job, (f"\n[ocho] no worker started job {job.id} within {waited:.0f} s, and it "
                     f"could not be cancelled ({exc}); it may still run: see GET /jobs/{job.id}\n")
    log.warning("job %s: no worker started it within %.0f s; cancelled", job.id, waited)
    return job, (f"\n[ocho] no worker started job {job.id} within {waited:.0f} s: it was "
                 f"cancelled and will not run; are the workers up?\n")


def _answer(began: float, ok: bool, out: str, job: Job | None = None) -> Response:
    body: dict[str, Any] = {"ok": ok, "ms": int((time.monotonic() - began) * 1000), "out": out}
    if job is not None:
        body.update(id=job.id, state=job.state, exit_code=job.exit_code)
    return jsonify(SHELL_RESULT.dump(body))
