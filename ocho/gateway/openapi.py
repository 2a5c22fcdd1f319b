"""GET /openapi.json: the OpenAPI 3.1 document of the whole HTTP API.

Bodies come from the marshmallow schemas the gateway validates and answers with
(ocho.message.JobRequestSchema, gateway.schemas) through apispec's
MarshmallowPlugin. A few rules that the code checks but a marshmallow field cannot
state (a tool from the catalog, safe file names, base64 content, the limits of
this gateway's settings) are added in `_refine`, in one place; the schemathesis
test (tests/test_openapi.py) holds the document and the gateway to each other.

The document is made per app, since it names the installed tools and the
configured limits, and again when the catalog changes.
"""

from __future__ import annotations

import copy
import re
import threading
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app, jsonify

from ocho.gateway import schemas
from ocho.gateway.auth import LINE_HEADER, OPEN
from ocho.gateway.services import Services, of
from ocho.message import MAX_ARG_CHARS, MAX_ARGS

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
EXTENSION_KEY = "ocho.openapi"
# A file name as ocho.message.is_safe_file_name takes it, written for JSON Schema:
# no leading dot, no '/', '\\', control characters; at most 255 characters.
# What the pattern cannot say (printable characters only, at most 255 bytes in UTF-8)
# this format says in words; a client may register a generator for it.
FILE_NAME_FORMAT = "ocho-file-name"
FILE_NAME_PATTERN = r"^[^./\\\u0000-\u001f\u007f-\u009f][^/\\\u0000-\u001f\u007f-\u009f]{0,254}$"
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
NO_NUL_PATTERN = r"^[^\u0000]*$"
CORRELATION_PATTERN = r"^[ -~]*$"  # printable ASCII (gateway.submission.check_correlation_id)
_WS = r"[ \t\r\n]"
# A command line shlex.split takes, starting with one of the TOOLS: words of plain
# characters, 'single-quoted' or "double-quoted" parts and backslash escapes.
_WORD = r"""(?:[^ \t\r\n'"\\\u0000]|\\[^\u0000]|'[^'\u0000]*'|"(?:[^"\\\u0000]|\\[^\u0000])*")+"""
LINE_PATTERN = rf"^{_WS}*(?:TOOLS)(?:{_WS}+{_WORD})*{_WS}*$"
# POST /shell takes any command (an unknown one is answered `ok: false`).
SHELL_LINE_PATTERN = rf"^{_WS}*{_WORD}(?:{_WS}+{_WORD})*{_WS}*$"
# A JSON list of strings (written without \u escapes).
_JSON_STRING = r'"(?:[^"\\\u0000-\u001f]|\\["\\/bfnrt])*"'
ARGS_PATTERN = (rf"^{_WS}*\[{_WS}*(?:{_JSON_STRING}(?:{_WS}*,{_WS}*{_JSON_STRING})*)?"
                rf"{_WS}*\]{_WS}*$")
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

blueprint = Blueprint("openapi", __name__)

DESCRIPTION = """\
Ocho portal runs **tools** (`deploy`, `ls`, `grep`, …) on request: a job is submitted
here, waits in RabbitMQ, and a worker runs it.

Every error is JSON, `{"error": "<what is wrong and how to fix it>", "field": "<the
field>"}`. A `202` for a job means the broker confirmed it holds the request.
`POST /shell` is the original Ochopod portal's call, kept for the scripts that use it.
"""


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(document(current_app))


def document(app: Flask) -> dict[str, Any]:
    """The app's OpenAPI document (cached until the tool catalog changes)."""
    portal = of(app)
    tools = tuple(portal.catalog.names())
    cache = app.extensions.setdefault(EXTENSION_KEY, {"lock": threading.Lock(), "doc": None})
    with cache["lock"]:
        if cache["doc"] is None or cache["tools"] != tools:
            cache["doc"], cache["tools"] = build(portal, list(tools)), tools
        return copy.deepcopy(cache["doc"])


