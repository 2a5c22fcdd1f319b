"""The production HTTP server (waitress), with the request-size cap enforced before
the app sees a byte.

waitress reads a whole request body (spooling it to a temporary file) before it
hands the request to the app, and by default accepts bodies up to 1 GiB. So the
cap is waitress's too: a request that declares a larger Content-Length is
answered 413 as soon as its headers are read, and a chunked one is cut off at
the cap. Its own error answers (400, 413, 431, 500, 501) are JSON like the app's.
"""

from __future__ import annotations

import json
from typing import Any

import waitress
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

from ocho.settings import Settings


class JsonErrorTask(ErrorTask):
    """waitress's error answer, as {"error": ...} JSON instead of text/plain."""

    def execute(self) -> None:
        error = self.request.error
        if error.code == 413:
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


class Channel(HTTPChannel):
    error_task_class = JsonErrorTask


def create_server(app: Any, settings: Settings, **options: Any) -> Any:
    options.setdefault("host", settings.bind_host)
    options.setdefault("port", settings.bind_port)
    options.setdefault("threads", settings.gateway_threads)
    # waitress refuses a Content-Length >= this, so + 1 lets exactly the cap through.
    server = waitress.create_server(app, max_request_body_size=settings.max_request_bytes + 1,
                                    **options)
    server.channel_class = Channel
    return server
