"""The text of each operation of the HTTP API, by its view's endpoint (`jobs.submit`):
what ocho.gateway.openapi does not make from the Flask rules and the schemas.

Invariants: every view the app serves has an entry here (the document is built from
the rules, and a missing one is a KeyError); schema names are component names of
ocho.gateway.openapi.COMPONENTS; query parameters are the schemas the views read.
"""

from __future__ import annotations

from typing import Any

from ocho.gateway import schemas
from ocho.gateway.auth import LINE_HEADER
from ocho.gateway.openapi.refine import CORRELATION_PATTERN


def json_body(schema: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}},
            **extra}


def error(description: str) -> dict[str, Any]:
    return json_body("Error", description)


BAD_REQUEST = error("The request is invalid; `field` names what to fix.")
NOT_FOUND = error("No job with that id.")
TOO_LARGE = error("The request, a file or the number of files is over a limit.")
UNAVAILABLE = error("The broker or the job store is unreachable, or the gateway is busy; "
                     "retry shortly.")
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                               "schema": {"type": "string"}}}


def _event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"properties": {"event": {"const": name},
                           "data": {"contentMediaType": "application/json",
                                    "contentSchema": data}}}


# Per event, as a client reads it: its type, its id (a byte offset), its data (JSON).
EVENT = {
    "type": "object",
    "required": ["event", "id", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["output", "attempt", "finished"]},
        "id": {"type": "string", "pattern": "^[0-9]+$",
               "description": "the byte offset after this event: resume with Last-Event-ID"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer"},
    },
    "oneOf": [
        _event("output", {"$ref": "#/components/schemas/OutputEvent"}),
        _event("attempt", {"$ref": "#/components/schemas/AttemptEvent"}),
        _event("finished", {"$ref": "#/components/schemas/Job"}),
    ],
}

JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"},
           "description": description}
    for name, operation, description in [
        ("GetJob", "getJob", "the job's state"),
        ("GetOutput", "getJobOutput", "its output"),
        ("GetEvents", "getJobEvents", "its output, live"),
        ("Cancel", "cancelJob", "cancel it"),
    ]
}



def query(schema: type[Any]) -> dict[str, Any]:
    """The query parameters a schema of ocho.gateway.schemas declares (and reads)."""
    return {"in": "query", "schema": schema}


def _header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "schema": schema}


OUTPUT_SLICE = {
    "description": "The output slice: JSON, or with `format=text` the bytes themselves.",
    "content": {
        "application/json": {"schema": "JobOutput"},
        "text/plain": {"schema": {"type": "string"}},
    },
    "headers": {
        "Ocho-Offset": _header("with format=text: the byte offset asked for",
                               {"type": "integer"}),
        "Ocho-Next-Offset": _header("with format=text: ask again from here",
                                    {"type": "integer"}),
        "Ocho-Finished": _header("with format=text: the job ended and there is no more "
                                 "output", {"type": "string", "enum": ["true", "false"]}),
        "Ocho-State": _header("with format=text: the job's state", {"type": "string"}),
        "Ocho-Truncated": _header("with format=text: the output went past the cap",
                                  {"type": "string", "enum": ["true", "false"]}),
        "Ocho-Attempt": _header("with format=text: which run the output is of",
                                {"type": "integer"}),
    },
}

CORRELATION_HEADER = {"type": "string", "maxLength": 255, "pattern": CORRELATION_PATTERN}
JOB_ID = {"in": "path", "name": "job_id", "required": True, "schema": {"type": "string"},
          "description": "the job id"}



