"""The wire contract between portal processes: every message, typed, with the one
place it is turned into bytes (`encode`) and read back (`decode`). docs/amqp.md
describes the same forms for people.

Standard library only, so that the CLI and tools can use it without the
gateway's dependencies.

Invariants every reader of a message relies on:

- a body is parsed only by `load_json` (at most MAX_JSON_DEPTH levels deep), so no
  body, however hostile, raises anything but InvalidRequest from a `decode` here;
- a job id is a canonical UUID string (`is_job_id`): 36 characters, lower-case hex
  and hyphens, the one spelling `str(uuid.uuid4())` gives; over HTTP and AMQP alike;
- `JobRequest.encode` is canonical (sorted keys, no spaces, files in base64): the
  same request is always the same bytes, so `request_digest` of them tells a retry
  from another request that reuses the id; the gateway and the worker compare it;
- files are bytes inside the portal: decoded from base64 once where a request
  arrives, encoded once where it leaves;
- `check` is the one set of caps on a request's files, with one set of messages,
  for the gateway, the worker and the CLI. Every message names its field first.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Protocol

from ocho.errors import InvalidRequest, JsonTooDeep, PayloadTooLarge

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
MAX_FILE_NAME_BYTES = 255  # what a Linux file name may take
# No valid request or event nests deeper than 4 levels; this leaves room for
# clients' extra wrapping while keeping every recursive reader far from its limit.
MAX_JSON_DEPTH = 32
JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
JOB_ID_RULE = ("must be a UUID in canonical form: 36 characters, lower-case hex digits and "
               "hyphens, like 3f1c2a9e-8b7d-4c6e-9f01-23456789abcd (what str(uuid.uuid4()) "
               "gives); no braces, 'urn:uuid:', spaces or upper case")
DIGEST = re.compile(r"^[0-9a-f]{64}\Z")
REQUEST_FIELDS = ("id", "tool", "args", "files", "timeout")
NOT_AN_OBJECT = 'body must be a JSON object like {"tool": "ls", "args": ["-l"]}'
FILE_NAME_RULE = ("use a plain name of at most 255 bytes, without '/', '\\', NUL, control "
                  "characters or a leading dot")
# How a field's problem is worded where the rule is a type (marshmallow's words, which
# the portal's answers have always used).
NOT_A_STRING = "Not a valid string."
MISSING = "Missing data for required field."
NOT_NULL = "Field may not be null."


# -- identities and text -----------------------------------------------------------------------

def is_job_id(value: object) -> bool:
    """A canonical lower-case UUID string: the only spelling of a job id."""
    return isinstance(value, str) and JOB_ID.match(value) is not None


def new_job_id() -> str:
    return str(uuid.uuid4())


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
        0 < len(name) <= MAX_FILE_NAME_BYTES
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0")
        and name.isprintable()  # no control characters, no lone surrogates
        and len(name.encode()) <= MAX_FILE_NAME_BYTES
    )


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


# -- JSON, bounded -----------------------------------------------------------------------------

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


def _dumps(value: Any, sort_keys: bool = False) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys).encode()


# -- the job request ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class JobRequest:
    """Body of a message on the ocho.jobs exchange (and of POST /jobs as JSON)."""

    id: str
    tool: str
    args: tuple[str, ...] = ()
    files: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    timeout: int | None = None

    def encode(self) -> bytes:
        """The wire body, canonical: sorted keys, files in base64."""
        files = {name: base64.b64encode(content).decode("ascii")
                 for name, content in self.files.items()}
        return _dumps({"id": self.id, "tool": self.tool, "args": list(self.args),
                       "files": files, "timeout": self.timeout}, sort_keys=True)

    @classmethod
    def decode(cls, body: bytes | str, message_id: object = None) -> JobRequest:
        """A request from the wire, its id agreed with the AMQP `message_id` property."""
        raw = load_json_object(body)
        raw["id"] = amqp_job_id(raw.get("id"), message_id)
        return cls.from_fields(raw)

    @classmethod
    def from_fields(cls, raw: object) -> JobRequest:
        """A request from its JSON fields (any client shape reduced to them): InvalidRequest
        naming the first bad field; files decoded from base64; a new id if it has none."""
        if not isinstance(raw, dict):
            raise InvalidRequest(NOT_AN_OBJECT, field="body")
        problem = next(_request_problems(raw), None)
        if problem is not None:
            raise InvalidRequest(f"{problem[0]}: {problem[1]}", field=problem[0])
        return cls(id=raw.get("id") or new_job_id(), tool=raw["tool"],
                   args=tuple(raw.get("args") or ()), files=decode_files(raw.get("files") or {}),
                   timeout=_whole(raw.get("timeout")))

    def with_timeout(self, default: int, most: int) -> JobRequest:
        """The same request with the timeout it will run with."""
        return dataclasses.replace(self, timeout=min(self.timeout or default, most))


def decode_files(files: Mapping[str, str]) -> dict[str, bytes]:
    decoded = {}
    for name, content in files.items():
        try:
            decoded[name] = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"files.{name}: content is not valid base64",
                                 field=f"files.{name}") from None
    return decoded


def _request_problems(raw: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, problem) in the order they are reported: types first, then unknown
    fields, then the rules on well-typed values (the order the portal always used)."""
    yield from _type_problems(raw)
    for key in raw:
        if key not in REQUEST_FIELDS:
            yield (str(key), "unknown field; allowed fields are " + ", ".join(REQUEST_FIELDS))
    yield from _rule_problems(raw)