def build(portal: Services, tools: list[str]) -> dict[str, Any]:
    settings = portal.settings
    marshmallow = MarshmallowPlugin()
    spec = APISpec(
        title="Ocho portal",
        version=API_VERSION,
        openapi_version=OPENAPI_VERSION,
        plugins=[marshmallow],
        info={"description": DESCRIPTION},
    )
    assert marshmallow.converter is not None
    marshmallow.converter.add_parameter_attribute_function(_as_the_gateway_reads_it)
    for name, schema in COMPONENTS.items():
        spec.components.schema(name, schema=schema)
    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer",
        "description": "One of the portal's tokens (OCHO_TOKENS). Required on every call "
                       "but GET /healthz and GET / when tokens are configured."})
    spec.components.security_scheme("shellSignature", {
        "type": "apiKey", "in": "header", "name": "X-Signature",
        "description": "POST /shell only, instead of a token: `sha256=<hex>`, an HMAC-SHA256 "
                       "keyed by a token over X-Signature-Timestamp, the query string, "
                       "X-Correlation-Id, the command line and the files, good once within "
                       "OCHO_SIGNATURE_MAX_AGE of its timestamp (see the README's Security "
                       "section)."})
    paths = copy.deepcopy(_paths(tools))  # apispec resolves references in place
    if settings.tokens:
        _require_credentials(paths)
    for path, operations in paths.items():
        parameters = operations.pop("parameters", None)
        spec.path(path=path, operations=operations, parameters=parameters)
    doc = spec.to_dict()
    if settings.tokens:
        doc["security"] = [{"bearerAuth": []}]
    _refine(doc, settings, tools)
    return doc


def _require_credentials(paths: dict[str, dict[str, Any]]) -> None:
    """With tokens configured: every call but the open ones needs one (a 401 without)."""
    for path, operations in paths.items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            if (method.upper(), path) in OPEN:
                operation["security"] = []
                continue
            if path == "/shell":
                operation["security"] = [{"bearerAuth": []}, {"shellSignature": []}]
            operation["responses"]["401"] = _error(
                "No credential, or not a valid one (`WWW-Authenticate: Bearer`).")


COMPONENTS = {
    "Job": schemas.JobSchema,
    "JobPage": schemas.JobPageSchema,
    "JobOutput": schemas.JobOutputSchema,
    "OutputEvent": schemas.OutputEventSchema,
    "AttemptEvent": schemas.AttemptEventSchema,
    "JobSubmit": schemas.JobSubmitSchema,
    "JobForm": schemas.JobFormSchema,
    "ShellResult": schemas.ShellResultSchema,
    "Tool": schemas.ToolSchema,
    "ToolList": schemas.ToolListSchema,
    "ToolHelp": schemas.ToolHelpSchema,
    "Health": schemas.HealthSchema,
    "Readiness": schemas.ReadinessSchema,
    "Error": schemas.ErrorSchema,
}

# -- building blocks ----------------------------------------------------------------------


def _json(schema: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}},
            **extra}


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


