"""The job store: one row per job and its output in chunks, in SQLite or PostgreSQL.

All the rules live here, written once against a small dialect layer:

- a job's state only moves forward (queued → running → terminal) and the first
  terminal state wins, so late, duplicate or reordered events are harmless;
- `attempt` says which run the stored record describes: an event of a higher
  attempt (a redelivery after a worker died) replaces the stored output, an
  event of a lower one is stale and ignored;
- output chunks are keyed by (job, attempt, byte offset), so a duplicate chunk
  is a no-op, and the kept output is capped per job (the cap is reported with
  `truncated` and a notice in the output, never silent);
- events for a job the store never saw (submitted straight over AMQP) create it.

Rows are locked while an event is applied (SELECT … FOR UPDATE in PostgreSQL,
BEGIN IMMEDIATE in SQLite), so several gateways may share one PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ocho.errors import InvalidRequest, JobConflict, JobNotFound, SettingsError, StoreUnavailable
from ocho.message import (
    CANCELLED,
    FINISHED,
    OUTPUT,
    QUEUED,
    REJECTED,
    RUNNING,
    STARTED,
    TERMINAL_STATES,
)
from ocho.settings import Settings

# A worker that caps output says so in a last `ocho`-stream chunk placed right
# at the cap; this much room past the cap keeps that notice.
NOTICE_ROOM = 1024
# Chunks read per query; a reader asks again from `next_offset` for more.
CHUNKS_PER_READ = 1000
MAX_TEXT = 4096


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

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


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
class JobPage:
    jobs: list[Job]
    next: str | None  # pass as `before` to get the following (older) page


# -- dialects -------------------------------------------------------------------------------


class _Dialect:
    """What differs between SQLite and PostgreSQL; the SQL is written once with `?`."""

    name = ""
    float_type = "DOUBLE PRECISION"
    blob_type = "BYTEA"
    for_update = ""
    unavailable_errors: tuple[type[BaseException], ...] = ()

    def connect(self) -> Any:
        raise NotImplementedError

    def begin(self, conn: Any, write: bool) -> None:
        """Start a transaction (write: take the write lock up front)."""

    def sql(self, text: str) -> str:
        return text

    def lock_schema(self, cur: Any) -> None:
        """Serialise schema creation between gateways starting together."""

    def is_broken(self, conn: Any) -> bool:
        return False


class _SQLite(_Dialect):
    name = "sqlite"
    float_type = "REAL"
    blob_type = "BLOB"
    unavailable_errors = (sqlite3.OperationalError,)

    def __init__(self, path: str) -> None:
        self.path = path

    def connect(self) -> Any:
        try:
            # Autocommit mode: transactions are explicit (begin/commit) so that a
            # writer takes the lock with BEGIN IMMEDIATE and waits busy_timeout for
            # it, instead of failing when a read transaction tries to upgrade.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot open the SQLite job store {self.path!r}: {exc}") from exc
        return conn

    def begin(self, conn: Any, write: bool) -> None:
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")


class _Postgres(_Dialect):
    name = "postgresql"
    for_update = " FOR UPDATE"

    def __init__(self, url: str) -> None:
        import psycopg  # imported here so a SQLite-only gateway never loads it

        self._psycopg = psycopg
        self.url = url
        self.unavailable_errors = (psycopg.OperationalError, psycopg.InterfaceError)

    def connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url, autocommit=False, connect_timeout=10)
        except self._psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot connect to the PostgreSQL job store: {exc}") from exc

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def lock_schema(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(80770001)")

    def is_broken(self, conn: Any) -> bool:
        return bool(conn.broken or conn.closed)


def _dialect_for(url: str) -> _Dialect:
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path:
            raise SettingsError("OCHO_DATABASE_URL sqlite:/// needs a file path, "
                                "e.g. sqlite:///ocho.sqlite3 or sqlite:////var/lib/ocho/jobs.db")
        return _SQLite(path)
    if url.startswith(("postgresql://", "postgres://")):
        return _Postgres(url)
    raise SettingsError("OCHO_DATABASE_URL must start with sqlite:/// or postgresql://")


class _ConnectionPool:
    """At most `size` connections; each is used by one thread at a time."""

    def __init__(self, connect: Callable[[], Any], size: int) -> None:
        self._connect = connect
        self._size = size
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def acquire(self) -> Any:
        if not self._slots.acquire(timeout=30):
            raise StoreUnavailable(f"all {self._size} job store connections stayed busy for 30 s")
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            return self._connect()
        except BaseException:
            self._slots.release()
            raise

    def release(self, conn: Any, broken: bool) -> None:
        if broken:
            _close_quietly(conn)
        else:
            with self._lock:
                self._idle.append(conn)
        self._slots.release()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: S110 - closing a broken connection may fail; it is gone anyway
        pass


# -- the store ---------------------------------------------------------------------------

_JOB_COLUMNS = ("id", "tool", "args", "state", "exit_code", "attempt", "correlation_id",
                "created_at", "started_at", "finished_at", "ms", "timeout", "truncated",
                "output_bytes", "reason", "worker")
_SELECT_JOB = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"


def _schema(d: _Dialect) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY,
            tool TEXT,
            args TEXT NOT NULL DEFAULT '[]',
            state TEXT NOT NULL,
            exit_code INTEGER,
            attempt INTEGER NOT NULL DEFAULT 0,
            correlation_id TEXT,
            created_at {d.float_type} NOT NULL,
            started_at {d.float_type},
            finished_at {d.float_type},
            ms BIGINT,
            timeout INTEGER,
            truncated INTEGER NOT NULL DEFAULT 0,
            output_bytes BIGINT NOT NULL DEFAULT 0,
            reason TEXT,
            worker TEXT)""",
        "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at, id)",
        "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at)",
        "CREATE INDEX IF NOT EXISTS jobs_by_tool ON jobs (tool, created_at)",
        f"""CREATE TABLE IF NOT EXISTS job_output (
            job_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            byte_offset BIGINT NOT NULL,
            byte_size INTEGER NOT NULL,
            stream TEXT NOT NULL,
            data {d.blob_type} NOT NULL,
            PRIMARY KEY (job_id, attempt, byte_offset))""",
    ]


