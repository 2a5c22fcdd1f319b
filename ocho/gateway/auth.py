"""Who may call the gateway: tokens, and signed /shell calls.

With tokens configured (OCHO_TOKENS, OCHO_TOKEN_FILE), every call needs
`Authorization: Bearer <token>` except GET /healthz (liveness: it says nothing
but "up") and GET / (the web shell page: static, no data; it asks for a token
and sends it with every call it makes). POST /shell also accepts, instead of
the token itself, `X-Signature: sha256=<hex>` with `X-Signature-Timestamp: <unix
seconds>`: an HMAC-SHA256 keyed by one of the tokens over the canonical message
of the request (`shell_message`), which covers the timestamp, the query string,
the correlation id, the command line byte for byte and every uploaded file. A
signature is good once, and only within OCHO_SIGNATURE_MAX_AGE seconds of its
timestamp: the gateway remembers the signatures it accepted until they expire
(`SeenSignatures`, in memory: per gateway process).

The bearer token and the signature's timestamp are checked from the head alone,
before a byte of the body is read (`Credentials.check_head`); only a signature
itself needs the body (its files), so it is verified by the app
(`Credentials.verify_shell`). Every failure is a 401 with a JSON body and
`WWW-Authenticate: Bearer`. Credentials are compared in constant time, against
every token every time, and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from flask import Request
from werkzeug.exceptions import ServiceUnavailable, Unauthorized

OPEN = {("GET", "/healthz"), ("HEAD", "/healthz"), ("GET", "/"), ("HEAD", "/")}
# The page's script, style sheet and icon: static, no data (ocho.gateway.web).
OPEN |= {("GET", "/static/shell.js"), ("GET", "/static/shell.css"), ("GET", "/favicon.ico")}
SHELL_PATH = "/shell"
SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
SIGNATURE_PREFIX = "sha256="
CHALLENGE = 'Bearer realm="ocho"'  # the WWW-Authenticate of every 401
LINE_HEADER = "X-Shell"
CORRELATION_HEADER = "X-Correlation-Id"
# Where the HTTP server puts the X-Shell line as sent (bytes) in the WSGI environ.
RAW_LINE_KEY = "ocho.raw_x_shell"
READ_SIZE = 64 * 1024
# Signatures remembered at once; past this (all still within their window) a signed
# call is a 503 rather than a forgotten signature that could be replayed.
MAX_SEEN = 100_000
HOW_TO_SIGN = "sign it as the README's Security section says"
OR_TOKEN = "or send 'Authorization: Bearer <token>'"


class SeenSignatures:
    """The signatures accepted within their window, each kept until it expires."""

    def __init__(self, capacity: int = MAX_SEEN, clock: Callable[[], float] = time.time) -> None:
        self._expiry: dict[str, float] = {}
        self._capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()

    def __contains__(self, signature: str) -> bool:
        with self._lock:
            return self._expiry.get(signature, 0.0) > self._clock()

    def add(self, signature: str, expires: float) -> bool:
        """Remember `signature` until `expires`; False if it was already used."""
        with self._lock:
            now = self._clock()
            if self._expiry.get(signature, 0.0) > now:
                return False
            if len(self._expiry) >= self._capacity:
                self._expiry = {k: v for k, v in self._expiry.items() if v > now}
            if len(self._expiry) >= self._capacity:
                raise ServiceUnavailable(
                    f"more than {self._capacity} signed calls within OCHO_SIGNATURE_MAX_AGE; "
                    "retry shortly, or send 'Authorization: Bearer <token>'")
            self._expiry[signature] = expires
            return True


class Credentials:
    """The tokens and the signature window; `enabled` once any token is configured."""

    def __init__(self, tokens: tuple[str, ...], max_age: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = [token.encode() for token in tokens]
        self.max_age = max_age
        self.seen = SeenSignatures(clock=clock)
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check_head(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        """Raise Unauthorized unless the head carries a credential; True when the app
        must still verify a signature against the body."""
        if not self.enabled or (method, path) in OPEN:
            return False
        if bearer_ok(headers.get("authorization", ""), self.keys):
            return False
        signature = headers.get(SIGNATURE_HEADER.lower())
        if signature is not None and path == SHELL_PATH and method == "POST":
            self._check_fresh(signature, headers.get(TIMESTAMP_HEADER.lower()))
            return True
        raise Unauthorized(
            "a token is required: send 'Authorization: Bearer <token>' with one of the "
            "portal's tokens (OCHO_TOKENS)")

    def _check_fresh(self, signature: str, timestamp: str | None) -> None:
        try:
            signed_at = float(timestamp or "")
        except ValueError:
            signed_at = float("nan")
        if not abs(self._clock() - signed_at) <= self.max_age:  # NaN fails too
            raise Unauthorized(
                f"{TIMESTAMP_HEADER} must be the unix time the call was signed, within "
                f"{self.max_age:g} s of the gateway's clock (OCHO_SIGNATURE_MAX_AGE): "
                f"{HOW_TO_SIGN}, {OR_TOKEN}")
        if _normal(signature) in self.seen:
            raise Unauthorized(f"this {SIGNATURE_HEADER} was already used: a signed call is "
                               f"good once; sign each call anew, {OR_TOKEN}")

    def verify_shell(self, http: Request) -> None:
        """Verify the signature of a POST /shell (reads its files) and spend it."""
        signature = http.headers.get(SIGNATURE_HEADER, "")
        if not signature_ok(signature, shell_message(http), self.keys):
            raise Unauthorized(
                f"{SIGNATURE_HEADER} does not match this call (timestamp, query, correlation "
                f"id, command line and files): {HOW_TO_SIGN}, with one of the portal's "
                f"tokens, {OR_TOKEN}")
        self._check_fresh(signature, http.headers.get(TIMESTAMP_HEADER))
        signed_at = float(http.headers[TIMESTAMP_HEADER])
        if not self.seen.add(_normal(signature), signed_at + self.max_age):
            raise Unauthorized(f"this {SIGNATURE_HEADER} was already used: a signed call is "
                               f"good once; sign each call anew, {OR_TOKEN}")


def bearer_ok(authorization: str, keys: list[bytes]) -> bool:
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return _any_equal(given.strip().encode(), keys)


def raw_line(http: Request) -> bytes:
    """The X-Shell header as the client sent it, byte for byte (the HTTP server keeps
    it: ocho.gateway.serving); elsewhere the header's value, as latin-1 bytes."""
    raw = http.environ.get(RAW_LINE_KEY)
    if isinstance(raw, bytes):
        return raw
    # WSGI hands headers over as latin-1 text: encoding back gives the raw bytes.
    return http.headers.get(LINE_HEADER, "").encode("latin-1", errors="replace")


