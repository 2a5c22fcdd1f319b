"""What the store hands out: immutable snapshots of a job, its output and a page of jobs.

A record is a copy taken inside one transaction; it never changes afterwards and
holds no connection, so it may cross threads and outlive the transaction.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from ocho.message import TERMINAL_STATES

# Longest text kept in a column such as `reason` or `worker`.
MAX_TEXT = 4096

JOB_COLUMNS = ("id", "tool", "args", "state", "exit_code", "attempt", "correlation_id",
               "created_at", "started_at", "finished_at", "ms", "timeout", "truncated",
               "output_bytes", "reason", "worker", "digest")
SELECT_JOB = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"


@dataclasses.dataclass(frozen=True)
class Job:
    id: str
    tool: str | None
    args: list[str]
    state: str
    exit_code: int | None
    attempt: int
    correlation_id: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    ms: int | None
    timeout: int | None
    truncated: bool
    output_bytes: int
    reason: str | None
    worker: str | None
    # sha256 of the request body as published (ocho.message.request_digest); None for
    # jobs recorded before digests were kept, or from events of older workers.
    digest: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def is_request(self, digest: str | None) -> bool:
        """Whether something carrying `digest` is about this job's own request (unknown
        on either side: yes, as before digests were kept)."""
        return self.digest is None or digest is None or self.digest == digest


@dataclasses.dataclass(frozen=True)
class Chunk:
    offset: int
    stream: str
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclasses.dataclass(frozen=True)
class OutputSlice:
    """Output of the job's current attempt from byte `offset` up to `next_offset`."""

    job: Job
    offset: int
    next_offset: int
    chunks: list[Chunk]
    finished: bool  # the job is terminal and nothing is stored past next_offset

    @property
    def data(self) -> str:
        return b"".join(chunk.data for chunk in self.chunks).decode("utf-8", errors="replace")


@dataclasses.dataclass(frozen=True)
class Unconfirmed:
    """A `submitting` job claimed for publishing again, with what it was submitted with."""

    id: str
    request: bytes | None  # the request body as first published; None if lost
    correlation_id: str | None
    created_at: float


@dataclasses.dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next: str | None  # pass as `before` to get the following (older) page


def job_from_row(row: Sequence[Any]) -> Job:
    values = dict(zip(JOB_COLUMNS, row, strict=True))
    values["args"] = json.loads(values["args"])
    values["truncated"] = bool(values["truncated"])
    values["output_bytes"] = int(values["output_bytes"])
    return Job(**values)


def text(value: Any) -> str | None:
    """A string PostgreSQL's TEXT accepts (no NUL), of bounded size."""
    if value is None:
        return None
    return str(value).replace("\0", "\N{REPLACEMENT CHARACTER}")[:MAX_TEXT]