def _type_problems(raw: dict[str, Any]) -> Iterator[tuple[str, str]]:
    if raw.get("id") is not None and not isinstance(raw["id"], str):
        yield "id", NOT_A_STRING
    if "tool" not in raw:
        yield "tool", MISSING
    elif not isinstance(raw["tool"], str):
        yield "tool", NOT_NULL if raw["tool"] is None else NOT_A_STRING
    yield from _args_type(raw)
    if "files" in raw:
        yield from _files_type(raw["files"])
    if raw.get("timeout") is not None:
        if _whole(raw["timeout"]) is None:
            yield "timeout", "Not a valid integer."
        elif _whole(raw["timeout"]) < 1:  # type: ignore[operator]
            yield "timeout", "Must be greater than or equal to 1."


def _args_type(raw: dict[str, Any]) -> Iterator[tuple[str, str]]:
    if "args" not in raw:
        return
    args = raw["args"]
    if not isinstance(args, list):
        yield "args", NOT_NULL if args is None else "Not a valid list."
        return
    for index, arg in enumerate(args):
        if not isinstance(arg, str):
            yield f"args.{index}", NOT_A_STRING
        elif len(arg) > MAX_ARG_CHARS:
            yield f"args.{index}", f"Longer than maximum length {MAX_ARG_CHARS}."
    if len(args) > MAX_ARGS:
        yield "args", f"Longer than maximum length {MAX_ARGS}."


def _files_type(files: object) -> Iterator[tuple[str, str]]:
    if not isinstance(files, dict):
        yield "files", NOT_NULL if files is None else "Not a valid mapping type."
        return
    for name, content in files.items():
        if not isinstance(content, str):
            yield f"files.{name}.value", NOT_A_STRING


