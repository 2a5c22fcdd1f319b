"""The message contract as marshmallow schemas, for the OpenAPI document.

The contract itself — the typed messages, how they are read and written, the caps
and the messages that explain them — is `ocho.contract` (standard library only);
the names below it re-exports keep older imports working. The schemas here
describe the same fields for apispec and must stay in step with it (the OpenAPI
tests compare the document with what the gateway accepts).
"""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate

from ocho.contract import (  # noqa: F401 - re-exported: the names older modules import
    CANCELLED,
    CONTENT_TYPE,
    EVENT_TYPES,
    FAILED,
    FINISHED,
    JOB_ID,
    JOB_ID_RULE,
    MAX_ARG_CHARS,
    MAX_ARGS,
    MAX_JSON_DEPTH,
    NOT_AN_OBJECT,
    OUTPUT,
    QUEUED,
    REJECTED,
    RUNNING,
    STARTED,
    STATES,
    STREAMS,
    SUBMITTING,
    SUCCEEDED,
    TERMINAL_STATES,
    TIMED_OUT,
    TOOL_NAME,
    is_job_id,
    is_safe_file_name,
    load_json,
    load_json_object,
    loads_bounded,
    new_job_id,
    request_digest,
    shown,
)
from ocho.errors import InvalidRequest


def invalid_from(exc: ValidationError) -> InvalidRequest:
    """Turn marshmallow's nested messages (a form's, read by a schema) into one sentence
    naming the field."""
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
