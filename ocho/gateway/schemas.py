"""The HTTP API as marshmallow schemas: what the handlers answer with, how they read
query parameters and forms, and what gateway.openapi turns into the OpenAPI document.

Invariants: one schema both reads and documents a request part (the query schemas
through gateway.params.parse_query, JobFormSchema through gateway.submission), so
the document cannot describe a parameter the gateway reads differently. What a
valid job request is stays ocho.contract (the one definition, shared with the AMQP
side), described by ocho.message.JobRequestSchema. The answers are dumped through
the schemas here, so a field the document does not describe never reaches a client.
"""

from __future__ import annotations

import math
import shlex
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, pre_load, validate

from ocho.errors import InvalidRequest, JsonTooDeep
from ocho.message import STATES, STREAMS, JobRequestSchema, loads_bounded


class UnixTime(fields.DateTime):
    """A unix time (float seconds) written as ISO 8601 UTC with milliseconds and a `Z`."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is None:
            return None
        stamp = datetime.fromtimestamp(float(value), UTC).isoformat(timespec="milliseconds")
        return stamp.replace("+00:00", "Z")


def _text(description: str, **kwargs: Any) -> fields.String:
    return fields.String(required=True, metadata={"description": description}, **kwargs)


def _nullable(field: type[fields.Field], description: str, **kwargs: Any) -> fields.Field:
    return field(required=True, allow_none=True, metadata={"description": description},
                 **kwargs)


# -- answers ----------------------------------------------------------------------------------
# Every field of an answer is always present (`required`), null where it does not apply.


class JobSchema(Schema):
    """A job: what ran, where it is in its life, and how it ended."""

    id = _text("the job id (a UUID)")
    tool = _nullable(fields.String, "the tool; null only for a dead-lettered request that "
                     "named none")
    args = fields.List(fields.String(), required=True,
                       metadata={"description": "the tool's arguments, as a list"})
    state = _text("submitting (recorded, the broker's confirm not yet in), queued, running, "
                  "then one of succeeded, failed, timed_out, cancelled; rejected if it never "
                  "ran", validate=validate.OneOf(STATES))
    exit_code = _nullable(fields.Integer, "the tool's exit code once it exited; negative: "
                          "the signal that killed it")
    attempt = fields.Integer(required=True, metadata={
        "description": "which run the job's state and output describe: 0 before a worker took "
                       "it, 2 or more after a redelivery"})
    correlation_id = _nullable(fields.String, "the client's correlation id, else the job id")
    created_at = UnixTime(required=True, metadata={"description": "when it was submitted"})
    started_at = _nullable(UnixTime, "when the current attempt started")
    finished_at = _nullable(UnixTime, "when it ended")
    ms = _nullable(fields.Integer, "how long the tool ran, in milliseconds")
    timeout = _nullable(fields.Integer, "its time limit, in seconds")
    truncated = fields.Boolean(required=True, metadata={
        "description": "the output went past the portal's cap; the kept output ends with a "
                       "note saying so"})
    output_bytes = fields.Integer(required=True, metadata={
        "description": "bytes of output the tool wrote, kept or not"})
    reason = _nullable(fields.String, "why it was rejected, cancelled or failed without an "
                       "exit code")
    worker = _nullable(fields.String, "the worker that ran the current attempt")


class JobPageSchema(Schema):
    """One page of the job history, newest first."""

    jobs = fields.List(fields.Nested(JobSchema), required=True)
    next = _nullable(fields.String, "pass as `before` for the next (older) page; null on the "
                     "last page")


class JobOutputSchema(Schema):
    """A slice of a job's combined output (stdout, stderr and the portal's notes)."""

    data = _text("the output from `offset` up to `next_offset` (UTF-8)")
    offset = fields.Integer(required=True, metadata={"description": "the byte offset asked for"})
    next_offset = fields.Integer(required=True, metadata={
        "description": "ask again from here for what follows"})
    finished = fields.Boolean(required=True, metadata={
        "description": "the job ended and there is no more output"})
    state = _text("the job's state", validate=validate.OneOf(STATES), attribute="job.state")
    truncated = fields.Boolean(required=True, attribute="job.truncated")
    attempt = fields.Integer(required=True, attribute="job.attempt")


class OutputEventSchema(Schema):
    """The data of an `output` server-sent event: one chunk of output."""

    offset = fields.Integer(required=True, metadata={
        "description": "byte offset of the chunk in the combined output"})
    stream = _text("stdout, stderr, or ocho (the portal's notes)",
                   validate=validate.OneOf(STREAMS))
    data = _text("the chunk (UTF-8)", attribute="text")


class AttemptEventSchema(Schema):
    """The data of an `attempt` server-sent event: a redelivery starts the output over."""

    attempt = fields.Integer(required=True)


class ShellResultSchema(Schema):
    """What POST /shell answers once the command ended, as the original portal did."""

    ok = fields.Boolean(required=True, metadata={
        "description": "true only if the tool exited 0 (state `succeeded`)"})
    ms = fields.Integer(required=True, metadata={
        "description": "milliseconds the call took, queueing included"})
    out = _text("the job's combined output, with the portal's notes (truncation, time "
                "limit)")
    id = fields.String(metadata={"description": "the job id (absent for `help`)"})
    state = fields.String(validate=validate.OneOf(STATES),
                          metadata={"description": "the job's state (absent for `help`)"})
    exit_code = fields.Integer(allow_none=True,
                               metadata={"description": "the tool's exit code"})
    error = fields.String(metadata={
        "description": "a line that could not be run (missing, empty, unbalanced quote): why"})
    field = fields.String(metadata={"description": "with `error`: `X-Shell`"})


class ToolSchema(Schema):
    name = _text("the tool's name: what a command line starts with")
    summary = _text("the first line of the tool's description")


class ToolListSchema(Schema):
    tools = fields.List(fields.Nested(ToolSchema), required=True)


class ToolHelpSchema(Schema):
    name = _text("the tool's name")
    help = _text("what `TOOL --help` prints")


class HealthSchema(Schema):
    status = _text("always `ok`: the process serves HTTP", validate=validate.Equal("ok"))


class ReadinessSchema(Schema):
    ready = fields.Boolean(required=True)
    publisher = _text("the broker connection that publishes requests",
                      validate=validate.OneOf(("up", "down")))
    recorder = _text("the broker connection that records worker events",
                     validate=validate.OneOf(("up", "down")))
    store = _text("the job store", validate=validate.OneOf(("up", "down")))
    listener = _text(
        "hearing other gateways' changes (PostgreSQL LISTEN; `none` with SQLite, where "
        "one gateway writes). `down` does not make the gateway unready: its waits then "
        "re-read the store, so answers come later, not wrong",
        validate=validate.OneOf(("up", "down", "none")))
    error = fields.String(metadata={"description": "what is down, when not ready"})


class ErrorSchema(Schema):
    """Every error answer."""

    error = _text("what is wrong and how to fix it")
    field = fields.String(metadata={
        "description": "the request field, parameter or header that is wrong"})
    tools = fields.List(fields.String(), metadata={
        "description": "for an unknown tool: the tools there are"})


class ShellErrorSchema(ErrorSchema):
    """POST /shell's error answers: the error, in the original's shape too."""

    ok = fields.Boolean(required=True, metadata={"description": "always false"})
    ms = fields.Integer(required=True, metadata={"description": "milliseconds the call took"})
    out = _text("the error, as a line: what the original CLI prints")


# -- requests -------------------------------------------------------------------------------
# Read by gateway/submission.py (JSON, or a form through JobFormSchema); what a valid
# one is, ocho.contract.


class JobSubmitSchema(JobRequestSchema):
    """POST /jobs as JSON: a job request, plus the client's correlation id."""

    # null is taken as absent (as the gateway always did; a retry's 200 showed it).
    correlation_id = fields.String(allow_none=True, validate=validate.Length(max=255), metadata={
        "description": "echoed on the job and on every AMQP event (printable characters); "
                       "the X-Correlation-Id header does the same"})


