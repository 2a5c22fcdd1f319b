"""Logging for the gateway and the worker, set up once from Settings by `configure`.

Invariants:

- one line per event on stderr, whatever the format: `text` is
  `TIME LEVEL LOGGER: MESSAGE`; `json` is one JSON object a line with `ts`
  (ISO 8601, UTC), `level`, `logger`, `message`, every structured field the
  event was logged with (`extra=`, e.g. the access log's `method`, `path`,
  `status`, `ms`, `job_id`), `job_id` also when the message names a job
  ("job <uuid> …", as every job event does), and a traceback under `exc`;
- a traceback in `text` stays part of its event (indented lines that follow);
- pika's own reconnect chatter is left out below WARNING: ours says it.

`configure` returns the one handler it installed: another concern of every
line (escaping, redaction) is added there, as a filter or a formatter wrapper,
and applies to both programs and both formats.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from typing import IO, Any

from ocho.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOB_IN_MESSAGE = re.compile(r"\bjob ([0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12})\b")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in record.__dict__.items()
                      if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")})
        if "job_id" not in entry and (named := JOB_IN_MESSAGE.search(entry["message"])):
            entry["job_id"] = named.group(1)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    if log_format.lower() == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def configure(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's records to `stream` (stderr) in OCHO_LOG_FORMAT at
    OCHO_LOG_LEVEL; replaces whatever handlers the root logger had."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(settings.log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.getLogger("pika").setLevel(logging.WARNING)
    return handler
