"""What a request's head must show before anything else happens to it.

In order, each refusal a JSON error naming the rule:
1. no NUL in the path or the query (400): no store can hold one;
2. a `Host` this gateway answers to (421): OCHO_ALLOWED_HOSTS, by default the
   bound address, `localhost`, `127.0.0.1` and `::1` (any port). A page on
   another site whose name an attacker points at 127.0.0.1 (DNS rebinding) sends
   its own name as Host. Checked on a tokenless gateway, and on any gateway
   whose OCHO_ALLOWED_HOSTS is set;
3. a credential when tokens are configured (ocho.gateway.auth, 401);
4. on a tokenless gateway, no cross-site request can change anything:
   - a POST, PUT, PATCH or DELETE whose `Origin` is not the gateway's own (the
     scheme's default port assumed for a Host without one) is a 403;
   - a POST /jobs or /shell a browser could send cross-site without asking first
     (a form or `no-cors` fetch: a body typed `application/x-www-form-urlencoded`,
     `multipart/form-data`, `text/plain` or not typed at all) is a 403 when it
     comes from a browser (`Origin`, `Referer`, a `Sec-Fetch-*` header, or a
     `Mozilla/…` User-Agent, which every browser sends) unless it carries a header
     no cross-site form can set: `X-Ocho-Client` (the web page and the CLI send
     it), `X-Shell`, `Authorization` or `X-Signature`. curl and scripts, which
     are no browser, send forms as before.

`Rules.check_head` runs twice per request with a body: in the HTTP server as soon
as the headers are in (ocho.gateway.serving: a refused body is never read), and
in the app (`install`), so the rules hold under any WSGI server too.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from urllib.parse import unquote_to_bytes, urlsplit

from flask import Flask, request
from werkzeug.exceptions import BadRequest, Forbidden, MisdirectedRequest

from ocho.gateway.auth import LINE_HEADER, SHELL_PATH, SIGNATURE_HEADER, Credentials
from ocho.settings import Settings

EXTENSION_KEY = "ocho.guard"
CLIENT_HEADER = "X-Ocho-Client"
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
FORM_PATHS = {"/jobs", SHELL_PATH}
# What a browser sends cross-site without a CORS preflight ("" : no Content-Type).
SIMPLE_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain", ""}
# Headers a cross-site form or no-cors fetch cannot set: a request carrying one was
# made by a page of this origin or by a program that is not a browser.
NON_SIMPLE_HEADERS = (CLIENT_HEADER, LINE_HEADER, "Authorization", SIGNATURE_HEADER)
BROWSER_HEADERS = ("origin", "referer", "sec-fetch-site", "sec-fetch-mode")
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclasses.dataclass(frozen=True)
class Head:
    """What is known of a request once its headers are read; header names lower-case."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]


class Rules:
    """The rules above, built once from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.credentials = Credentials(settings.tokens, settings.signature_max_age)
        self.tokenless = not settings.tokens
        hosts = settings.allowed_hosts or (settings.bind_host, *DEFAULT_HOSTS)
        self.any_host = "*" in hosts
        self.hosts = {split_host(host) for host in hosts}
        self.check_hosts = self.tokenless or bool(settings.allowed_hosts)

    def check_head(self, head: Head) -> bool:
        """Raise the refusal of the first rule `head` breaks; True when the app must still
        verify a /shell signature against the body."""
        _check_no_nul(head)
        if self.check_hosts and not self.any_host:
            self._check_host(head.headers.get("host"))
        pending = self.credentials.check_head(head.method, head.path, head.headers)
        if self.tokenless and head.method in STATE_CHANGING:
            _check_origin(head.headers)
            _check_not_a_form(head)
        return pending

    def _check_host(self, host: str | None) -> None:
        if host is None:
            return  # HTTP/1.0: no name was asked for, so none was rebound
        name, port = split_host(host)
        if (name, port) in self.hosts or (name, None) in self.hosts:
            return
        raise MisdirectedRequest(
            f"this gateway does not answer to the host {host!r}: use one it serves, or add "
            "the name to OCHO_ALLOWED_HOSTS (a page on another site pointed at this address "
            "sends its own name)")


def split_host(host: str) -> tuple[str, int | None]:
    """'Name:port' (or '[v6]:port', or a bare name or address) as (name, port or None)."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    elif host.count(":") > 1:  # a bare IPv6 address
        return _canonical(host), None
    else:
        name, _, port = host.partition(":")
    return _canonical(name), int(port) if port.isdigit() else None


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.rstrip(".")


def _check_no_nul(head: Head) -> None:
    for where, text in (("path", head.path), ("query", head.query)):
        if "\0" in text or b"\0" in unquote_to_bytes(text):
            raise BadRequest(f"the {where} holds a NUL character (%00); no job, tool or "
                             "cursor has one")


def _check_origin(headers: Mapping[str, str]) -> None:
    origin = headers.get("origin")
    if origin is None or _same_origin(origin, headers.get("host", "")):
        return
    raise Forbidden(
        f"cross-origin request refused: Origin {origin!r} is not this gateway's own, and a "
        "gateway without tokens takes changes only from its own page or from programs "
        "(set OCHO_TOKENS to serve other origins)")


def _same_origin(origin: str, host: str) -> bool:
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return False  # "null" (a sandboxed frame, a file) is nobody's origin
    default = DEFAULT_PORTS[parts.scheme]
    try:
        origin_port = parts.port or default
    except ValueError:
        return False
    name, port = split_host(host)
    return (_canonical(parts.hostname), origin_port) == (name, port or default)


def _check_not_a_form(head: Head) -> None:
    headers = head.headers
    if head.path not in FORM_PATHS or not _from_a_browser(headers):
        return
    mimetype = headers.get("content-type", "").split(";")[0].strip().lower()
    if mimetype not in SIMPLE_TYPES:
        return  # a browser asks first (CORS preflight), and this gateway never says yes
    if any(name.lower() in headers for name in NON_SIMPLE_HEADERS):
        return
    raise Forbidden(
        f"a browser could send this {mimetype or 'untyped'} POST from any site: send the "
        f"header '{CLIENT_HEADER}: <your client's name>' (a page of another site cannot), "
        "a JSON body, or a token")


def _from_a_browser(headers: Mapping[str, str]) -> bool:
    return (headers.get("user-agent", "").startswith("Mozilla/")
            or any(name in headers for name in BROWSER_HEADERS))


def install(app: Flask, rules: Rules) -> None:
    """Run the rules before every request the app handles (after the server did)."""
    app.extensions[EXTENSION_KEY] = rules

    @app.before_request
    def check_request() -> None:
        head = Head(method=request.method, path=request.path,
                    query=request.query_string.decode("latin-1"),
                    headers={k.lower(): v for k, v in request.headers.items()})
        if rules.check_head(head):
            rules.credentials.verify_shell(request)


def of(app: Flask) -> Rules:
    return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
