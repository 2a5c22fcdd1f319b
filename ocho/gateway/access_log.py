"""The access log: one line per HTTP request on the `ocho.access` logger.

Each line has the method, the path, the status, the time from the request's
arrival to the last byte of its answer (an event stream or a long-poll counts
whole), the client's address and, when the request concerns one job, its id:
from the URL (/jobs/<id>…), the Location of a 202, or the `id` of a JSON
answer (POST /shell). The same values are structured fields of the record
(`method`, `path`, `status`, `ms`, `client`, `job_id`) for OCHO_LOG_FORMAT=json.

Never logged: the query string (it may carry a signature or anything else a
client put there), headers (the Authorization token), bodies.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

log = logging.getLogger("ocho.access")

JOB_PATH_PREFIX = "/jobs/"
# A JSON answer larger than this is not parsed just to find a job id in it.
MAX_PARSED_ANSWER = 64 * 1024


def install(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_log_when_sent)


def _start() -> None:
    g.access_started = time.monotonic()


def _log_when_sent(response: Response) -> Response:
    started = g.get("access_started", time.monotonic())
    fields = {"method": request.method, "path": request.path, "status": response.status_code,
              "client": request.remote_addr or "-", "job_id": _job_id(response)}

    def write() -> None:
        ms = round((time.monotonic() - started) * 1000, 1)
        job = f" job {fields['job_id']}" if fields["job_id"] else ""
        log.info("%s %s %s %.1f ms%s", fields["method"], fields["path"], fields["status"], ms,
                 job, extra={**fields, "ms": ms})

    response.call_on_close(write)
    return response


def _job_id(response: Response) -> str | None:
    job_id = (request.view_args or {}).get("job_id")
    if job_id:
        return str(job_id)
    location = response.headers.get("Location", "")
    if location.startswith(JOB_PATH_PREFIX):
        return location[len(JOB_PATH_PREFIX):].split("/")[0]
    if (response.is_json and not response.is_streamed
            and (response.content_length or 0) <= MAX_PARSED_ANSWER):
        body = response.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            return body["id"]
    return None