class Store:
    """Jobs and their output. Thread-safe: every call borrows a pooled connection."""

    def __init__(self, url: str, *, output_cap: int, pool_size: int = 8) -> None:
        self.output_cap = output_cap
        self._dialect = _dialect_for(url)
        self._pool = _ConnectionPool(self._dialect.connect, pool_size)
        self._create_schema()

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

    def _create_schema(self) -> None:
        with self.transaction() as tx:
            self._dialect.lock_schema(tx.cur)
            for statement in _schema(self._dialect):
                tx.cur.execute(statement)

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[StoreTransaction]:
        """One database transaction; the recorder applies a batch of events in one."""
        conn = self._pool.acquire()
        committed = False
        try:
            try:
                self._dialect.begin(conn, write)
                yield StoreTransaction(self, conn.cursor())
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
                   correlation_id: str | None = None, created_at: float | None = None) -> Job:
        """Record a job submitted through the API as `queued`; JobConflict if the id is taken."""
        with self.transaction() as tx:
            inserted = tx.insert_job(job_id, tool=tool, args=list(args), timeout=timeout,
                                     correlation_id=correlation_id,
                                     created_at=created_at or time.time())
            if not inserted:
                raise JobConflict(f"a job with id {job_id} already exists; "
                                  "leave `id` out to get a new one")
            return tx.job(job_id)

    def delete_unpublished(self, job_id: str) -> None:
        """Remove a job whose request never reached the broker (and nothing else)."""
        with self.transaction() as tx:
            tx.execute("DELETE FROM jobs WHERE id = ? AND state = ? AND attempt = 0",
                       (job_id, QUEUED))

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
            job = tx.job(job_id, lock=True)
            if job.state == QUEUED:
                tx.update(job_id, state=CANCELLED, finished_at=time.time(),
                          reason="cancelled before it started")
                job = tx.job(job_id)
            return job

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
            sql = _SELECT_JOB
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
            params.extend([limit + 1, offset])
            jobs = [_job_from_row(row) for row in tx.fetchall(sql, params)]
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs=jobs, next=jobs[-1].id if more and jobs else None)

    def read_output(self, job_id: str, offset: int = 0, limit: int | None = None) -> OutputSlice:
        """Output of the job's current attempt from byte `offset` (UTF-8 bytes of the combined
        output), at most `limit` bytes, never splitting a character."""
        limit = max(4, limit if limit is not None else self.output_cap + NOTICE_ROOM)
        with self.transaction(write=False) as tx:
            job = tx.job(job_id)
            rows = tx.fetchall(
                "SELECT byte_offset, stream, data FROM job_output "
                "WHERE job_id = ? AND attempt = ? AND byte_offset + byte_size > ? "
                "ORDER BY byte_offset LIMIT ?",
                (job_id, job.attempt, offset, CHUNKS_PER_READ))
        chunks: list[Chunk] = []
        position = offset
        taken = 0
        more = len(rows) == CHUNKS_PER_READ
        for row_offset, stream, raw in rows:
            data = bytes(raw)
            start = int(row_offset)
            if start + len(data) <= position:
                continue  # overlaps what was already taken
            if start > position and not job.terminal:
                more = True  # a chunk before this one is still on its way
                break
            if start < position:
                tail = data[position - start:]
                data = _skip_continuation(tail)
                start = position + len(tail) - len(data)
            if taken + len(data) > limit:
                data = _utf8_prefix(data, limit - taken)
                more = True
                if data:
                    chunks.append(Chunk(start, stream, data))
                    position = start + len(data)
                break
            if data:
                chunks.append(Chunk(start, stream, data))
                taken += len(data)
            position = max(position, start + len(data))
        return OutputSlice(job=job, offset=offset, next_offset=position, chunks=chunks,
                           finished=job.terminal and not more)

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""
        with self.transaction(write=False) as tx:
            tx.fetchone("SELECT 1", ())


