"""The message contract: job requests and the events a worker sends back.

Bodies are JSON. The marshmallow schemas here are the single definition: the
gateway validates HTTP input with them, the worker validates deliveries with
them, and the OpenAPI document is generated from them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from ocho.errors import InvalidRequest

CONTENT_TYPE = "application/json"

# Job states. `queued` and `running` are live; the rest are terminal.
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
CANCELLED = "cancelled"
REJECTED = "rejected"
TERMINAL_STATES = (SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, REJECTED)
STATES = (QUEUED, RUNNING, *TERMINAL_STATES)

# Event types, also the last part of the routing key on ocho.events (job.<type>).
STARTED = "started"
OUTPUT = "output"
FINISHED = "finished"
EVENT_TYPES = (STARTED, OUTPUT, FINISHED)

STREAMS = ("stdout", "stderr", "ocho")

# \Z, not $: `$` also matches before a trailing newline ("ls\n").
TOOL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}\Z")
MAX_ARGS = 256
MAX_ARG_CHARS = 4096


def is_safe_file_name(name: str) -> bool:
    """A plain base name: nothing that could leave the job's directory or hide."""
    return (
        0 < len(name) <= 255
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0")
        and name.isprintable()  # no control characters, no lone surrogates
        and len(name.encode()) <= 255  # what a Linux file name may take
    )


class WholeNumber(fields.Integer):
    """A JSON integer: 300 or 300.0 (JSON Schema's integer), never 5.5 or "5", which are
    mistakes to point out rather than numbers to round or parse."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid", input=value)
        return value


class JobRequestSchema(Schema):
    """Body of a message on the ocho.jobs exchange (and of POST /jobs as JSON)."""

    id = fields.String(load_default=None, metadata={"description": "job id (uuid); made if absent"})
    tool = fields.String(required=True, metadata={"description": "a tool from GET /tools"})
    args = fields.List(
        fields.String(validate=validate.Length(max=MAX_ARG_CHARS)),
        load_default=list,
        validate=validate.Length(max=MAX_ARGS),
        metadata={"description": "arguments, passed to the tool as a list (never a shell string)"},
    )
    files = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        load_default=dict,
        metadata={"description": "file name -> base64 content, written into the job's directory"},
    )
    timeout = WholeNumber(
        load_default=None,
        validate=validate.Range(min=1),
        metadata={"description": "seconds; capped by the portal's maximum"},
    )

    @validates("id")
    def _check_id(self, value: str | None, **_: Any) -> None:
        if value is None:
            return
        try:
            uuid.UUID(value)
        except ValueError:
            raise ValidationError("must be a UUID, e.g. 3f1c…; leave it out to get one") from None

    @validates("tool")
    def _check_tool(self, value: str, **_: Any) -> None:
        if not TOOL_NAME.match(value):
            raise ValidationError(
                "must be a tool name: lower-case letters, digits, '-' or '_' (see GET /tools)"
            )

    @validates("args")
    def _check_args(self, value: list[str], **_: Any) -> None:
        for index, arg in enumerate(value):
            # Neither can be passed to a process: Popen would fail, not the request.
            if "\0" in arg:
                raise ValidationError({index: ["must not contain a NUL character"]})
            try:
                arg.encode()
            except UnicodeEncodeError:
                raise ValidationError({index: ["must be valid Unicode text (a lone "
                                               "surrogate is not)"]}) from None

    @validates("files")
    def _check_files(self, value: dict[str, str], **_: Any) -> None:
        for name in value:
            if not is_safe_file_name(name):
                raise ValidationError(
                    f"file name {name!r} is not allowed: use a plain name without '/', '\\', "
                    "NUL or a leading dot"
                )


class StartedSchema(Schema):
    type = fields.Constant(STARTED)
    id = fields.String(required=True)
    tool = fields.String(load_default=None, metadata={"description": "so that jobs submitted "
                         "straight over AMQP appear in the gateway's history"})
    args = fields.List(fields.String(), load_default=None, metadata={
        "description": "the job's arguments, so that the history keeps them too"})
    attempt = fields.Integer(required=True)
    worker = fields.String(required=True)
    ts = fields.Float(required=True, metadata={"description": "unix time"})


class ChunkSchema(Schema):
    stream = fields.String(required=True, validate=validate.OneOf(STREAMS))
    offset = fields.Integer(
        required=True, validate=validate.Range(min=0),
        metadata={"description": "byte offset of data (UTF-8) in the attempt's combined output"},
    )
    data = fields.String(required=True)


class OutputSchema(ChunkSchema):
    type = fields.Constant(OUTPUT)
    id = fields.String(required=True)
    attempt = fields.Integer(required=True)


class FinishedSchema(Schema):
    type = fields.Constant(FINISHED)
    id = fields.String(required=True)
    attempt = fields.Integer(required=True)
    state = fields.String(required=True, validate=validate.OneOf(TERMINAL_STATES))
    exit_code = fields.Integer(allow_none=True, load_default=None)
    ms = fields.Integer(load_default=0)
    truncated = fields.Boolean(load_default=False)
    output_bytes = fields.Integer(
        load_default=0, metadata={"description": "bytes the tool wrote, kept or not"}
    )
    reason = fields.String(allow_none=True, load_default=None)
    tool = fields.String(allow_none=True, load_default=None)
    args = fields.List(fields.String(), allow_none=True, load_default=None)
    worker = fields.String(allow_none=True, load_default=None)
    started_ts = fields.Float(
        allow_none=True, load_default=None,
        metadata={"description": "when the tool started (unix time); null if it never did"})
    output = fields.List(
        fields.Nested(ChunkSchema), load_default=list,
        metadata={"description": "the output not sent in `output` events, in offset order"})
    ts = fields.Float(required=True)


EVENT_SCHEMAS: dict[str, type[Schema]] = {
    STARTED: StartedSchema,
    OUTPUT: OutputSchema,
    FINISHED: FinishedSchema,
}

_request_schema = JobRequestSchema()
# One instance per event type: building a schema costs more than loading an event.
_event_schemas = {name: schema() for name, schema in EVENT_SCHEMAS.items()}


def new_job_id() -> str:
    return str(uuid.uuid4())


NOT_AN_OBJECT = 'body must be a JSON object like {"tool": "ls", "args": ["-l"]}'


def load_json_object(body: bytes | str) -> dict[str, Any]:
    """A request body parsed as JSON; InvalidRequest unless it is an object."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}", field="body") from None
    if not isinstance(raw, dict):
        raise InvalidRequest(NOT_AN_OBJECT, field="body")
    return raw


