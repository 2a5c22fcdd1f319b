"""The production HTTP server (waitress), tuned so that slow or hostile clients cost
file descriptors, not threads, and so that nothing is read past a refused head.

- **Slow clients.** waitress reads every request (headers and body) on one I/O
  thread and hands it to a worker thread only once it is whole, so a client that
  sends a byte every few seconds holds a socket and a small buffer, never a
  thread. The connection limit is OCHO_MAX_CONNECTIONS (waitress's default of 100
  let 100 slow clients lock everyone out), polled with poll(2) (select(2) stops at
  1024 descriptors), new connections are accepted in batches, and headers must be
  complete within OCHO_HEADER_TIMEOUT seconds of their first byte.
- **The head decides before the body.** As soon as a request's headers are parsed,
  the gateway's rules (ocho.gateway.guard: NUL, Host, the token, Origin, forms)
  run on them; a refused request is answered at once and its body is never read.
  The app runs the same rules again, so they hold under any server.
- **The size cap.** waitress spools a body to a temporary file before the app sees
  it and by default accepts 1 GiB; here a Content-Length over
  OCHO_MAX_REQUEST_BYTES is refused once the headers are read and a chunked body
  is cut off at the cap.
- **X-Shell byte for byte.** waitress strips the whitespace around a header's
  value; the X-Shell line as sent (ocho.gateway.auth.RAW_LINE_KEY) is what a
  signature covers and what runs.

Its own error answers (400, 401, 403, 413, 421, 431, …) are JSON like the app's.
"""

from __future__ import annotations

import json
import time
from typing import Any

import waitress
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import Error
from werkzeug.exceptions import HTTPException

from ocho.gateway import auth, guard
from ocho.settings import Settings

# A connection with nothing to do is closed after this long (keep-alive included).
IDLE_TIMEOUT_S = 60
CLEANUP_INTERVAL_S = 10
ACCEPT_BATCH = 64


class Refused(Error):
    """A refusal decided from the head, answered by waitress as JSON."""

    def __init__(self, exc: HTTPException) -> None:
        super().__init__(exc.description or exc.name)
        self.code = exc.code or 400
        self.reason = exc.name
        self.headers = list(exc.get_headers())
        if self.code == 401:
            self.headers.append(("WWW-Authenticate", auth.CHALLENGE))


class JsonErrorTask(ErrorTask):
    """waitress's error answer, as {"error": ...} JSON instead of text/plain."""

    def execute(self) -> None:
        error = self.request.error
        if isinstance(error, Refused):
            message = error.body
            self.response_headers += [(k, v) for k, v in error.headers
                                      if k.lower() != "content-type"]
        elif error.code == 413:
            message = (f"the request is larger than the limit of "
                       f"{self.channel.server.adj.max_request_body_size - 1} bytes "
                       "(OCHO_MAX_REQUEST_BYTES); send fewer or smaller files")
        else:
            message = f"{error.reason.lower()}: {error.body}"
        answer: dict[str, Any] = {"error": message}
        if getattr(self.request, "path", None) == "/shell":  # unset when unparsable
            # The original CLI reads `out` from every answer (see ocho.gateway.shell).
            answer.update(ok=False, ms=0, out=message + "\n")
        body = json.dumps(answer).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class Task(WSGITask):
    """Hands the app the X-Shell line as sent, beside waitress's stripped header."""

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        raw_line = getattr(self.request, "raw_line", None)
        if raw_line is not None:
            environ[auth.RAW_LINE_KEY] = raw_line
        return environ


class GatedParser(HTTPRequestParser):
    """waitress's parser, running the gateway's rules once the head is in."""

    rules: guard.Rules
    raw_line: bytes | None = None

    def __init__(self, adj: Any) -> None:
        super().__init__(adj)
        self.began = time.monotonic()
        self._gated = False

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        self.raw_line = raw_header(header_plus, auth.LINE_HEADER.encode())

    def received(self, data: bytes) -> int:
        consumed: int = super().received(data)
        # Requests without a body go to the app, which runs the same rules.
        if self.headers_finished and not self._gated and not self.completed:
            self._gated = True
            self._gate()
        return consumed

    def _gate(self) -> None:
        head = guard.Head(method=self.command, path=self.path, query=self.query,
                          headers={k.lower().replace("_", "-"): v
                                   for k, v in self.headers.items()})
        try:
            self.rules.check_head(head)
        except HTTPException as exc:
            self.error = Refused(exc)
            self.completed = True
            self.expect_continue = False  # no "100 Continue": the body is not wanted


class Channel(HTTPChannel):
    error_task_class = JsonErrorTask
    task_class = Task
    # A slowloris client keeps a request's headers unfinished for as long as it can;
    # a real client sends them in one go.
    header_timeout: float

    def received(self, data: bytes) -> bool:
        request = self.request
        if (request is not None and not request.headers_finished
                and time.monotonic() - request.began > self.header_timeout):
            self.will_close = True  # headers trickling in for this long: a slowloris
            return False
        return bool(super().received(data))


def raw_header(head: bytes, name: bytes) -> bytes | None:
    """A header's value as sent: only the whitespace after the colon (the separator)
    and the line's CR removed; repeated headers joined by ", " as waitress does."""
    values = []
    for line in head.split(b"\n")[1:]:
        key, colon, value = line.partition(b":")
        if colon and key.lower() == name.lower():
            values.append(value.lstrip(b" \t").removesuffix(b"\r"))
    return b", ".join(values) if values else None


def create_server(app: Any, settings: Settings, **options: Any) -> Any:
    options.setdefault("host", settings.bind_host)
    options.setdefault("port", settings.bind_port)
    options.setdefault("threads", settings.gateway_threads)
    # waitress refuses a Content-Length >= this, so + 1 lets exactly the cap through.
    server = waitress.create_server(
        app, max_request_body_size=settings.max_request_bytes + 1,
        connection_limit=settings.max_connections, asyncore_use_poll=True,
        channel_timeout=IDLE_TIMEOUT_S, cleanup_interval=CLEANUP_INTERVAL_S, **options)
    _accept_in_batches(server)
    parser = type("Parser", (GatedParser,), {"rules": guard.of(app)})
    server.channel_class = type("Channel", (Channel,), {
        "parser_class": parser, "header_timeout": settings.header_timeout})
    return server


def _accept_in_batches(server: Any) -> None:
    """Accept up to ACCEPT_BATCH waiting connections per turn of the I/O loop, not one:
    each turn polls every open connection, so with a thousand slow clients open a
    burst of new ones (or a real client behind them) waited seconds to get in."""
    accept_one = server.handle_accept

    def handle_accept() -> None:
        for _ in range(ACCEPT_BATCH):
            before = len(server.active_channels)
            accept_one()
            # readable() is waitress's own test of the connection limit.
            if len(server.active_channels) == before or not server.readable():
                return  # none was waiting (or the limit is reached)

    server.handle_accept = handle_accept