def _rule_problems(raw: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for index, arg in enumerate(raw.get("args") or ()):
        # Neither can be passed to a process: Popen would fail, not the request.
        if "\0" in arg:
            yield f"args.{index}", "must not contain a NUL character"
        elif not _is_unicode(arg):
            yield f"args.{index}", "must be valid Unicode text (a lone surrogate is not)"
    for name in raw.get("files") or {}:
        if not is_safe_file_name(name):
            yield "files", _bad_name(name)
    if raw.get("id") is not None and not is_job_id(raw["id"]):
        yield "id", f"{JOB_ID_RULE}; leave it out to get one"
    if not TOOL_NAME.match(raw["tool"]):
        yield "tool", "must be a tool name: lower-case letters, digits, '-' or '_' (see GET /tools)"


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _whole(value: object) -> int | None:
    """A JSON integer: 300 or 300.0 (JSON Schema's integer), never 5.5, "5" or true,
    which are mistakes to point out rather than numbers to round or parse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


@dataclasses.dataclass(frozen=True)
class Salvaged:
    """What can be told of a request too broken to run (to answer it, to record it)."""

    job_id: str | None  # only a canonical one: the message_id's, else the body's
    fields: dict[str, Any]  # the body's fields; {} if it is not a readable JSON object

    @property
    def tool(self) -> str | None:
        tool = self.fields.get("tool")
        return tool if isinstance(tool, str) and TOOL_NAME.match(tool) else None


def salvage(body: bytes, message_id: object) -> Salvaged:
    """The job id and fields of any body, never an error. The message_id comes first
    when body and property disagree: a dead letter is known by it."""
    try:
        raw = load_json(body) if body else {}
    except InvalidRequest:
        raw = {}
    fields = raw if isinstance(raw, dict) else {}
    ids = [candidate for candidate in (message_id, fields.get("id")) if is_job_id(candidate)]
    return Salvaged(str(ids[0]) if ids else None, fields)


# -- the caps on files: one set, one set of messages ---------------------------------------------

class Limits(Protocol):
    """What `check` needs to know; Settings has these (OCHO_MAX_FILES, …)."""

    @property
    def max_files(self) -> int: ...
    @property
    def max_file_bytes(self) -> int: ...
    @property
    def max_request_bytes(self) -> int: ...


def check(request: JobRequest, limits: Limits) -> None:
    """The caps on a request's files, for every way a request arrives: PayloadTooLarge
    (an InvalidRequest) naming the field and the setting."""
    check_file_count(len(request.files), limits)
    for name, content in request.files.items():
        check_file_name(name)
        check_file_size(name, len(content), limits)
    total = sum(len(content) for content in request.files.values())
    if total > limits.max_request_bytes:
        raise PayloadTooLarge(f"files: {total} bytes in all; at most {limits.max_request_bytes}"
                              " per job (OCHO_MAX_REQUEST_BYTES)", field="files")


def check_file_count(count: int, limits: Limits) -> None:
    if count > limits.max_files:
        raise PayloadTooLarge(f"files: {count} files; at most {limits.max_files} per job "
                              "(OCHO_MAX_FILES)", field="files")


def check_file_size(name: str, size: int, limits: Limits) -> None:
    if size > limits.max_file_bytes:
        raise PayloadTooLarge(f"files.{name}: larger than {limits.max_file_bytes} bytes, the "
                              "most a file may have (OCHO_MAX_FILE_BYTES)",
                              field=f"files.{name}")


def check_file_name(name: str) -> None:
    if not is_safe_file_name(name):
        # The same words as a JSON request's `files` get; the field names the upload.
        raise InvalidRequest(f"files: {_bad_name(name)}", field=f"files.{name}")


def _bad_name(name: str) -> str:
    return f"file name {name!r} is not allowed: {FILE_NAME_RULE}"


# -- control messages ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Command:
    """A command on ocho.control: an action and the id it is about."""

    id: str
    action: ClassVar[str] = ""

    def encode(self) -> bytes:
        return _dumps({"action": self.action, "id": self.id})


@dataclasses.dataclass(frozen=True)
class Cancel(_Command):
    """On ocho.control: stop job `id`, or never start it."""

    action: ClassVar[str] = "cancel"


@dataclasses.dataclass(frozen=True)
class Sync(_Command):
    """On ocho.control: a worker's marker; when it reads its own, it has read the log."""

    action: ClassVar[str] = "sync"


def decode_control(body: bytes, max_bytes: int,
                   max_event_bytes: int = 0) -> Cancel | Sync | Started:
    """A message of the cancel log: a command, or a `started` event (the log is also bound
    to job.started, so that workers count starts); InvalidRequest saying why it is
    ignored otherwise. A started event may be as long as `max_event_bytes` (its args are
    the request's); a command, `max_bytes`."""
    if len(body) > max(max_bytes, max_event_bytes):
        raise InvalidRequest(f"{len(body)} bytes; a control message is at most {max_bytes}")
    command = load_json(body, "control message")
    if isinstance(command, dict) and command.get("type") == STARTED:
        return _started(command)
    if len(body) > max_bytes:
        raise InvalidRequest(f"{len(body)} bytes; a control message is at most {max_bytes}")
    if not isinstance(command, dict):
        raise InvalidRequest('not a JSON object like {"action": "cancel", "id": …}')
    action, job_id = command.get("action"), command.get("id")
    if action == Sync.action:
        return Sync(job_id if isinstance(job_id, str) else "")
    if action != Cancel.action:
        raise InvalidRequest(f"unknown action {shown(action, 40)}")
    if not is_job_id(job_id):
        raise InvalidRequest(f"id {shown(job_id, 60)}: {JOB_ID_RULE}")
    return Cancel(str(job_id))


def _started(raw: dict[str, Any]) -> Started:
    event = event_from(raw)
    if not isinstance(event, Started):  # never: event_from keeps the type it was given
        raise InvalidRequest("not a started event")
    return event


# -- events ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Chunk:
    """A piece of output: `offset` in bytes of UTF-8 in the attempt's combined output."""

    stream: str
    offset: int
    data: str


@dataclasses.dataclass(frozen=True)
class Started:
    type: ClassVar[str] = STARTED
    id: str
    attempt: int
    worker: str
    ts: float
    tool: str | None = None
    digest: str | None = None
    # So that jobs submitted straight over AMQP keep their arguments in the history.
    args: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Output:
    type: ClassVar[str] = OUTPUT
    id: str
    attempt: int
    stream: str
    offset: int
    data: str
    digest: str | None = None


@dataclasses.dataclass(frozen=True)
class Finished:
    type: ClassVar[str] = FINISHED
    id: str | None  # None only for a rejected request without a usable id
    attempt: int
    state: str
    exit_code: int | None = None
    ms: int = 0
    truncated: bool = False
    output_bytes: int = 0
    reason: str | None = None
    tool: str | None = None
    worker: str | None = None
    started_ts: float | None = None
    output: tuple[Chunk, ...] = ()
    ts: float = dataclasses.field(default_factory=time.time)
    digest: str | None = None
    args: tuple[str, ...] | None = None


Event = Started | Output | Finished
EVENT_CLASSES: dict[str, type[Started] | type[Output] | type[Finished]] = {
    STARTED: Started, OUTPUT: Output, FINISHED: Finished}


def event_fields(event: Event) -> dict[str, Any]:
    """The event as its JSON object: `type` first, chunks as a list of objects."""
    fields = {"type": event.type, **dataclasses.asdict(event)}
    for name in ("output", "args"):  # JSON's lists, as every reader of a dict expects
        if fields.get(name) is not None:
            fields[name] = list(fields[name])
    return fields


def encode_event(event: Event) -> bytes:
    return _dumps(event_fields(event))


def decode_event(body: bytes) -> Event:
    """An event body from ocho.events; InvalidRequest naming the first bad field.
    Fields this portal does not know are left out."""
    return event_from(load_json(body, "event"))


def event_from(raw: object) -> Event:
    """An event from its parsed JSON object (see decode_event)."""
    if not isinstance(raw, dict) or raw.get("type") not in EVENT_CLASSES:
        raise InvalidRequest(f"event type must be one of {', '.join(EVENT_TYPES)}", field="type")
    kind = EVENT_CLASSES[raw["type"]]
    values = {field.name: raw[field.name] for field in dataclasses.fields(kind)
              if field.name in raw}
    problem = next(_event_problems(raw["type"], values), None)
    if problem is not None:
        raise InvalidRequest(f"{problem[0]}: {problem[1]}", field=problem[0])
    if "output" in values:
        values["output"] = tuple(Chunk(c["stream"], c["offset"], c["data"])
                                 for c in values["output"])
    if values.get("args") is not None:
        values["args"] = tuple(values["args"])
    return kind(**values)


# What each event field must be: (types, required). Floats accept integers (JSON has one
# number type); a bool is never a number.
_NUMBER = (int, float)
_EVENT_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": ((str,), True), "attempt": ((int,), True), "digest": ((str, type(None)), False),
    "tool": ((str, type(None)), False), "worker": ((str, type(None)), False),
    "ts": (_NUMBER, True), "stream": ((str,), True), "offset": ((int,), True),
    "data": ((str,), True), "state": ((str,), True), "exit_code": ((int, type(None)), False),
    "ms": ((int,), False), "truncated": ((bool,), False), "output_bytes": ((int,), False),
    "reason": ((str, type(None)), False), "started_ts": (_NUMBER + (type(None),), False),
    "output": ((list,), False), "args": ((list, type(None)), False),
}


