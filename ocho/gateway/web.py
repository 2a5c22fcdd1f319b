"""GET /: the web shell page, one static HTML file with its CSS and JavaScript inline
(no build step, nothing fetched from elsewhere). It uses the public HTTP API only:
POST /jobs, GET /jobs/<id>/events, POST /jobs/<id>/cancel, GET /jobs, GET /tools."""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response

blueprint = Blueprint("web", __name__)

PAGE = "shell.html"


def page() -> bytes:
    return resources.files("ocho.gateway").joinpath("templates", PAGE).read_bytes()


@blueprint.get("/")
def index() -> Response:
    response = Response(page(), mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