def load_request(raw: dict[str, Any] | bytes | str) -> dict[str, Any]:
    """Validate a job request; raise InvalidRequest naming the first bad field."""
    if isinstance(raw, (bytes, str)):
        raw = load_json_object(raw)
    elif not isinstance(raw, dict):
        raise InvalidRequest(NOT_AN_OBJECT, field="body")
    try:
        request = _request_schema.load(raw, unknown="raise")
    except ValidationError as exc:
        raise invalid_from(exc) from None
    if request["id"] is None:
        request["id"] = new_job_id()
    return request


def invalid_from(exc: ValidationError) -> InvalidRequest:
    """Turn marshmallow's nested messages into one sentence naming the field."""
    messages = exc.normalized_messages()
    field, problem = _first_message(messages)
    return InvalidRequest(f"{field}: {problem}", field=field)


def _first_message(messages: Any, prefix: str = "") -> tuple[str, str]:
    if isinstance(messages, dict):
        key, value = next(iter(messages.items()))
        name = f"{prefix}.{key}" if prefix else str(key)
        if name.endswith("_schema"):
            name = prefix or "body"
        return _first_message(value, name)
    if isinstance(messages, list) and messages:
        return _first_message(messages[0], prefix)
    text = str(messages)
    if text == "Unknown field.":
        text = "unknown field; allowed fields are id, tool, args, files, timeout"
    return prefix or "body", text


def decode_files(files: dict[str, str]) -> dict[str, bytes]:
    decoded = {}
    for name, content in files.items():
        try:
            decoded[name] = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"files.{name}: content is not valid base64",
                                 field=f"files.{name}") from None
    return decoded


def encode_files(files: dict[str, bytes]) -> dict[str, str]:
    return {name: base64.b64encode(content).decode("ascii") for name, content in files.items()}


def dump_request(request: dict[str, Any]) -> bytes:
    body = {k: request.get(k) for k in ("id", "tool", "args", "files", "timeout")}
    return json.dumps(body, separators=(",", ":")).encode()


def dump_event(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def load_event(body: bytes) -> dict[str, Any]:
    """Validate an event body from ocho.events; raise InvalidRequest if it is not one."""
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"event is not valid JSON: {exc}", field="body") from None
    if not isinstance(raw, dict) or raw.get("type") not in EVENT_SCHEMAS:
        raise InvalidRequest(f"event type must be one of {', '.join(EVENT_TYPES)}", field="type")
    try:
        event = _event_schemas[raw["type"]].load(raw, unknown="exclude")
    except ValidationError as exc:
        raise invalid_from(exc) from None
    event["type"] = raw["type"]
    return event