def _event_problems(kind: str, values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for field in dataclasses.fields(EVENT_CLASSES[kind]):
        types, required = _EVENT_FIELDS[field.name]
        if field.name not in values:
            if required:
                yield field.name, MISSING
            continue
        value = values[field.name]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            yield field.name, f"must be {' or '.join(_type_name(t) for t in types)}"
    yield from _event_rules(values)


def _event_rules(values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    if not is_job_id(values.get("id")):
        yield "id", JOB_ID_RULE
    if values.get("attempt", 1) < 1:
        yield "attempt", "Must be greater than or equal to 1."
    if values.get("digest") is not None and not DIGEST.match(values["digest"]):
        yield "digest", "String does not match expected pattern."
    if "stream" in values and values["stream"] not in STREAMS:
        yield "stream", "Must be one of: " + ", ".join(STREAMS) + "."
    if values.get("offset", 0) < 0:
        yield "offset", "Must be greater than or equal to 0."
    if "state" in values and values["state"] not in TERMINAL_STATES:
        yield "state", "Must be one of: " + ", ".join(TERMINAL_STATES) + "."
    for index, arg in enumerate(values.get("args") or ()):
        if not isinstance(arg, str):
            yield f"args.{index}", NOT_A_STRING
    for index, chunk in enumerate(values.get("output") or ()):
        if not _is_chunk(chunk):
            yield f"output.{index}", "must be an object {stream, offset, data}"


def _is_chunk(chunk: object) -> bool:
    return (isinstance(chunk, dict) and chunk.get("stream") in STREAMS
            and isinstance(chunk.get("offset"), int) and not isinstance(chunk["offset"], bool)
            and chunk["offset"] >= 0 and isinstance(chunk.get("data"), str))


def _type_name(kind: type) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", type(None): "null"}
    return names[kind]