def shell_message(http: Request) -> bytes:
    """The canonical message an X-Signature signs, as bytes, each part followed by "\\n":

        the X-Signature-Timestamp header (unix seconds, as sent);
        the query string as sent, without the "?" (empty if none);
        the X-Correlation-Id header (empty if none);
        the X-Shell header, byte for byte as sent;
        then, for each uploaded file sorted by name (UTF-8 byte order):
            its name (UTF-8), then the SHA-256 of its content in lower-case hex.

    A file's name is its multipart form field's name: the name /shell gives it in the
    job's directory (`curl -F redis.yml=@build/redis.yml` uploads `redis.yml`).
    Reading the files here leaves them for the handler to read again.
    """
    digests: list[tuple[bytes, str]] = []
    for field_name, upload in http.files.items(multi=True):
        digest = hashlib.sha256()
        while chunk := upload.stream.read(READ_SIZE):
            digest.update(chunk)
        upload.stream.seek(0)
        digests.append((field_name.encode("utf-8", errors="replace"), digest.hexdigest()))
    parts = [_latin1(http.headers.get(TIMESTAMP_HEADER, "")), http.query_string,
             _latin1(http.headers.get(CORRELATION_HEADER, "")), raw_line(http)]
    for name, hexdigest in sorted(digests):
        parts += [name, hexdigest.encode()]
    return b"".join(part + b"\n" for part in parts)


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


def _normal(signature: str) -> str:
    # Hex in either case is the same signature: a replay must not pass by changing case.
    return signature.strip().lower()


def _latin1(text: str) -> bytes:
    return text.encode("latin-1", errors="replace")


def _any_equal(offered: bytes, candidates: Iterable[bytes]) -> bool:
    # Compare with every candidate, always, so timing says nothing about which matched.
    matches = [hmac.compare_digest(offered, candidate) for candidate in candidates]
    return any(matches)
