"""GET /: the web shell page, with its script and style sheet as static files
(ocho/gateway/static, served by the app at /static/…) and its icon at
/favicon.ico. No build step, nothing fetched from elsewhere.

Invariants: the page's Content-Security-Policy allows scripts and styles from
the gateway only, never inline ones ('unsafe-inline'), so text a tool printed
can never run as script even though the page keeps a token in localStorage;
the page, its static files and its icon need no token (they hold no data), and
the script uses the public HTTP API only: POST /jobs, GET /jobs/<id>/events,
POST /jobs/<id>/cancel, GET /jobs, GET /tools, GET /tools/<name>.
"""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response

blueprint = Blueprint("web", __name__)

PAGE = "shell.html"
ICON = "favicon.svg"
POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _read(*parts: str) -> bytes:
    return resources.files("ocho.gateway").joinpath(*parts).read_bytes()


@blueprint.get("/")
def index() -> Response:
    response = Response(_read("templates", PAGE), mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@blueprint.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for it whatever the page says; an SVG answers them."""
    response = Response(_read("static", ICON), mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "max-age=86400"
    return response
