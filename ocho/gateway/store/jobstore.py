"""Store: jobs and their output, the one object the rest of the gateway talks to.

Thread-safe: every call borrows a pooled connection for one transaction and
gives it back. Writes take the write lock up front; a transaction that fails
because the database went away raises StoreUnavailable and its connection is
dropped if broken. The rules for state changes are the job record's
(ocho.gateway.store.machine); this class only opens transactions around them.
Opening a Store migrates the schema to the version this code knows.

A job submitted through the API is recorded `submitting` with its request body,
then confirmed (`queued`) once the broker confirmed the request. A row left
`submitting` by a gateway that died is claimed by one gateway at a time
(`claim_unconfirmed`: an UPDATE … RETURNING of a row not claimed recently,
skipping rows another gateway holds) to be published again.

Every committed write tells the gateways sharing the database which jobs it
changed (PostgreSQL NOTIFY); `listen` starts hearing the others' changes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ocho.errors import InvalidRequest, JobConflict, StoreUnavailable
from ocho.gateway.store import retention, schema
from ocho.gateway.store.dialect import Postgres, dialect_for
from ocho.gateway.store.listener import ChangeListener
from ocho.gateway.store.output import CHUNKS_PER_READ, NOTICE_ROOM, slice_output
from ocho.gateway.store.pool import ConnectionPool
from ocho.gateway.store.records import (
    SELECT_JOB,
    Job,
    JobPage,
    OutputSlice,
    Unconfirmed,
    job_from_row,
)
from ocho.gateway.store.transaction import StoreTransaction
from ocho.message import QUEUED, STATES, SUBMITTING
from ocho.settings import Settings

log = logging.getLogger(__name__)


class Store:
    def __init__(self, url: str, *, output_cap: int, pool_size: int = 8) -> None:
        self.output_cap = output_cap
        self._dialect = dialect_for(url)
        self._pool = ConnectionPool(self._dialect.connect, pool_size, self._dialect.check)
        # Names this store's own change notifications, which its listener skips.
        self.origin = uuid.uuid4().hex[:12]
        self.migrate()

    @classmethod
    def open(cls, settings: Settings) -> Store:
        # One connection per serving thread, plus the recorder and a few spare.
        return cls(settings.database_url, output_cap=settings.output_cap,
                   pool_size=settings.gateway_threads + 4)

    @property
    def kind(self) -> str:
        return self._dialect.name

    def close(self) -> None:
        self._pool.close()

    def migrate(self) -> None:
        """Apply the migrations this database lacks (one process at a time)."""
        with self.transaction() as tx:
            found, latest = schema.migrate(tx, self._dialect)
        if found != latest:
            log.info("job store (%s) migrated from schema version %d to %d",
                     self._dialect.name, found, latest)

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[StoreTransaction]:
        """One database transaction; the recorder applies a batch of events in one."""
        conn = self._pool.acquire()
        committed = False
        try:
            try:
                self._dialect.begin(conn, write)
                tx = StoreTransaction(self._dialect, conn.cursor(), self.output_cap)
                yield tx
                tx.write_counts()
                if tx.touched:
                    self._dialect.announce(tx.cur, self.origin, tx.touched)
                conn.commit()
                committed = True
            except self._dialect.unavailable_errors as exc:
                raise StoreUnavailable(f"job store ({self._dialect.name}) failed: {exc}") from exc
        finally:
            if not committed:
                try:
                    conn.rollback()
                except Exception:  # noqa: S110 - the connection is dropped below if broken
                    pass
            self._pool.release(conn, broken=not committed and self._dialect.is_broken(conn))

    # -- writes -----------------------------------------------------------------------------

    def create_job(self, job_id: str, tool: str, args: Sequence[str], *, timeout: int | None,
                   correlation_id: str | None = None, created_at: float | None = None,
                   digest: str | None = None) -> Job:
        """Record a job submitted through the API as `queued`; JobConflict if the id is taken.
        `digest`: ocho.message.request_digest of the body that will be published."""
        with self.transaction() as tx:
            inserted = tx.insert_job(job_id, tool=tool, args=list(args), timeout=timeout,
                                     correlation_id=correlation_id,
                                     created_at=created_at or time.time(),
                                     digest=digest)
            if not inserted:
                raise JobConflict(f"a job with id {job_id} already exists; "
                                  "leave `id` out to get a new one")
            return tx.job(job_id)

    def record_submission(self, job_id: str, tool: str, args: Sequence[str], *,
                          timeout: int | None, correlation_id: str | None, request: bytes,
                          digest: str) -> tuple[Job, bool]:
        """Record a job submitted through the API as `submitting`, keeping its request body
        until confirm_published; (job, True). If the id exists with the same `digest`
        (a client's retry): (that job, False); with another, JobConflict saying so."""
        with self.transaction() as tx:
            if tx.insert_job(job_id, tool=tool, args=list(args), timeout=timeout,
                             correlation_id=correlation_id, created_at=time.time(),
                             state=SUBMITTING, request=request, digest=digest):
                return tx.job(job_id), True
            row = tx.fetchone("SELECT digest FROM jobs WHERE id = ?", (job_id,))
            if row is None or row[0] != digest:
                raise JobConflict(_conflict(job_id, None if row is None else row[0]))
            return tx.job(job_id), False

    def confirm_published(self, job_id: str) -> Job:
        """The broker confirmed the job's request: `queued` unless it moved on already."""
        with self.transaction() as tx:
            record = tx.record(job_id)
            record.confirmed()
            return record.job

    def claim_unconfirmed(self, claimed_before: float, job_id: str | None = None,
                          ) -> Unconfirmed | None:
        """Take one `submitting` job nobody claimed (or submitted) since `claimed_before`,
        the oldest or `job_id`, for this gateway to publish; None if there is none. Safe
        with several gateways: a row is claimed by one of them until it is old again."""
        now = time.time()
        if job_id is None:
            target = (f"(SELECT id FROM jobs WHERE state = ? AND claimed_at < ? "
                      f"ORDER BY claimed_at LIMIT 1{self._dialect.for_update}"
                      f"{self._dialect.skip_locked})")
            params: tuple[Any, ...] = (now, SUBMITTING, claimed_before)
        else:
            target, params = "?", (now, job_id)
        with self.transaction() as tx:
            row = tx.fetchone(
                f"UPDATE jobs SET claimed_at = ? WHERE id = {target} AND state = ? "
                f"AND claimed_at < ? RETURNING id, request, correlation_id, created_at",
                (*params, SUBMITTING, claimed_before))
        if row is None:
            return None
        return Unconfirmed(id=str(row[0]), request=None if row[1] is None else bytes(row[1]),
                           correlation_id=row[2], created_at=float(row[3]))

    def delete_unpublished(self, job_id: str) -> None:
        """Remove a job whose request never reached the broker (and nothing else)."""
        with self.transaction() as tx:
            job = tx.find(job_id, lock=True)
            if job is None or job.state not in (SUBMITTING, QUEUED) or job.attempt:
                return
            tx.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            tx.count(job.state, -1)

    def delete_ended(self, older_than: float, *, pause: float = 0.05,
                     batch: int = retention.BATCH_JOBS) -> int:
        """Delete jobs that ended before the time `older_than` (epoch seconds), with their
        output, a batch per transaction and `pause` seconds between batches so that
        other writers get their turn; how many were deleted."""
        total = 0
        more = True
        while more:
            with self.transaction() as tx:
                deleted, more = retention.delete_batch(tx, self._dialect, older_than, batch)
            total += deleted
            if more:
                time.sleep(pause)
        return total

    def apply_event(self, event: dict[str, Any]) -> bool:
        """Apply one worker event (as loaded by ocho.message.load_event); True if it changed
        the job."""
        with self.transaction() as tx:
            return tx.apply_event(event)

    def reject(self, job_id: str, reason: str, **request: Any) -> bool:
        with self.transaction() as tx:
            return tx.reject(job_id, reason, **request)

    def cancel_queued(self, job_id: str) -> Job:
        """Mark a job still waiting in the queue `cancelled`; other states stay as they are."""
        with self.transaction() as tx:
            record = tx.record(job_id)
            record.cancel_if_queued(time.time())
            return record.job

    # -- reads ------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job:
        """The job, or JobNotFound."""
        with self.transaction(write=False) as tx:
            return tx.job(job_id)

    def list_jobs(self, *, states: Sequence[str] = (), tool: str | None = None, limit: int = 50,
                  before: str | None = None, offset: int = 0) -> JobPage:
        """Newest first. `before` is the `next` of the previous page (a job id)."""
        where: list[str] = []
        params: list[Any] = []
        with self.transaction(write=False) as tx:
            if states:
                where.append(f"state IN ({', '.join('?' for _ in states)})")
                params.extend(states)
            if tool:
                where.append("tool = ?")
                params.append(tool)
            if before:
                row = tx.fetchone("SELECT created_at FROM jobs WHERE id = ?", (before,))
                if row is None:
                    raise InvalidRequest(f"before: no job {before!r}; use the `next` value of "
                                         "the previous page", field="before")
                where.append("(created_at < ? OR (created_at = ? AND id < ?))")
                params.extend([row[0], row[0], before])
            sql = SELECT_JOB
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
            params.extend([limit + 1, offset])
            jobs = [job_from_row(row) for row in tx.fetchall(sql, params)]
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs=jobs, next=jobs[-1].id if more and jobs else None)

    def read_output(self, job_id: str, offset: int = 0, limit: int | None = None) -> OutputSlice:
        """Output of the job's current attempt from byte `offset` (UTF-8 bytes of the combined
        output), at most `limit` bytes, never splitting a character."""
        limit = max(4, limit if limit is not None else self.output_cap + NOTICE_ROOM)
        with self.transaction(write=False) as tx:
            job = tx.job(job_id)
            # Only chunks that can be in the slice: reading every chunk to the end for
            # each page made tailing a large output quadratic. The one starting right
            # at the limit tells the slice that more follows.
            rows = tx.fetchall(
                "SELECT byte_offset, stream, data FROM job_output "
                "WHERE job_id = ? AND attempt = ? AND byte_offset + byte_size > ? "
                "AND byte_offset <= ? ORDER BY byte_offset LIMIT ?",
                (job_id, job.attempt, offset, offset + limit, CHUNKS_PER_READ))
        return slice_output(job, rows, offset, limit)

    def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state (every state, 0 if none): a read of the
        maintained counts, not a count of the jobs table."""
        counts = dict.fromkeys(STATES, 0)
        with self.transaction(write=False) as tx:
            for state, jobs in tx.fetchall("SELECT state, jobs FROM job_counts", ()):
                counts[str(state)] = int(jobs)
        return counts

    def listen(self, on_change: Callable[[list[str]], None],
               on_gap: Callable[[], None]) -> ChangeListener | None:
        """Start hearing which jobs other gateways changed (PostgreSQL); None for SQLite,
        which is one machine's file: see the README on several gateways."""
        if not isinstance(self._dialect, Postgres):
            return None
        listener = ChangeListener(self._dialect.connect_listener, self.origin, on_change,
                                  on_gap)
        listener.start()
        return listener

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""
        with self.transaction(write=False) as tx:
            tx.fetchone("SELECT 1", ())


def _conflict(job_id: str, digest: str | None) -> str:
    if digest is None:
        return (f"a job with id {job_id} already exists and was not submitted through this "
                "API, so a retry cannot be matched to it; leave `id` out to get a new one")
    return (f"a job with id {job_id} already exists with a different request (tool, args, "
            "files or timeout differ); resend the same request to get that job, or leave "
            "`id` out to get a new one")