def _utf8_prefix(data: bytes, size: int) -> bytes:
    """At most `size` bytes of UTF-8 `data`, not cutting a character in two."""
    if size >= len(data):
        return data
    cut = max(size, 0)
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return data[:cut]


def _skip_continuation(data: bytes) -> bytes:
    """Drop the tail of a character cut at the front (an offset inside a character)."""
    start = 0
    while start < len(data) and (data[start] & 0xC0) == 0x80:
        start += 1
    return data[start:]


def _text(value: Any) -> str | None:
    """A string PostgreSQL's TEXT accepts (no NUL), of bounded size."""
    if value is None:
        return None
    return str(value).replace("\0", "\N{REPLACEMENT CHARACTER}")[:MAX_TEXT]


def _job_from_row(row: Sequence[Any]) -> Job:
    values = dict(zip(_JOB_COLUMNS, row, strict=True))
    values["args"] = json.loads(values["args"])
    values["truncated"] = bool(values["truncated"])
    values["output_bytes"] = int(values["output_bytes"])
    return Job(**values)


class StoreTransaction:
    """The operations inside one transaction; get one from Store.transaction()."""

    def __init__(self, store: Store, cur: Any) -> None:
        self._store = store
        self._sql = store._dialect.sql
        self._for_update = store._dialect.for_update
        self.cur = cur

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
        row = self.fetchone(f"{_SELECT_JOB} WHERE id = ?{self._for_update if lock else ''}",
                            (job_id,))
        return None if row is None else _job_from_row(row)

    def job(self, job_id: str, lock: bool = False) -> Job:
        job = self.find(job_id, lock)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}; GET /jobs lists the known jobs")
        return job

    def update(self, job_id: str, **values: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        self.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*values.values(), job_id])

    def insert_job(self, job_id: str, *, tool: str | None, args: list[str] | None = None,
                   timeout: int | None = None, correlation_id: str | None = None,
                   created_at: float) -> bool:
        """Insert a `queued` job unless the id exists; True if inserted."""
        return self.execute(
            "INSERT INTO jobs (id, tool, args, state, attempt, correlation_id, created_at, "
            "timeout) VALUES (?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (job_id, _text(tool), json.dumps(args or []), QUEUED, _text(correlation_id),
             created_at, timeout)) > 0

    # -- the rules --------------------------------------------------------------------------

    def apply_event(self, event: dict[str, Any]) -> bool:
        """Apply a started/output/finished event; True if the job changed."""
        job_id = str(event["id"])
        attempt = int(event["attempt"])
        kind = event["type"]
        ts = float(event.get("ts") or time.time())
        tool = event.get("tool")
        args = event.get("args")  # started/finished: a job submitted over AMQP keeps them
        inserted = self.insert_job(job_id, tool=tool, args=args, created_at=ts)
        job = self.job(job_id, lock=True)
        changed = inserted
        if job.tool is None and tool:
            self.update(job_id, tool=_text(tool))
            changed = True
        if not job.args and args:
            self.update(job_id, args=json.dumps([_text(a) for a in args]))
            changed = True
        if attempt < job.attempt:
            return changed  # an event of a run that was superseded by a redelivery
        if attempt > job.attempt:
            if job.terminal and job.attempt > 0:
                # The job has the final result of a real run; its state and output must
                # keep describing that run, whatever a later redelivery does.
                return changed
            self._begin_attempt(job, attempt)
            job = self.job(job_id)
            changed = True
        if kind == STARTED:
            return self._started(job, event, ts) or changed
        if kind == OUTPUT:
            return self._output(job, event) or changed
        if kind == FINISHED:
            return self._finished(job, event, ts) or changed
        return changed

    def _begin_attempt(self, job: Job, attempt: int) -> None:
        """A new run replaces the stored output of the previous one."""
        self.execute("DELETE FROM job_output WHERE job_id = ?", (job.id,))
        self.update(job.id, attempt=attempt, output_bytes=0, truncated=0, started_at=None,
                    worker=None)

    def _started(self, job: Job, event: dict[str, Any], ts: float) -> bool:
        values: dict[str, Any] = {}
        if job.state == QUEUED:
            values["state"] = RUNNING
        if job.started_at is None:
            values["started_at"] = ts
        if job.worker is None and event.get("worker"):
            values["worker"] = _text(event["worker"])
        if values:
            self.update(job.id, **values)
        return bool(values)

    def _output(self, job: Job, event: dict[str, Any]) -> bool:
        values, kept = self._write_chunk(job, event)
        if job.state == QUEUED:
            values["state"] = RUNNING  # the started event is late or lost
        if values:
            self.update(job.id, **values)
        return kept or bool(values)

    def _write_chunk(self, job: Job, chunk: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Store one piece of output within the cap; returns the job's new
        output_bytes/truncated values and whether anything was kept."""
        offset = int(chunk["offset"])
        if offset < 0:
            return {}, False
        stream = str(chunk["stream"])
        data = str(chunk["data"]).encode("utf-8", errors="replace")
        cap = self._store.output_cap
        values: dict[str, Any] = {}
        end = offset + len(data)
        if end > job.output_bytes:
            values["output_bytes"] = end
        kept = data
        if stream == "ocho" and cap <= offset < cap + NOTICE_ROOM:
            kept = _utf8_prefix(data, NOTICE_ROOM)  # the worker's own truncation notice
        elif end > cap:
            kept = _utf8_prefix(data, cap - offset) if offset < cap else b""
            values["truncated"] = 1
        if kept:
            self._insert_chunk(job, offset, stream, kept)
        if values.get("truncated") and not job.truncated:
            notice = (f"\n[ocho] output truncated: the gateway keeps {cap} bytes "
                      f"per job\n").encode()
            self._insert_chunk(job, offset + len(kept), "ocho", notice)
        return values, bool(kept)

    def _write_chunks(self, job: Job, finished: dict[str, Any]) -> Job:
        """Store the output a `finished` event carries; the job as it then stands
        (its output_bytes and truncated), for the update that follows."""
        for chunk in finished.get("output") or ():
            written, _kept = self._write_chunk(job, chunk)
            job = dataclasses.replace(
                job, output_bytes=written.get("output_bytes", job.output_bytes),
                truncated=job.truncated or bool(written.get("truncated")))
        return job

    def _insert_chunk(self, job: Job, offset: int, stream: str, data: bytes) -> None:
        self.execute(
            "INSERT INTO job_output (job_id, attempt, byte_offset, byte_size, stream, data) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt, byte_offset) DO NOTHING",
            (job.id, job.attempt, offset, len(data), stream, data))

    def _finished(self, job: Job, event: dict[str, Any], ts: float) -> bool:
        if job.terminal:
            if (job.state == CANCELLED and job.started_at is None
                    and event.get("started_ts") is not None):
                return self._ran_despite_cancel(job, event)
            return False  # the first terminal state wins
        # A short job sends neither `started` nor `output`: its finished event has both.
        values: dict[str, Any] = {}
        if job.started_at is None and event.get("started_ts") is not None:
            values["started_at"] = float(event["started_ts"])
        if job.worker is None and event.get("worker"):
            values["worker"] = _text(event["worker"])
        job = self._write_chunks(job, event)
        self.update(
            job.id,
            **values,
            state=event["state"],
            exit_code=event.get("exit_code"),
            ms=event.get("ms"),
            truncated=int(job.truncated or bool(event.get("truncated"))),
            output_bytes=max(job.output_bytes, int(event.get("output_bytes") or 0)),
            reason=_text(event.get("reason")),
            finished_at=ts,
        )
        return True

    def _ran_despite_cancel(self, job: Job, event: dict[str, Any]) -> bool:
        """The gateway cancelled a job it saw queued, but a worker had already started
        it. The state stays `cancelled` (the first terminal state wins); the record
        says that the tool ran, how it ended, and what it printed."""
        job = self._write_chunks(job, event)
        ended = (f"it was stopped: {event.get('reason') or 'cancelled'}"
                 if event["state"] == CANCELLED else
                 f"the tool ran to its end: {event['state']}, exit code {event.get('exit_code')}")
        self.update(job.id, started_at=float(event["started_ts"]),
                    worker=_text(event.get("worker")), exit_code=event.get("exit_code"),
                    ms=event.get("ms"), output_bytes=max(job.output_bytes,
                                                         int(event.get("output_bytes") or 0)),
                    reason=f"cancel requested while it showed as queued, but a worker had "
                           f"already started it; {ended}")
        return True

    def reject(self, job_id: str, reason: str, *, tool: str | None = None,
               args: list[str] | None = None, timeout: int | None = None,
               correlation_id: str | None = None) -> bool:
        """Mark a job that will never run `rejected`, unless it already ended; True if
        changed. Creates the job if the store never saw it."""
        now = time.time()
        self.insert_job(job_id, tool=tool, args=args, timeout=timeout,
                        correlation_id=correlation_id, created_at=now)
        job = self.job(job_id, lock=True)
        if job.terminal:
            return False
        self.update(job_id, state=REJECTED, reason=_text(reason), finished_at=now)
        return True
