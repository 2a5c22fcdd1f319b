"""Bearer tokens: with OCHO_TOKENS set, every call but /healthz needs one of them."""

from __future__ import annotations

import hmac

from flask import Flask, request
from werkzeug.exceptions import Unauthorized

OPEN_PATHS = ("/healthz",)


def install(app: Flask, tokens: tuple[str, ...]) -> None:
    if not tokens:
        return
    expected = [token.encode() for token in tokens]

    @app.before_request
    def require_token() -> None:
        if request.path in OPEN_PATHS:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and given:
            offered = given.strip().encode()
            # Compare with every token, always, so timing says nothing about which.
            matches = [hmac.compare_digest(offered, token) for token in expected]
            if any(matches):
                return
        raise Unauthorized(
            "a token is required: send 'Authorization: Bearer <token>' with one of the "
            "portal's OCHO_TOKENS")