BAD_REQUEST = _error("The request is invalid; `field` names what to fix.")
NOT_FOUND = _error("No job with that id.")
TOO_LARGE = _error("The request, a file or the number of files is over a limit.")
UNAVAILABLE = _error("The broker or the job store is unreachable, or the gateway is busy; "
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


def _as_the_gateway_reads_it(converter: Any, field: Any, ret: dict[str, Any],
                             **kwargs: Any) -> dict[str, Any]:
    """Query parameters as ocho.gateway.params reads them: an empty value (`?wait=`) is
    the parameter left out; a list is one comma-separated value."""
    if ret.get("in") != "query":
        return {}
    extra: dict[str, Any] = {"allowEmptyValue": True}
    if isinstance(field, schemas.CommaList):
        extra["explode"] = False
    return extra


def _query(schema: type[Any]) -> dict[str, Any]:
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


def _file(description: str) -> dict[str, Any]:
    return {"type": "string", "contentMediaType": "application/octet-stream",
            "description": description}


def _paths(tools: list[str]) -> dict[str, dict[str, Any]]:
    return {
        "/jobs": {
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
                    "202": _json("Job", "Accepted: the job is queued.", headers={
                        "Location": {"description": "/jobs/<id>",
                                     "schema": {"type": "string"}}}, links=JOB_LINKS),
                    "200": _json("Job", "A retry: a job with this `id` and the same request "
                                 "(tool, args, files, timeout) exists; it is answered as it "
                                 "stands, `submitting` if the gateway that took it stopped "
                                 "before the broker confirmed it (any gateway publishes it "
                                 "again shortly).", headers={
                        "Location": {"description": "/jobs/<id>",
                                     "schema": {"type": "string"}}}, links=JOB_LINKS),
                    "400": BAD_REQUEST,
                    "409": _error("A job with that `id` exists with a different request."),
                    "413": TOO_LARGE,
                    "503": _error("The broker is unreachable or did not confirm; nothing was "
                                  "submitted.") | {"headers": RETRY_AFTER},
                },
            },
            "get": {
                "summary": "List jobs, newest first",
                "operationId": "listJobs",
                "tags": ["jobs"],
                "parameters": [_query(schemas.ListQuerySchema)],
                "responses": {"200": _json("JobPage", "A page of jobs."),
                              "400": BAD_REQUEST},
            },
        },
        "/jobs/{job_id}": {
            "parameters": [JOB_ID],
            "get": {
                "summary": "A job's state, exit code and timings",
                "operationId": "getJob",
                "tags": ["jobs"],
                "parameters": [_query(schemas.JobQuerySchema)],
                "responses": {"200": _json("Job", "The job."), "400": BAD_REQUEST,
                              "404": NOT_FOUND},
            },
        },
        "/jobs/{job_id}/output": {
            "parameters": [JOB_ID],
            "get": {
                "summary": "A job's output from a byte offset on",
                "operationId": "getJobOutput",
                "description": "Ask again with `offset=next_offset` to tail it.",
                "tags": ["jobs"],
                "parameters": [_query(schemas.OutputQuerySchema)],
                "responses": {"200": OUTPUT_SLICE, "400": BAD_REQUEST, "404": NOT_FOUND},
            },
        },
        "/jobs/{job_id}/events": {
            "parameters": [JOB_ID],
            "get": {
                "summary": "A job's output as server-sent events, live",
                "operationId": "getJobEvents",
                "description": "`output` events (`{offset, stream, data}`), an `attempt` "
                               "event if a redelivery starts the output over, then one "
                               "`finished` event with the job. Each event's id is a byte "
                               "offset: reconnect with `Last-Event-ID` to resume.",
                "tags": ["jobs"],
                "parameters": [
                    _query(schemas.EventsQuerySchema),
                    {"in": "header", "name": "Last-Event-ID", "required": False,
                     "schema": {"type": "string", "pattern": "^[0-9]{1,15}$"},
                     "description": "resume after this byte offset"},
                ],
                "responses": {
                    "200": {"description": "The event stream.",
                            "content": {"text/event-stream": {"schema": EVENT}}},
                    "400": BAD_REQUEST, "404": NOT_FOUND,
                    "503": _error("Too many streams and long-polls are open; poll "
                                  "/jobs/{job_id}/output instead."),
                },
            },
        },
        "/jobs/{job_id}/cancel": {
            "parameters": [JOB_ID],
            "post": {
                "summary": "Cancel a job",
                "operationId": "cancelJob",
                "description": "A queued job never runs; a running one has its whole "
                               "process group killed.",
                "tags": ["jobs"],
                "responses": {"202": _json("Job", "Cancel requested."), "404": NOT_FOUND,
                              "409": _error("The job already ended."),
                              "503": UNAVAILABLE},
            },
        },
        "/shell": {
            "post": {
                "summary": "Run a command line and wait for it (the original portal's call)",
                "operationId": "shell",
                "description": (
                    f"The command line is in the `{LINE_HEADER}` header (split like a shell "
                    "would, never run by one); each multipart part is a file named by its "
                    "field, as `curl -F redis.yml=@redis.yml` sends it. The call blocks until "
                    "the job ends; the job is in GET /jobs too. `help` lists the tools, "
                    "`help TOOL` shows a tool's options. An unknown command is `ok: false` "
                    "with the commands there are in `out`, as the original answered."),
                "tags": ["shell"],
                "parameters": [
                    {"in": "header", "name": LINE_HEADER, "required": True,
                     "schema": {"type": "string", "pattern": SHELL_LINE_PATTERN},
                     "example": "deploy redis.yml -p 3",
                     "description": "the command line"},
                    {"in": "header", "name": "X-Correlation-Id", "required": False,
                     "schema": CORRELATION_HEADER},
                    _query(schemas.ShellQuerySchema),
                ],
                "requestBody": {"required": False, "content": {
                    # Files, named by their fields: made in _refine.
                    "multipart/form-data": {"schema": {"type": "object"}}}},
                "responses": {
                    "200": _json("ShellResult", "The command ended (or could not be run: "
                                 "`ok` is false)."),
                    "400": BAD_REQUEST,
                    "413": TOO_LARGE,
                    "415": _error("A body that is not multipart/form-data."),
                    "503": _error("Every waiting slot is taken, or the broker is "
                                  "unreachable; nothing was submitted."),
                },
            },
        },
        "/tools": {
            "get": {
                "summary": "The tools a job may run",
                "operationId": "listTools",
                "tags": ["tools"],
                "responses": {"200": _json("ToolList", "The catalog.")},
            },
        },
        "/tools/{name}": {
            "parameters": [{"in": "path", "name": "name", "required": True,
                            "schema": {"type": "string", "enum": tools or ["none"]},
                            "description": "a tool's name"}],
            "get": {
                "summary": "A tool's --help",
                "operationId": "toolHelp",
                "tags": ["tools"],
                "responses": {"200": _json("ToolHelp", "What the tool's --help prints."),
                              "404": _error("No such tool."),
                              "500": _error("The tool's --help failed or hung: the tool is "
                                            "broken; the message has its output.")},
            },
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the process serves HTTP",
                "operationId": "healthz",
                "tags": ["operations"],
                "responses": {"200": _json("Health", "Up.")},
            },
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: broker connections and store are up",
                "operationId": "readyz",
                "tags": ["operations"],
                "responses": {"200": _json("Readiness", "Ready to take jobs."),
                              "503": _json("Readiness", "Not ready; `error` says why.")},
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "tags": ["operations"],
                "responses": {"200": {
                    "description": "Prometheus text format 0.0.4.",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}},
            },
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "tags": ["operations"],
                "responses": {"200": {"description": "OpenAPI 3.1.",
                                      "content": {"application/json": {
                                          "schema": {"type": "object"}}}}},
            },
        },
        "/": {
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


def _refine(doc: dict[str, Any], settings: Any, tools: list[str]) -> None:
    """Rules the gateway checks in code, stated where a client can read them."""
    components = doc["components"]["schemas"]
    names = {"type": "string", "format": FILE_NAME_FORMAT, "pattern": FILE_NAME_PATTERN,
             "maxLength": 255,
             "description": "a plain file name: printable characters, at most 255 bytes in "
                            "UTF-8, without '/', '\\' or a leading dot"}
    base64_file = {"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN,
                   "maxLength": 4 * -(-settings.max_file_bytes // 3)}
    submit = components["JobSubmit"]["properties"]
    for name in ("id", "timeout"):
        submit[name].pop("default", None)  # absent: the gateway decides
    submit["id"] |= {"format": "uuid", "pattern": UUID_PATTERN}
    submit["timeout"]["description"] += f" ({settings.default_timeout} if absent)"
    submit["tool"] |= {"enum": tools or ["none"]}
    submit["args"]["items"] |= {"pattern": NO_NUL_PATTERN, "maxLength": MAX_ARG_CHARS}
    submit["args"]["maxItems"] = MAX_ARGS
    submit["files"] |= {"propertyNames": names, "additionalProperties": base64_file,
                        "maxProperties": settings.max_files}
    submit["correlation_id"]["pattern"] = CORRELATION_PATTERN
    job_form = components["JobForm"]
    form = job_form["properties"]
    form["tool"]["enum"] = tools or ["none"]
    form["line"]["pattern"] = LINE_PATTERN.replace(
        "TOOLS", "|".join(re.escape(tool) for tool in tools) or "none")
    form["args"]["pattern"] = ARGS_PATTERN
    form["correlation_id"]["pattern"] = CORRELATION_PATTERN
    for name in ("timeout", "id"):  # an empty field is one left out
        form[name] = {"anyOf": [form[name], {"type": "string", "maxLength": 0}],
                      "description": form[name].pop("description")}
    job_form["oneOf"] = [
        {"required": ["line"], "not": {"anyOf": [{"required": ["tool"]},
                                                 {"required": ["args"]}]}},
        {"required": ["tool"], "not": {"required": ["line"]}},
    ]
    # Multipart: the form's fields and file parts. A file part may have any field name,
    # and as many may be sent as OCHO_MAX_FILES allows; JSON Schema cannot name "any part
    # that is a file" apart from a text field, so one file property stands for them all.
    doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"] = {
        "type": "object",
        "properties": copy.deepcopy(form) | {"file": _file(
            f"a file for the job's directory, named by its part's filename (else its field's "
            f"name); send up to {settings.max_files} file parts, under any field names")},
        "additionalProperties": False,
        "oneOf": copy.deepcopy(job_form["oneOf"]),
    }
    doc["paths"]["/shell"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"] = {
        "type": "object",
        "properties": {"file": _file(
            f"a file for the job's directory, named by its part's field name (`curl -F "
            f"redis.yml=@redis.yml`): send up to {settings.max_files} file parts, each under "
            f"its own name")},
        "additionalProperties": False,
    }
