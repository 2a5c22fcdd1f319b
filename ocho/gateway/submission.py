"""Turning a POST /jobs request into a validated job request.

Two shapes are accepted:

- JSON `{tool, args, timeout, files?, id?, correlation_id?}`, files as base64;
- multipart/form-data (or a urlencoded form) with either a `line` field (a
  command line, split like a shell would, never run by one) or `tool` plus
  `args` (a JSON list), an optional `timeout`, and uploaded files, each named
  by its filename (else by its field name).

A form is read by ocho.gateway.schemas.JobFormSchema, the schema the OpenAPI
document shows. Both end in ocho.contract: `JobRequest.from_fields`, the one
definition of a valid request, and `check`, the one set of caps on its files (the
worker applies the same). Uploaded files stay bytes from here to the publish;
every problem is an InvalidRequest naming the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Request
from marshmallow import ValidationError
from werkzeug.datastructures import FileStorage

from ocho.contract import (
    JobRequest,
    check,
    check_file_count,
    check_file_name,
    check_file_size,
    load_json_object,
)
from ocho.errors import InvalidRequest
from ocho.gateway.catalog import ToolCatalog
from ocho.gateway.schemas import JOB_FORM
from ocho.message import invalid_from
from ocho.settings import Settings

FORM_FIELDS = tuple(JOB_FORM.fields)
MAX_CORRELATION_ID = 255
CORRELATION_HEADER = "X-Correlation-Id"


@dataclasses.dataclass(frozen=True)
class Submission:
    request: JobRequest  # its timeout the one it runs with: ready to publish
    correlation_id: str


def read_submission(http: Request, settings: Settings, catalog: ToolCatalog) -> Submission:
    if http.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raw, correlation_id = _from_form(http)
        files = uploaded_files(http, settings)
        return make_submission(raw, correlation_id, http, settings, catalog, files=files)
    raw, correlation_id = _from_json(http)
    return make_submission(raw, correlation_id, http, settings, catalog)


def make_submission(raw: dict[str, Any], correlation_id: str | None, http: Request,
                    settings: Settings, catalog: ToolCatalog, *,
                    files: dict[str, bytes] | None = None) -> Submission:
    """Validate a request read from any shape (POST /jobs, POST /shell) into a Submission.
    `files`: uploads already read as bytes (else the request's own base64 `files`)."""
    request = JobRequest.from_fields(raw)  # decodes, and so checks, JSON's base64 files
    if files is not None:
        request = dataclasses.replace(request, files=files)
    check(request, settings)
    script = catalog.path(request.tool)  # UnknownTool lists the tools there are
    if script.name in request.files:
        raise InvalidRequest(f"file name {script.name!r} is the tool's own script; upload it "
                             "under another name", field=f"files.{script.name}")
    request = request.with_timeout(settings.default_timeout, settings.max_timeout)
    header_id = check_correlation_id(http.headers.get(CORRELATION_HEADER), CORRELATION_HEADER)
    correlation_id = check_correlation_id(correlation_id) or header_id or request.id
    return Submission(request=request, correlation_id=correlation_id)


def _from_json(http: Request) -> tuple[dict[str, Any], str | None]:
    body = http.get_data(cache=False)
    if not body.strip():
        raise InvalidRequest('send a JSON body like {"tool": "ls", "args": ["-l"]}, '
                             "or a multipart form with a `line` field", field="body")
    raw = load_json_object(body)
    correlation_id = raw.pop("correlation_id", None)
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise InvalidRequest("correlation_id must be a string", field="correlation_id")
    return raw, correlation_id


def _from_form(http: Request) -> tuple[dict[str, Any], str | None]:
    """The form's fields as a request's JSON fields (its uploads are read apart)."""
    form = {name: http.form.get(name, "") for name in http.form}  # the first of each
    try:
        raw = JOB_FORM.load(form)
    except ValidationError as exc:
        raise invalid_from(exc) from None
    return raw, raw.pop("correlation_id", None)


def upload_name(field_name: str, upload: FileStorage) -> str:
    """The name an uploaded file gets in the job's directory: its filename, else its
    form field's name. Checked by uploaded_files, not here."""
    return upload.filename or field_name


def uploaded_files(http: Request, settings: Settings, *,
                   by_field_name: bool = False) -> dict[str, bytes]:
    """The multipart uploads, name -> content, each name a safe base name; within the
    count and per-file caps (413) and without reading more than a file's cap + 1.
    `by_field_name`: name each file by its form field, as the original portal's
    /shell did (`curl -F redis.yml=@build/redis-1.2.yml`)."""
    files: dict[str, bytes] = {}
    uploads = list(http.files.items(multi=True))
    check_file_count(len(uploads), settings)
    for field_name, upload in uploads:
        name = field_name if by_field_name else upload_name(field_name, upload)
        check_file_name(name)
        if name in files:
            raise InvalidRequest(f"two files are named {name!r}", field=f"files.{name}")
        content = upload.stream.read(settings.max_file_bytes + 1)
        check_file_size(name, len(content), settings)
        files[name] = content
    return files


def check_correlation_id(value: str | None, field: str = "correlation_id") -> str | None:
    """A client's correlation id (body field or header; each is checked even when both are
    sent), or None if it sent none. It travels as an AMQP short string (at most 255
    bytes): printable ASCII keeps it within that, whatever the client sends."""
    if not value:
        return None
    if len(value) > MAX_CORRELATION_ID or not all(" " <= c <= "~" for c in value):
        raise InvalidRequest(f"{field} must be printable ASCII and at most "
                             f"{MAX_CORRELATION_ID} characters", field=field)
    return value
