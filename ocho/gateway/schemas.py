"""The HTTP API's bodies as marshmallow schemas: what the handlers answer with, and
what gateway.openapi turns into the OpenAPI document.

Requests are validated by ocho.contract (the one definition of a job request,
shared with the AMQP side) and described by ocho.message.JobRequestSchema; the
answers are dumped through the schemas here, so a field the document does not
describe never reaches a client.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, fields, validate

from ocho.message import STATES, STREAMS, JobRequestSchema


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
    error = fields.String(metadata={"description": "what is down, when not ready"})


class ErrorSchema(Schema):
    """Every error answer."""

    error = _text("what is wrong and how to fix it")
    field = fields.String(metadata={
        "description": "the request field, parameter or header that is wrong"})
    tools = fields.List(fields.String(), metadata={
        "description": "for an unknown tool: the tools there are"})


# -- requests -------------------------------------------------------------------------------
# How they are read is gateway/submission.py; what a valid one is, ocho.contract.


class JobSubmitSchema(JobRequestSchema):
    """POST /jobs as JSON: a job request, plus the client's correlation id."""

    # null is taken as absent (as the gateway always did; a retry's 200 showed it).
    correlation_id = fields.String(allow_none=True, validate=validate.Length(max=255), metadata={
        "description": "echoed on the job and on every AMQP event (printable characters); "
                       "the X-Correlation-Id header does the same"})


class JobFormSchema(Schema):
    """POST /jobs as a form: `line`, or `tool` and `args`; every other part is a file."""

    line = fields.String(validate=validate.Length(min=1), metadata={
        "description": "a command line, split like a shell would split it but never run by "
                       "one, e.g. `deploy --dry-run zookeeper.yml -p 3`"})
    tool = fields.String(metadata={"description": "instead of `line`: the tool"})
    args = fields.String(metadata={
        "description": 'with `tool`: the arguments as a JSON list of strings, e.g. '
                       '["-l", "x y"]'})
    timeout = fields.Integer(validate=validate.Range(min=1), metadata={
        "description": "seconds; capped by the portal's maximum"})
    id = fields.UUID(metadata={"description": "the job id; one is made if absent"})
    correlation_id = fields.String(validate=validate.Length(max=255))


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
