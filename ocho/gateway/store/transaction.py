"""The operations inside one database transaction; get one from Store.transaction().

Plain SQL plumbing (written with `?`, translated by the dialect), reading and
locking a job row, and the two ways events reach a job: `apply_event` and
`reject`. What a state change does to the row is the job record's business
(ocho.gateway.store.machine); this module only finds or creates the row and
hands it over, locked.

A job belongs to one request: `digest` (sha256 of the request body as
published) is kept with the job, and an event or dead letter that carries
another digest — another request reusing the id — never changes the job.

Job counts by state (the `job_counts` table) change with every insert, state
change and delete; the changes are summed here and written once, just before
commit, in one order of states, so concurrent transactions never deadlock on
those rows and a rolled-back transaction changes no count.

Every job a transaction changes is noted in `touched`, so that the store can
tell other gateways which jobs changed when it commits (LISTEN/NOTIFY).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ocho.errors import JobNotFound
from ocho.gateway.store.dialect import Dialect
from ocho.gateway.store.machine import JobRecord
from ocho.gateway.store.records import SELECT_JOB, Job, job_from_row, text
from ocho.message import QUEUED


class StoreTransaction:
    def __init__(self, dialect: Dialect, cur: Any, output_cap: int) -> None:
        self._sql = dialect.sql
        self._for_update = dialect.for_update
        self.output_cap = output_cap
        self.cur = cur
        self._count_changes: Counter[str] = Counter()
        self.touched: set[str] = set()

    # -- plumbing ---------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self.cur.execute(self._sql(sql), tuple(params))
        return self.cur.rowcount

    def fetchone(self, sql: str, params: Sequence[Any]) -> Any:
        self.cur.execute(self._sql(sql), tuple(params))
        return self.cur.fetchone()

    def fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        self.cur.execute(self._sql(sql), tuple(params))
        return self.cur.fetchall()

    def find(self, job_id: str, lock: bool = False) -> Job | None:
        row = self.fetchone(f"{SELECT_JOB} WHERE id = ?{self._for_update if lock else ''}",
                            (job_id,))
        return None if row is None else job_from_row(row)

    def job(self, job_id: str, lock: bool = False) -> Job:
        job = self.find(job_id, lock)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def count(self, state: str, change: int) -> None:
        """Note that `change` jobs entered (or, negative, left) `state`."""
        self._count_changes[state] += change

    def write_counts(self) -> None:
        """Write the noted count changes; Store.transaction calls this before commit."""
        for state in sorted(self._count_changes):
            change = self._count_changes[state]
            if change:
                self.execute("INSERT INTO job_counts (state, jobs) VALUES (?, ?) "
                             "ON CONFLICT (state) DO UPDATE SET jobs = job_counts.jobs + ?",
                             (state, change, change))
        self._count_changes.clear()

    def record(self, job_id: str) -> JobRecord:
        """The job's row, locked for this transaction, ready for a state change."""
        return JobRecord(self, self.job(job_id, lock=True))

    def touch(self, job_id: str) -> None:
        """Note that the job changed (its waiters, on any gateway, should look again)."""
        self.touched.add(job_id)

    def update(self, job_id: str, **values: Any) -> None:
        self.touch(job_id)
        assignments = ", ".join(f"{name} = ?" for name in values)
        self.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*values.values(), job_id])

    def insert_job(self, job_id: str, *, tool: str | None, args: list[str] | None = None,
                   timeout: int | None = None, correlation_id: str | None = None,
                   created_at: float, state: str = QUEUED, request: bytes | None = None,
                   digest: str | None = None) -> bool:
        """Insert a job (`queued` unless said otherwise) unless the id exists; True if
        inserted. A `request` body is kept until the broker confirmed it."""
        inserted = self.execute(
            "INSERT INTO jobs (id, tool, args, state, attempt, correlation_id, created_at, "
            "timeout, request, claimed_at, digest) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING",
            (job_id, text(tool), json.dumps(args or []), state, text(correlation_id),
             created_at, timeout, request, created_at if request is not None else None,
             digest)) > 0
        if inserted:
            self.count(state, 1)
            self.touch(job_id)
        return inserted

    # -- events -----------------------------------------------------------------------------

    def apply_event(self, event: dict[str, Any]) -> bool:
        """Apply a started/output/finished event; True if the job changed. Events for a job
        the store never saw (submitted straight over AMQP) create it."""
        ts = float(event.get("ts") or time.time())
        args = event.get("args")  # started/finished: a job submitted over AMQP keeps them
        inserted = self.insert_job(str(event["id"]), tool=event.get("tool"), created_at=ts,
                                   args=args if isinstance(args, list) else None,
                                   digest=event.get("digest"))
        record = self.record(str(event["id"]))
        if not record.job.is_request(event.get("digest")):
            return False  # another request that reuses this job's id
        return record.apply(event, ts) or inserted

    def reject(self, job_id: str, reason: str, *, tool: str | None = None,
               args: list[str] | None = None, timeout: int | None = None,
               correlation_id: str | None = None, digest: str | None = None) -> bool:
        """Mark a job that will never run `rejected`, unless it already ended or belongs to
        another request (another digest); True if changed. Creates the job if the store
        never saw it."""
        now = time.time()
        self.insert_job(job_id, tool=tool, args=args, timeout=timeout,
                        correlation_id=correlation_id, created_at=now,
                        digest=digest)
        record = self.record(job_id)
        return record.job.is_request(digest) and record.reject(reason, now)
