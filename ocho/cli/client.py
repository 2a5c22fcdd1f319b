"""The gateway's HTTP API over http.client, one connection per call.

Invariant: every HTTP failure becomes a CliError (refused: 125, unavailable:
126) with a one-line message; nothing here prints.
"""

from __future__ import annotations

import json
import os

from ocho.cli.errors import CliError, refused, unavailable

# typing costs start-up time; type checkers read this block, the interpreter skips it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# How long requests may take: plain calls, and the gap between two reads of an
# event stream (the gateway sends a keep-alive every 15 s).
REQUEST_TIMEOUT_S = 30.0
STREAM_IDLE_TIMEOUT_S = 45.0


# -- talking to the gateway -----------------------------------------------------------------


class Gateway:
    """The gateway's HTTP API over http.client: one connection per call."""

    def __init__(self, url: str, token: str | None) -> None:
        from urllib.parse import urlsplit

        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise refused(f"the gateway URL must look like http://HOST:PORT, not {url!r} "
                          "(--url or OCHO_URL)")
        try:
            self._port = parts.port
        except ValueError:
            raise refused(f"the gateway URL {url!r} has a bad port (--url or OCHO_URL)") from None
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._base_path = parts.path.rstrip("/")
        self._token = token

    # -- plain JSON calls
    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query)

    def post(self, path: str, body: bytes = b"", content_type: str | None = None) -> Any:
        return self.call("POST", path, body=body, content_type=content_type)

    def call(self, method: str, path: str, *, query: dict[str, Any] | None = None,
             body: bytes | None = None, content_type: str | None = None,
             timeout: float = REQUEST_TIMEOUT_S) -> Any:
        import http.client

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        response = self.open(method, path, query=query, body=body, headers=headers,
                             timeout=timeout)
        try:
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self.unreachable(exc) from None
        finally:
            response.close()
        try:
            return json.loads(raw)
        except ValueError:
            raise unavailable(f"the gateway at {self.url} answered {method} {path} with "
                              "something that is not JSON") from None

    # -- the connection itself, for calls and for event streams
    def open(self, method: str, path: str, *, query: dict[str, Any] | None = None,
             body: bytes | None = None, headers: dict[str, str] | None = None,
             timeout: float = REQUEST_TIMEOUT_S) -> Any:
        """Send a request; the response, once its status says it worked. `path` is
        already quoted (see job_path)."""
        import http.client
        from urllib.parse import urlencode

        target = self._base_path + path
        given = {k: v for k, v in (query or {}).items() if v is not None}
        if given:
            target += "?" + urlencode(given)
        headers = dict(headers or {})
        headers["User-Agent"] = "ocho-cli"
        headers["X-Ocho-Client"] = "cli"  # see the README's Security: not a cross-site form
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        kind = http.client.HTTPSConnection if self._scheme == "https" else \
            http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=timeout)
        try:
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self.unreachable(exc) from None
        if response.status >= 400:
            try:
                raise self._refusal(response)
            finally:
                connection.close()
        return response

    def _refusal(self, response: Any) -> CliError:
        try:
            message = first_line(str(json.loads(response.read())["error"]))
        except (OSError, ValueError, KeyError, TypeError):
            message = f"HTTP {response.status} {response.reason}"
        status = response.status
        if status == 401:
            return unavailable(f"the gateway at {self.url} wants a token: set OCHO_TOKEN or "
                               f"pass --token ({message})")
        if status == 403:
            return unavailable(f"the gateway at {self.url} refused the token: {message}")
        if status >= 500:
            retry = " — try again shortly" if status == 503 else ""
            return unavailable(f"the gateway at {self.url} failed ({status}): {message}{retry}")
        # The gateway speaks HTTP to everyone; an ocho user has a command for that.
        return refused(message.replace("GET /jobs lists the known jobs",
                                       "`ocho jobs` lists the recent ones"))

    def unreachable(self, exc: BaseException) -> CliError:
        import socket

        if isinstance(exc, ConnectionRefusedError):
            why = "connection refused — is it running? (make run)"
        elif isinstance(exc, socket.gaierror):
            why = f"unknown host {self._host!r} — check --url or OCHO_URL"
        elif isinstance(exc, TimeoutError):
            why = "it did not answer in time"
        elif isinstance(exc, (ConnectionResetError, ConnectionAbortedError)) or \
                type(exc).__name__ == "RemoteDisconnected":
            why = "it closed the connection"
        else:
            why = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
        return unavailable(f"cannot reach the gateway at {self.url}: {why}")

    # -- the API
    def submit(self, tool: str, args: list[str], files: dict[str, bytes],
               timeout: int | None) -> dict[str, Any]:
        fields = {"tool": tool, "args": json.dumps(args)}
        if timeout is not None:
            fields["timeout"] = str(timeout)
        body, content_type = encode_multipart(fields, files)
        return self.post("/jobs", body, content_type)

    def job(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        timeout = REQUEST_TIMEOUT_S + (wait or 0)
        return self.call("GET", job_path(job_id), query={"wait": wait}, timeout=timeout)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.post(job_path(job_id, "cancel"))


def job_path(job_id: str, *rest: str) -> str:
    """/jobs/<id>/...: an id is one path segment, whatever the user typed."""
    from urllib.parse import quote

    return "/".join(["/jobs", quote(job_id, safe=""), *rest])


def first_line(text: str) -> str:
    """Errors are one line on stderr, even when the gateway quotes a traceback."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "no details given"
    return lines[0] + (" …" if len(lines) > 1 else "")


def encode_multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    """multipart/form-data, as a browser sends it."""
    boundary = "ocho-" + os.urandom(12).hex()
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     .encode() + value.encode() + b"\r\n")
    for name, content in files.items():
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="{quoted}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                     .encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