def operations() -> dict[str, dict[str, Any]]:
    """Each view's operations, by its endpoint; the path and its parameters come from the
    view's Flask rule (apispec's FlaskPlugin)."""
    return {
        "jobs.submit": {
            "post": {
                "summary": "Submit a job",
                "operationId": "submitJob",
                "description": "JSON with files as base64, or a multipart form with a `line` "
                               "(or `tool` and `args`) and the files as parts. Answered once "
                               "RabbitMQ confirmed it holds the request. Idempotent by `id`: "
                               "sending the same request with the same `id` again (after a "
                               "lost answer) returns that job, never a second one.",
                "tags": ["jobs"],
                "parameters": [{"in": "header", "name": "X-Correlation-Id", "required": False,
                                "schema": CORRELATION_HEADER,
                                "description": "echoed on the job and its AMQP events"}],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": "JobSubmit"},
                    # The form's fields and any number of files: made in _refine.
                    "multipart/form-data": {"schema": {"type": "object"}},
                    "application/x-www-form-urlencoded": {"schema": "JobForm"},
                }},
                "responses": {
                    "202": json_body("Job", "Accepted: the job is queued.", headers={
                        "Location": {"description": "/jobs/<id>",
                                     "schema": {"type": "string"}}}, links=JOB_LINKS),
                    "200": json_body("Job", "A retry: a job with this `id` and the same request "
                                 "(tool, args, files, timeout) exists; it is answered as it "
                                 "stands, `submitting` if the gateway that took it stopped "
                                 "before the broker confirmed it (any gateway publishes it "
                                 "again shortly).", headers={
                        "Location": {"description": "/jobs/<id>",
                                     "schema": {"type": "string"}}}, links=JOB_LINKS),
                    "400": BAD_REQUEST,
                    "409": error("A job with that `id` exists with a different request."),
                    "413": TOO_LARGE,
                    "503": error("The broker is unreachable or did not confirm; nothing was "
                                  "submitted.") | {"headers": RETRY_AFTER},
                },
            },
        },
        "jobs.list_jobs": {
            "get": {
                "summary": "List jobs, newest first",
                "operationId": "listJobs",
                "tags": ["jobs"],
                "parameters": [query(schemas.ListQuerySchema)],
                "responses": {"200": json_body("JobPage", "A page of jobs."),
                              "400": BAD_REQUEST},
            },
        },
        "jobs.get_job": {
            "get": {
                "summary": "A job's state, exit code and timings",
                "operationId": "getJob",
                "tags": ["jobs"],
                "parameters": [query(schemas.JobQuerySchema)],
                "responses": {"200": json_body("Job", "The job."), "400": BAD_REQUEST,
                              "404": NOT_FOUND},
            },
        },
        "jobs.get_output": {
            "get": {
                "summary": "A job's output from a byte offset on",
                "operationId": "getJobOutput",
                "description": "Ask again with `offset=next_offset` to tail it.",
                "tags": ["jobs"],
                "parameters": [query(schemas.OutputQuerySchema)],
                "responses": {"200": OUTPUT_SLICE, "400": BAD_REQUEST, "404": NOT_FOUND},
            },
        },
        "jobs.stream_events": {
            "get": {
                "summary": "A job's output as server-sent events, live",
                "operationId": "getJobEvents",
                "description": "`output` events (`{offset, stream, data}`), an `attempt` "
                               "event if a redelivery starts the output over, then one "
                               "`finished` event with the job. Each event's id is a byte "
                               "offset: reconnect with `Last-Event-ID` to resume.",
                "tags": ["jobs"],
                "parameters": [
                    query(schemas.EventsQuerySchema),
                    {"in": "header", "name": "Last-Event-ID", "required": False,
                     "schema": {"type": "string", "pattern": "^[0-9]{1,15}$"},
                     "description": "resume after this byte offset"},
                ],
                "responses": {
                    "200": {"description": "The event stream.",
                            "content": {"text/event-stream": {"schema": EVENT}}},
                    "400": BAD_REQUEST, "404": NOT_FOUND,
                    "503": error("Too many streams and long-polls are open; poll "
                                  "/jobs/{job_id}/output instead."),
                },
            },
        },
        "jobs.cancel": {
            "post": {
                "summary": "Cancel a job",
                "operationId": "cancelJob",
                "description": "A queued job never runs; a running one has its whole "
                               "process group killed.",
                "tags": ["jobs"],
                "responses": {"202": json_body("Job", "Cancel requested."), "404": NOT_FOUND,
                              "409": error("The job already ended."),
                              "503": UNAVAILABLE},
            },
        },
        "shell.shell": {
            "post": {
                "summary": "Run a command line and wait for it (the original portal's call)",
                "operationId": "shell",
                "description": (
                    f"The command line is in the `{LINE_HEADER}` header (split like a shell "
                    "would, never run by one); each multipart part is a file named by its "
                    "field, as `curl -F redis.yml=@redis.yml` sends it. The call blocks until "
                    "the job ends; the job is in GET /jobs too. `help` lists the tools, "
                    "`help TOOL` shows a tool's options. An unknown command, or a line that "
                    "cannot be split, is `ok: false` with the reason in `out`, as the original "
                    "answered; every error answer of this call also has `ok`, `ms` and `out`."),
                "tags": ["shell"],
                "parameters": [
                    {"in": "header", "name": LINE_HEADER, "required": True,
                     # Any line is answered 200 (an unknown command, or one that cannot
                     # be split: ok false), as the original did.
                     "schema": {"type": "string"},
                     "example": "deploy redis.yml -p 3",
                     "description": "the command line"},
                    {"in": "header", "name": "X-Correlation-Id", "required": False,
                     "schema": CORRELATION_HEADER},
                    query(schemas.ShellQuerySchema),
                ],
                "requestBody": {"required": False, "content": {
                    # Files, named by their fields: made in _refine.
                    "multipart/form-data": {"schema": {"type": "object"}}}},
                "responses": {
                    "200": json_body("ShellResult", "The command ended (or could not be run: "
                                 "`ok` is false)."),
                    # Errors also carry ok/ms/out: the original CLI reads `out`.
                    "400": json_body("ShellError", "No X-Shell header, a bad upload or "
                                     "timeout."),
                    "413": json_body("ShellError", TOO_LARGE["description"]),
                    "415": json_body("ShellError", "A body that is neither multipart/form-data "
                                     "nor url-encoded (which is ignored)."),
                    "503": json_body("ShellError", "Every waiting slot is taken, or the broker "
                                     "is unreachable; nothing was submitted."),
                },
            },
        },
        "tools.list_tools": {
            "get": {
                "summary": "The tools a job may run",
                "operationId": "listTools",
                "tags": ["tools"],
                "responses": {"200": json_body("ToolList", "The catalog.")},
            },
        },
        "tools.tool_help": {
            "get": {
                "summary": "A tool's --help",
                "operationId": "toolHelp",
                "tags": ["tools"],
                "responses": {"200": json_body("ToolHelp", "What the tool's --help prints."),
                              "404": error("No such tool."),
                              "500": error("The tool's --help failed or hung: the tool is "
                                            "broken; the message has its output.")},
            },
        },
        "health.healthz": {
            "get": {
                "summary": "Liveness: the process serves HTTP",
                "operationId": "healthz",
                "tags": ["operations"],
                "responses": {"200": json_body("Health", "Up.")},
            },
        },
        "health.readyz": {
            "get": {
                "summary": "Readiness: broker connections and store are up",
                "operationId": "readyz",
                "tags": ["operations"],
                "responses": {"200": json_body("Readiness", "Ready to take jobs."),
                              "503": json_body("Readiness", "Not ready; `error` says why.")},
            },
        },
        "health.metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "tags": ["operations"],
                "responses": {"200": {
                    "description": "Prometheus text format 0.0.4.",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}},
            },
        },
        "openapi.openapi_json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "tags": ["operations"],
                "responses": {"200": {"description": "OpenAPI 3.1.",
                                      "content": {"application/json": {
                                          "schema": {"type": "object"}}}}},
            },
        },
        "web.favicon": {
            "get": {
                "summary": "The web page's icon (SVG)",
                "operationId": "favicon",
                "tags": ["shell"],
                "responses": {"200": {"description": "The icon.",
                                      "content": {"image/svg+xml": {
                                          "schema": {"type": "string"}}}}},
            },
        },
        "web.index": {
            "get": {
                "summary": "The web shell page",
                "operationId": "webShell",
                "tags": ["shell"],
                "responses": {"200": {"description": "An HTML page.",
                                      "content": {"text/html": {
                                          "schema": {"type": "string"}}}}},
            },
        },
    }
