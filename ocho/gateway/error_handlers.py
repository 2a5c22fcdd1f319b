"""Every error the HTTP API answers is JSON: {"error": "<what to do>", "field": "<name>"?}.

No HTML error page and no traceback ever reaches a client; unexpected errors are
logged here with their traceback and answered with a short 500.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from ocho.errors import (
    BrokerUnavailable,
    InvalidRequest,
    JobConflict,
    JobNotFound,
    OchoError,
    PayloadTooLarge,
    PublishRejected,
    StoreUnavailable,
    UnknownTool,
)

log = logging.getLogger(__name__)

RETRY_AFTER_S = "5"


def error_response(status: int, message: str, field: str | None = None,
                   **extra: Any) -> Response:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    body.update(extra)
    response = jsonify(body)
    response.status_code = status
    return response


def register(app: Flask) -> None:
    max_bytes = app.config.get("MAX_CONTENT_LENGTH")

    @app.errorhandler(InvalidRequest)
    def invalid(exc: InvalidRequest) -> Response:
        status = 413 if isinstance(exc, PayloadTooLarge) else 400
        extra = {"tools": exc.known} if isinstance(exc, UnknownTool) else {}
        return error_response(status, str(exc), exc.field, **extra)

    @app.errorhandler(JobNotFound)
    def not_found(exc: JobNotFound) -> Response:
        return error_response(404, f"{exc}; GET /jobs lists the known jobs")

    @app.errorhandler(JobConflict)
    def conflict(exc: JobConflict) -> Response:
        return error_response(409, str(exc))

    @app.errorhandler(BrokerUnavailable)
    @app.errorhandler(PublishRejected)
    @app.errorhandler(StoreUnavailable)
    def unavailable(exc: OchoError) -> Response:
        log.warning("%s %s answered 503: %s", request.method, request.path, exc)
        response = error_response(503, str(exc))
        response.headers["Retry-After"] = RETRY_AFTER_S
        return response

    @app.errorhandler(OchoError)
    def portal_error(exc: OchoError) -> Response:
        log.error("%s %s failed: %s", request.method, request.path, exc)
        return error_response(500, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if isinstance(exc, RequestEntityTooLarge):
            limit = f" of {max_bytes} bytes" if max_bytes else ""
            message = (f"the request is larger than the limit{limit} "
                       "(OCHO_MAX_REQUEST_BYTES); send fewer or smaller files")
        elif isinstance(exc, MethodNotAllowed):
            allowed = ", ".join(sorted(exc.valid_methods or []))
            message = f"{request.method} is not allowed on {request.path}; use {allowed}"
        elif isinstance(exc, NotFound) and request.routing_exception is exc:
            message = f"no such endpoint: {request.path}"
        else:
            message = exc.description or exc.name
        response = error_response(exc.code or 500, message)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        if exc.code == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="ocho"'
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("%s %s failed unexpectedly", request.method, request.path)
        return error_response(500, "internal error in the gateway; its log has the details")
