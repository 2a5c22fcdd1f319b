"""The job state machine: state changes as methods on a job's locked row.

The rules, written once:

- a job's state only moves forward (submitting → queued → running → terminal)
  and the first terminal state wins, so late, duplicate or reordered events are
  harmless. A worker's event may come before the broker's confirm reached the
  gateway that published the request: it moves a `submitting` job on as it
  would a `queued` one, and the confirm then only drops the kept request;
- a `submitting` job's request body is kept until the job leaves that state;
- `attempt` says which run the stored record describes: an event of a higher
  attempt (a redelivery after a worker died) replaces the stored output, an
  event of a lower one is stale and ignored;
- output chunks are keyed by (job, attempt, byte offset), so a duplicate chunk
  is a no-op, and the kept output is capped per job (the cap is reported with
  `truncated` and a notice in the output, never silent).

A JobRecord lives inside one transaction that holds the row's lock (SELECT …
FOR UPDATE in PostgreSQL, BEGIN IMMEDIATE in SQLite); every method returns
whether the job changed. `self.job` is the snapshot the next rule sees.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from ocho.gateway.store.output import NOTICE_ROOM, utf8_prefix
from ocho.gateway.store.records import Job, text
from ocho.message import (
    CANCELLED,
    FINISHED,
    OUTPUT,
    QUEUED,
    REJECTED,
    RUNNING,
    STARTED,
    SUBMITTING,
)

# The states in which a job waits for a worker.
WAITING = (SUBMITTING, QUEUED)

if TYPE_CHECKING:
    from ocho.gateway.store.transaction import StoreTransaction


class JobRecord:
    def __init__(self, tx: StoreTransaction, job: Job) -> None:
        self.tx = tx
        self.job = job

    def _set(self, **values: Any) -> None:
        if self.job.state == SUBMITTING and values.get("state", SUBMITTING) != SUBMITTING:
            self.tx.update(self.job.id, request=None)  # it is past needing a republish
        self.tx.update(self.job.id, **values)
        if values.get("state", self.job.state) != self.job.state:
            self.tx.count(self.job.state, -1)
            self.tx.count(values["state"], 1)
        if "truncated" in values:
            values["truncated"] = bool(values["truncated"])
        self.job = dataclasses.replace(self.job, **values)

    # -- events from a worker ---------------------------------------------------------------

    def apply(self, event: dict[str, Any], ts: float) -> bool:
        """Apply a started/output/finished event (as loaded by ocho.message.load_event)."""
        changed = self._learn_request(event.get("tool"), event.get("args"))
        attempt = int(event["attempt"])
        if attempt < self.job.attempt:
            return changed  # an event of a run that was superseded by a redelivery
        if attempt > self.job.attempt:
            if self.job.terminal and self.job.attempt > 0:
                # The job has the final result of a real run; its state and output must
                # keep describing that run, whatever a later redelivery does.
                return changed
            self.begin_attempt(attempt)
            changed = True
        kind = event["type"]
        if kind == STARTED:
            return self.start(event, ts) or changed
        if kind == OUTPUT:
            return self.add_output(event) or changed
        if kind == FINISHED:
            return self.finish(event, ts) or changed
        return changed

    def _learn_request(self, tool: Any, args: Any) -> bool:
        """A job created by an event before its request was seen (submitted over AMQP)
        gets its tool and arguments from the events that carry them."""
        changed = False
        if self.job.tool is None and tool:
            self._set(tool=text(tool))
            changed = True
        if not self.job.args and isinstance(args, list) and args:
            learned = [text(arg) or "" for arg in args]
            self.tx.update(self.job.id, args=json.dumps(learned))
            self.job = dataclasses.replace(self.job, args=learned)
            changed = True
        return changed

    def begin_attempt(self, attempt: int) -> None:
        """A new run replaces the stored output of the previous one."""
        self.tx.execute("DELETE FROM job_output WHERE job_id = ?", (self.job.id,))
        self._set(attempt=attempt, output_bytes=0, truncated=0, started_at=None, worker=None)

    def start(self, event: dict[str, Any], ts: float) -> bool:
        values: dict[str, Any] = {}
        if self.job.state in WAITING:
            values["state"] = RUNNING
        if self.job.started_at is None:
            values["started_at"] = ts
        if self.job.worker is None and event.get("worker"):
            values["worker"] = text(event["worker"])
        if values:
            self._set(**values)
        return bool(values)

    def add_output(self, event: dict[str, Any]) -> bool:
        values, kept = self._write_chunk(event)
        if self.job.state in WAITING:
            values["state"] = RUNNING  # the started event is late or lost
        if values:
            self._set(**values)
        return kept or bool(values)

    def finish(self, event: dict[str, Any], ts: float) -> bool:
        job = self.job
        if job.terminal:
            if (job.state == CANCELLED and job.started_at is None
                    and event.get("started_ts") is not None):
                return self._ran_despite_cancel(event)
            return False  # the first terminal state wins
        # A short job sends neither `started` nor `output`: its finished event has both.
        values: dict[str, Any] = {}
        if job.started_at is None and event.get("started_ts") is not None:
            values["started_at"] = float(event["started_ts"])
        if job.worker is None and event.get("worker"):
            values["worker"] = text(event["worker"])
        job = self._write_chunks(event)
        self._set(
            **values,
            state=event["state"],
            exit_code=event.get("exit_code"),
            ms=event.get("ms"),
            truncated=int(job.truncated or bool(event.get("truncated"))),
            output_bytes=max(job.output_bytes, int(event.get("output_bytes") or 0)),
            reason=text(event.get("reason")),
            finished_at=ts,
        )
        return True

    def _ran_despite_cancel(self, event: dict[str, Any]) -> bool:
        """The gateway cancelled a job it saw queued, but a worker had already started
        it. The state stays `cancelled` (the first terminal state wins); the record
        says that the tool ran, how it ended, and what it printed."""
        job = self._write_chunks(event)
        ended = (f"it was stopped: {event.get('reason') or 'cancelled'}"
                 if event["state"] == CANCELLED else
                 f"the tool ran to its end: {event['state']}, exit code {event.get('exit_code')}")
        self._set(started_at=float(event["started_ts"]),
                  worker=text(event.get("worker")), exit_code=event.get("exit_code"),
                  ms=event.get("ms"), output_bytes=max(job.output_bytes,
                                                       int(event.get("output_bytes") or 0)),
                  reason=f"cancel requested while it showed as queued, but a worker had "
                         f"already started it; {ended}")
        return True

    # -- decisions of the gateway -----------------------------------------------------------

    def reject(self, reason: str, now: float) -> bool:
        """`rejected`: the job will never run (unless it already ended)."""
        if self.job.terminal:
            return False
        self._set(state=REJECTED, reason=text(reason), finished_at=now)
        return True

    def confirmed(self) -> bool:
        """The broker confirmed the job's request: `queued`, unless a worker's event (or a
        cancel) already moved it on."""
        if self.job.state != SUBMITTING:
            return False
        self._set(state=QUEUED)
        return True

    def cancel_if_queued(self, now: float) -> bool:
        """`cancelled` if still waiting for a worker (`submitting` or `queued`); other
        states stay as they are."""
        if self.job.state not in WAITING:
            return False
        self._set(state=CANCELLED, finished_at=now, reason="cancelled before it started")
        return True

    # -- output -----------------------------------------------------------------------------

    def _write_chunk(self, chunk: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Store one piece of output within the cap; returns the job's new
        output_bytes/truncated values and whether anything was kept."""
        job = self.job
        offset = int(chunk["offset"])
        if offset < 0:
            return {}, False
        stream = str(chunk["stream"])
        data = str(chunk["data"]).encode("utf-8", errors="replace")
        cap = self.tx.output_cap
        values: dict[str, Any] = {}
        end = offset + len(data)
        if end > job.output_bytes:
            values["output_bytes"] = end
        kept = data
        if stream == "ocho" and cap <= offset < cap + NOTICE_ROOM:
            kept = utf8_prefix(data, NOTICE_ROOM)  # the worker's own truncation notice
        elif end > cap:
            kept = utf8_prefix(data, cap - offset) if offset < cap else b""
            values["truncated"] = 1
        if kept:
            self._insert_chunk(offset, stream, kept)
        if values.get("truncated") and not job.truncated:
            notice = (f"\n[ocho] output truncated: the gateway keeps {cap} bytes "
                      f"per job\n").encode()
            self._insert_chunk(offset + len(kept), "ocho", notice)
        return values, bool(kept)

    def _write_chunks(self, finished: dict[str, Any]) -> Job:
        """Store the output a `finished` event carries; the job as it then stands
        (its output_bytes and truncated), for the update that follows."""
        for chunk in finished.get("output") or ():
            written, _kept = self._write_chunk(chunk)
            self.job = dataclasses.replace(
                self.job, output_bytes=written.get("output_bytes", self.job.output_bytes),
                truncated=self.job.truncated or bool(written.get("truncated")))
        return self.job

    def _insert_chunk(self, offset: int, stream: str, data: bytes) -> None:
        self.tx.touch(self.job.id)
        self.tx.execute(
            "INSERT INTO job_output (job_id, attempt, byte_offset, byte_size, stream, data) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt, byte_offset) DO NOTHING",
            (self.job.id, self.job.attempt, offset, len(data), stream, data))
