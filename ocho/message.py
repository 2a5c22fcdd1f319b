"""The message contract: job requests and the events a worker sends back.

Bodies are JSON. The marshmallow schemas here are the single definition: the
gateway validates HTTP input with them, the worker validates deliveries with
them, and the OpenAPI document is generated from them.

Invariants every reader of a message relies on:

- a body is decoded only by `load_json` (at most MAX_JSON_DEPTH levels deep), so
  no body, however hostile, raises anything but InvalidRequest from the readers
  here (`load_request`, `load_event`, `load_json_object`);
- a job id is a canonical UUID string (`is_job_id`): 36 characters, lower-case
  hex and hyphens, the one spelling `str(uuid.uuid4())` gives; over HTTP and
  AMQP alike;
- `request_digest` of a request body tells one request from another that
  reuses its id; a redelivery has the same body, hence the same digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from ocho.errors import InvalidRequest, JsonTooDeep

CONTENT_TYPE = "application/json"

# Job states. `submitting`, `queued` and `running` are live; the rest are terminal.
# `submitting`: recorded by a gateway, its request not yet confirmed by the broker.
SUBMITTING = "submitting"
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
CANCELLED = "cancelled"
REJECTED = "rejected"
TERMINAL_STATES = (SUCCEEDED, FAILED, TIMED_OUT, CANCELLED, REJECTED)
STATES = (SUBMITTING, QUEUED, RUNNING, *TERMINAL_STATES)

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
# No valid request or event nests deeper than 4 levels; this leaves room for
# clients' extra wrapping while keeping every recursive reader far from its limit.
MAX_JSON_DEPTH = 32
JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
JOB_ID_RULE = ("must be a UUID in canonical form: 36 characters, lower-case hex digits and "
               "hyphens, like 3f1c2a9e-8b7d-4c6e-9f01-23456789abcd (what str(uuid.uuid4()) "
               "gives); no braces, 'urn:uuid:', spaces or upper case")


def is_job_id(value: object) -> bool:
    """A canonical lower-case UUID string: the only spelling of a job id."""
    return isinstance(value, str) and JOB_ID.match(value) is not None


def request_digest(body: bytes) -> str:
    """What tells two requests with the same id apart (sha256 of the body, hex)."""
    return hashlib.sha256(body).hexdigest()


def shown(value: object, limit: int = 120) -> str:
    """A value for a log line: control characters escaped, at most `limit` characters,
    so that no client-chosen text can forge a line or a terminal sequence."""
    text = value if isinstance(value, str) else repr(value)
    text = text[:limit].encode("unicode_escape", errors="backslashreplace").decode("ascii")
    return text if len(text) <= 4 * limit else text[:4 * limit]


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
        if not is_job_id(value):
            raise ValidationError(f"{JOB_ID_RULE}; leave it out to get one")

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


class EventSchema(Schema):
    """What every event has: the job, the attempt, and which request it runs."""

    id = fields.String(required=True, validate=validate.Regexp(JOB_ID, error=JOB_ID_RULE))
    attempt = fields.Integer(required=True, validate=validate.Range(min=1))
    digest = fields.String(
        load_default=None, allow_none=True, validate=validate.Regexp(r"^[0-9a-f]{64}\Z"),
        metadata={"description": "sha256 (hex) of the request body the worker runs: a "
                  "request that reuses another's id has another digest"})


class StartedSchema(EventSchema):
    type = fields.Constant(STARTED)
    tool = fields.String(load_default=None, metadata={"description": "so that jobs submitted "
                         "straight over AMQP appear in the gateway's history"})
    args = fields.List(fields.String(), load_default=None, metadata={
        "description": "the job's arguments, so that the history keeps them too"})
    worker = fields.String(required=True)
    ts = fields.Float(required=True, metadata={"description": "unix time"})


class ChunkSchema(Schema):
    stream = fields.String(required=True, validate=validate.OneOf(STREAMS))
    offset = fields.Integer(
        required=True, validate=validate.Range(min=0),
        metadata={"description": "byte offset of data (UTF-8) in the attempt's combined output"},
    )
    data = fields.String(required=True)


class OutputSchema(ChunkSchema, EventSchema):
    type = fields.Constant(OUTPUT)


class FinishedSchema(EventSchema):
    type = fields.Constant(FINISHED)
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


def amqp_job_id(body_id: object, message_id: object) -> str:
    """The job id of a request over AMQP: the body's `id` and the `message_id` property
    must agree when both are given; one alone is used; none is an error."""
    given = {name: value for name, value in (("id", body_id), ("message_id", message_id))
             if value is not None}
    if not given:
        raise InvalidRequest("the request has no job id: set the message_id property (and "
                             "the body's id, the same) to a new str(uuid.uuid4())", field="id")
    for name, value in given.items():
        if not is_job_id(value):
            raise InvalidRequest(f"{name}: {JOB_ID_RULE}", field=name)
    if len(set(given.values())) > 1:
        raise InvalidRequest("the body's id and the message_id property differ; send the same "
                             "job id in both (or in one of them)", field="id")
    return str(next(iter(given.values())))


NOT_AN_OBJECT = 'body must be a JSON object like {"tool": "ls", "args": ["-l"]}'


# A JSON string (escapes included) or a bracket: strings are skipped whole, so a
# bracket inside one never counts.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def loads_bounded(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads, but JsonTooDeep (a ValueError naming the limit) for arrays and objects
    nested deeper than `max_depth`, found by one linear scan before parsing: a body of
    100 000 `[` is refused in milliseconds instead of exhausting the stack."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode(json.detect_encoding(text), "surrogatepass")
    depth = 0
    # Files travel as base64, which has no brackets: most bodies need no scan at all.
    brackets = text.count("[") + text.count("{")
    matches = _STRING_OR_BRACKET.finditer(text) if brackets > max_depth else ()
    for match in matches:
        bracket = text[match.start()]
        if bracket in "[{":
            depth += 1
            if depth > max_depth:
                raise JsonTooDeep(f"arrays and objects are nested more than {max_depth} "
                                  "levels deep")
        elif bracket in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except RecursionError:  # only if max_depth is beyond what the parser can take
        raise JsonTooDeep(f"arrays and objects are nested too deep to read (limit "
                          f"{max_depth})") from None


def load_json(body: bytes | str, what: str = "body") -> Any:
    """Parse JSON, at most MAX_JSON_DEPTH levels deep; any failure is InvalidRequest
    naming `what`, never an exception a consumer did not expect (a RecursionError or
    MemoryError-sized body included)."""
    try:
        return loads_bounded(body)
    except JsonTooDeep as exc:
        raise InvalidRequest(f"{what}: {exc}; flatten it", field=what) from None
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}", field=what) from None
    except MemoryError:
        raise InvalidRequest(f"{what} is too large to read", field=what) from None


def load_json_object(body: bytes | str) -> dict[str, Any]:
    """A request body parsed as JSON; InvalidRequest unless it is an object."""
    raw = load_json(body)
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
    """The request's wire body, canonical (sorted keys, files included): the same request
    is always the same bytes, so its request_digest tells a retry from another request."""
    body = {k: request.get(k) for k in ("id", "tool", "args", "files", "timeout")}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def dump_event(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def load_event(body: bytes) -> dict[str, Any]:
    """Validate an event body from ocho.events; raise InvalidRequest if it is not one."""
    raw = load_json(body, "event")
    if not isinstance(raw, dict) or raw.get("type") not in EVENT_SCHEMAS:
        raise InvalidRequest(f"event type must be one of {', '.join(EVENT_TYPES)}", field="type")
    try:
        event = _event_schemas[raw["type"]].load(raw, unknown="exclude")
    except ValidationError as exc:
        raise invalid_from(exc) from None
    event["type"] = raw["type"]
    return event
