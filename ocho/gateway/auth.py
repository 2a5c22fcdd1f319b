"""Who may call the gateway.

With tokens configured (OCHO_TOKENS, OCHO_TOKEN_FILE), every call needs
`Authorization: Bearer <token>` except GET /healthz (liveness: it says nothing
but "up") and GET / (the web shell page: static, no data; it asks for a token
and sends it with every call it makes). POST /shell also accepts, instead of
the token itself, `X-Signature: sha256=<hex>`: an HMAC-SHA256 keyed by one of
the tokens over the canonical message of the request (`shell_message`), which
covers the command line and every uploaded file, so a signature made for one
command and one set of files is worth nothing for another.

Every failure is a 401 with a JSON body and `WWW-Authenticate: Bearer`
(gateway.error_handlers). Credentials are compared in constant time, against
every token every time, and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from flask import Flask, Request, request
from werkzeug.exceptions import Unauthorized

OPEN = {("GET", "/healthz"), ("HEAD", "/healthz"), ("GET", "/"), ("HEAD", "/")}
# The page's script, style sheet and icon: static, no data (ocho.gateway.web).
OPEN |= {("GET", "/static/shell.js"), ("GET", "/static/shell.css"), ("GET", "/favicon.ico")}
SHELL_PATH = "/shell"
SIGNATURE_HEADER = "X-Signature"
SIGNATURE_PREFIX = "sha256="
LINE_HEADER = "X-Shell"
READ_SIZE = 64 * 1024


def install(app: Flask, tokens: tuple[str, ...]) -> None:
    """Require a credential on every call but the open ones; nothing without tokens."""
    if not tokens:
        return
    keys = [token.encode() for token in tokens]

    @app.before_request
    def require_credential() -> None:
        if (request.method, request.path) in OPEN:
            return
        if bearer_ok(request, keys):
            return
        if request.path == SHELL_PATH and request.method == "POST":
            given = request.headers.get(SIGNATURE_HEADER)
            if given is not None:
                if signature_ok(given, shell_message(request), keys):
                    return
                raise Unauthorized(
                    f"{SIGNATURE_HEADER} does not match this command line and these files: "
                    f"sign them as the README's Security section says, with one of the "
                    f"portal's tokens, or send 'Authorization: Bearer <token>'")
        raise Unauthorized(
            "a token is required: send 'Authorization: Bearer <token>' with one of the "
            "portal's tokens (OCHO_TOKENS)")


def bearer_ok(http: Request, keys: list[bytes]) -> bool:
    scheme, _, given = http.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return _any_equal(given.strip().encode(), keys)


def shell_message(http: Request) -> bytes:
    """The canonical message an X-Signature signs, as bytes:

        the X-Shell header, byte for byte as sent, then "\\n";
        then, for each uploaded file sorted by name (UTF-8 byte order):
            its name (UTF-8), "\\n", the SHA-256 of its content in lower-case hex, "\\n".

    A file's name is its multipart form field's name: the name /shell gives it in the
    job's directory (`curl -F redis.yml=@build/redis.yml` uploads `redis.yml`).
    Reading the files here leaves them for the handler to read again.
    """
    # WSGI hands headers over as latin-1 text: encoding back gives the raw bytes.
    line = http.headers.get(LINE_HEADER, "").encode("latin-1", errors="replace")
    digests: list[tuple[bytes, str]] = []
    for field_name, upload in http.files.items(multi=True):
        digest = hashlib.sha256()
        while chunk := upload.stream.read(READ_SIZE):
            digest.update(chunk)
        upload.stream.seek(0)
        name = field_name.encode("utf-8", errors="replace")
        digests.append((name, digest.hexdigest()))
    parts = [line, b"\n"]
    for name, hexdigest in sorted(digests):
        parts += [name, b"\n", hexdigest.encode(), b"\n"]
    return b"".join(parts)


def sign(token: str, message: bytes) -> str:
    """The X-Signature value for `message` keyed by `token` (what clients compute)."""
    return SIGNATURE_PREFIX + hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def signature_ok(given: str, message: bytes, keys: list[bytes]) -> bool:
    prefix, hexdigest = given[:len(SIGNATURE_PREFIX)], given[len(SIGNATURE_PREFIX):]
    if prefix.lower() != SIGNATURE_PREFIX:
        return False
    offered = hexdigest.strip().lower().encode("latin-1", errors="replace")
    expected = [hmac.new(key, message, hashlib.sha256).hexdigest().encode() for key in keys]
    return _any_equal(offered, expected)


def _any_equal(offered: bytes, candidates: Iterable[bytes]) -> bool:
    # Compare with every candidate, always, so timing says nothing about which matched.
    matches = [hmac.compare_digest(offered, candidate) for candidate in candidates]
    return any(matches)