class CommandLine(fields.String):
    """A command line, split like a shell would split it (never run by one): the words."""

    def _deserialize(  # type: ignore[override]
            self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        try:
            words = shlex.split(super()._deserialize(value, attr, data, **kwargs))
        except ValueError as exc:
            raise InvalidRequest(f"cannot split the command line: {exc}", field="line") from None
        if not words:
            raise InvalidRequest("the command line is empty; start it with a tool name",
                                 field="line")
        return words


class JsonList(fields.String):
    """A JSON list sent as one text field; its items are checked with the request."""

    def _deserialize(  # type: ignore[override]
            self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        try:
            items = loads_bounded(super()._deserialize(value, attr, data, **kwargs))
        except JsonTooDeep as exc:
            raise InvalidRequest(f"args: {exc}; send a JSON list of strings",
                                 field="args") from None
        except ValueError:
            items = None
        if not isinstance(items, list):
            raise InvalidRequest('args must be a JSON list of strings, e.g. ["-l", "x y"]',
                                 field="args")
        return items


class WholeNumberText(fields.Integer):
    """A whole number sent as text; its range is checked with the request."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InvalidRequest("timeout must be a whole number of seconds",
                                 field="timeout") from None


class JobFormSchema(Schema):
    """POST /jobs as a form: `line`, or `tool` and `args`; every other part is a file.

    Loading a form (its first value of each field) gives the job request's `tool`,
    `args`, `timeout` and `id`, as ocho.contract.JobRequest.from_fields then checks them,
    and the
    `correlation_id`; an empty `timeout` or `id` is one left out. The limits stated
    here as metadata are the request's, checked there, once."""

    line = CommandLine(validate=validate.Length(min=1), metadata={
        "description": "a command line, split like a shell would split it but never run by "
                       "one, e.g. `deploy --dry-run zookeeper.yml -p 3`"})
    tool = fields.String(metadata={"description": "instead of `line`: the tool"})
    args = JsonList(metadata={
        "description": 'with `tool`: the arguments as a JSON list of strings, e.g. '
                       '["-l", "x y"]'})
    timeout = WholeNumberText(metadata={
        "minimum": 1, "description": "seconds; capped by the portal's maximum"})
    id = fields.String(metadata={"format": "uuid",
                                 "description": "the job id; one is made if absent"})
    correlation_id = fields.String(metadata={"maxLength": 255})

    @pre_load
    def _one_shape(self, form: dict[str, str], **_: Any) -> dict[str, str]:
        for name in form:
            if name not in self.fields:
                raise InvalidRequest(f"unknown form field {name!r}; use line, or tool and "
                                     "args, with timeout and files", field=name)
        if "line" in form and ("tool" in form or "args" in form):
            raise InvalidRequest("send either `line` or `tool` and `args`, not both",
                                 field="line")
        if "line" not in form and "tool" not in form:
            raise InvalidRequest("send a `line` field, or `tool` and `args` fields",
                                 field="tool")
        return {name: value for name, value in form.items()
                if value or name not in ("timeout", "id")}

    @post_load
    def _request(self, values: dict[str, Any], **_: Any) -> dict[str, Any]:
        """The job request (without files) and the correlation id, under `correlation_id`."""
        raw: dict[str, Any] = {}
        if "line" in values:
            raw["tool"], raw["args"] = values["line"][0], values["line"][1:]
        else:
            raw["tool"] = values["tool"]
            if "args" in values:
                raw["args"] = values["args"]
        raw |= {name: values[name] for name in ("timeout", "id", "correlation_id")
                if name in values}
        return raw


# -- query parameters -----------------------------------------------------------------------
# Read by ocho.gateway.params.parse_query, one field at a time in the order declared here:
# an error message is the parameter's name followed by the field's message; a field
# without a default is None when absent.

MAX_WAIT_S = 60
DEFAULT_OUTPUT_LIMIT = 1024 * 1024
DEFAULT_PAGE = 50
MAX_PAGE = 500
# Byte offsets and counts past this are not numbers a database column or a JavaScript
# client holds exactly; nothing is ever that large.
MAX_NUMBER = 2**53 - 1
OUTPUT_FORMATS = ("json", "text")


class Within(validate.Range):
    """A closed range worded as the gateway words it (`between 0 and 60 seconds`), which
    also refuses NaN (every comparison with NaN is false, so Range lets it through)."""

    def __init__(self, minimum: int, maximum: int, unit: str = "") -> None:
        super().__init__(min=minimum, max=maximum)
        self.unit = unit

    def __call__(self, value: Any) -> Any:
        if math.isnan(value) or not self.min <= value <= self.max:
            raise ValidationError(f"must be between {self.min} and {self.max}{self.unit}")
        return value


def _count(default: int, minimum: int, maximum: int, description: str) -> fields.Integer:
    return fields.Integer(load_default=default, validate=Within(minimum, maximum),
                          error_messages={"invalid": "must be a whole number"},
                          metadata={"description": description})


def _seconds(description: str) -> fields.Float:
    return fields.Float(load_default=0.0, allow_nan=True,
                        validate=Within(0, MAX_WAIT_S, " seconds"),
                        error_messages={"invalid": "must be a number of seconds"},
                        metadata={"description": description})


class CommaList(fields.List):
    """Values separated by commas in one query parameter (`state=queued,running`); the
    first value that is not valid is the error."""

    def _deserialize(  # type: ignore[override]
            self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        return [self.inner.deserialize(item) for item in str(value).split(",")]


class JobQuerySchema(Schema):
    """GET /jobs/<id>."""

    wait = _seconds("hold the answer up to this many seconds until the job ends")


class OutputQuerySchema(Schema):
    """GET /jobs/<id>/output."""

    offset = _count(0, 0, MAX_NUMBER, "byte offset in the combined output")
    limit = _count(DEFAULT_OUTPUT_LIMIT, 4, MAX_NUMBER, "at most this many bytes")
    wait = _seconds("hold the answer up to this many seconds until there is output past "
                    "`offset` or the job ends")
    format = fields.String(load_default="json", validate=validate.OneOf(
        OUTPUT_FORMATS, error="must be one of {choices}"), metadata={
        "description": "`json` (the default), or `text`: the output itself as text/plain, "
                       "with the slice's facts in `Ocho-*` headers"})


class EventsQuerySchema(Schema):
    """GET /jobs/<id>/events."""

    offset = _count(0, 0, MAX_NUMBER, "start from this byte offset")


class ListQuerySchema(Schema):
    """GET /jobs."""

    state = CommaList(fields.String(validate=validate.OneOf(
        STATES, error="{input!r} is not one of {choices}")), load_default=list, metadata={
        "description": "only jobs in these states, comma-separated"})
    tool = fields.String(metadata={"description": "only runs of this tool"})
    limit = _count(DEFAULT_PAGE, 1, MAX_PAGE, "jobs per page")
    before = fields.String(metadata={
        "description": "the `next` of the previous page (a job id)"})
    offset = _count(0, 0, MAX_NUMBER, "jobs to skip")


SHELL_TIMEOUT_ERROR = "must be a whole number of seconds, at least 1"


class ShellQuerySchema(Schema):
    """POST /shell."""

    timeout = fields.Integer(validate=validate.Range(
        min=1, error=SHELL_TIMEOUT_ERROR), error_messages={"invalid": SHELL_TIMEOUT_ERROR},
        metadata={"description": "the job's time limit in seconds (capped by the portal's)"})


JOB = JobSchema()
JOB_PAGE = JobPageSchema()
JOB_OUTPUT = JobOutputSchema()
OUTPUT_EVENT = OutputEventSchema()
ATTEMPT_EVENT = AttemptEventSchema()
SHELL_RESULT = ShellResultSchema()
TOOL_LIST = ToolListSchema()
TOOL_HELP = ToolHelpSchema()
HEALTH = HealthSchema()
READINESS = ReadinessSchema()
JOB_QUERY = JobQuerySchema()
OUTPUT_QUERY = OutputQuerySchema()
EVENTS_QUERY = EventsQuerySchema()
LIST_QUERY = ListQuerySchema()
SHELL_QUERY = ShellQuerySchema()
JOB_FORM = JobFormSchema()
