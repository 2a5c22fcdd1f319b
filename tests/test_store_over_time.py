"""The job store over time, on a real SQLite file and a real PostgreSQL database:
schema versions and migrations, retention, and the job counts /metrics reads."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ocho.errors import StoreUnavailable
from ocho.gateway.store import Store
from ocho.gateway.store.schema import LATEST, MIGRATIONS

CAP = 4096
DAY = 86400.0

# The schema as it was before it had a version (commit a1f78b0), written out here
# so that the test keeps describing those databases whatever the code becomes.
UNVERSIONED_DDL = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, tool TEXT, args TEXT NOT NULL DEFAULT '[]', state TEXT NOT NULL,
    exit_code INTEGER, attempt INTEGER NOT NULL DEFAULT 0, correlation_id TEXT,
    created_at {float} NOT NULL, started_at {float}, finished_at {float}, ms BIGINT,
    timeout INTEGER, truncated INTEGER NOT NULL DEFAULT 0,
    output_bytes BIGINT NOT NULL DEFAULT 0, reason TEXT, worker TEXT);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_tool ON jobs (tool, created_at);
CREATE TABLE IF NOT EXISTS job_output (
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, byte_offset BIGINT NOT NULL,
    byte_size INTEGER NOT NULL, stream TEXT NOT NULL, data {blob} NOT NULL,
    PRIMARY KEY (job_id, attempt, byte_offset))
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    opened = Store(url, output_cap=CAP, pool_size=4)
    yield opened
    opened.close()


def raw_sql(url: str, statements: list[tuple[str, tuple[Any, ...]]]) -> list[Any]:
    """Run statements straight on the database, as an older gateway would have; the rows
    of the last one."""
    if url.startswith("sqlite:///"):
        conn: Any = sqlite3.connect(url[len("sqlite:///"):])
        mark = "?"
    else:
        conn = psycopg.connect(url)
        mark = "%s"
    try:
        cur = conn.cursor()
        for sql, params in statements:
            cur.execute(sql.replace("?", mark), params)
        rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


def create_unversioned(url: str) -> None:
    sqlite = url.startswith("sqlite:///")
    ddl = UNVERSIONED_DDL.format(float="REAL" if sqlite else "DOUBLE PRECISION",
                                 blob="BLOB" if sqlite else "BYTEA")
    raw_sql(url, [(statement, ()) for statement in ddl.split(";")])


def old_job(job_id: str, state: str, finished_at: float | None) -> tuple[str, tuple[Any, ...]]:
    return ("INSERT INTO jobs (id, tool, args, state, exit_code, attempt, created_at, "
            "started_at, finished_at, ms, output_bytes, worker) "
            "VALUES (?, 'ls', '[\"-l\"]', ?, ?, 1, ?, ?, ?, 5, 6, 'w1')",
            (job_id, state, 0 if state == "succeeded" else None, 1000.0,
             1001.0 if state != "queued" else None, finished_at))


def new_id() -> str:
    return str(uuid.uuid4())


def test_a_database_of_the_unversioned_schema_is_migrated_and_keeps_its_jobs(url: str) -> None:
    create_unversioned(url)
    done, running, queued = new_id(), new_id(), new_id()
    raw_sql(url, [
        old_job(done, "succeeded", 1002.0),
        old_job(running, "running", None),
        old_job(queued, "queued", None),
        ("INSERT INTO job_output (job_id, attempt, byte_offset, byte_size, stream, data) "
         "VALUES (?, 1, 0, 6, 'stdout', ?)", (done, b"hello\n")),
    ])

    store = Store(url, output_cap=CAP)
    try:
        job = store.get_job(done)
        assert (job.state, job.args, job.exit_code, job.finished_at) == (
            "succeeded", ["-l"], 0, 1002.0)
        assert store.read_output(done).data == "hello\n"
        assert store.get_job(running).state == "running"
        counts = store.count_by_state()
        assert (counts["succeeded"], counts["running"], counts["queued"]) == (1, 1, 1)
        # The migrated store keeps working by the rules: the running job ends.
        store.apply_event({"type": "finished", "id": running, "attempt": 1,
                           "state": "failed", "exit_code": 2, "ts": 1003.0})
        assert store.count_by_state()["failed"] == 1
    finally:
        store.close()
    assert raw_sql(url, [("SELECT version FROM ocho_schema", ())]) == [(LATEST,)]


def test_migrations_are_numbered_in_order_and_reopening_changes_nothing(url: str) -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))
    for _ in range(2):
        Store(url, output_cap=CAP).close()
    assert raw_sql(url, [("SELECT version FROM ocho_schema", ())]) == [(LATEST,)]


def test_gateways_starting_together_migrate_once(url: str) -> None:
    create_unversioned(url)
    raw_sql(url, [old_job(new_id(), "succeeded", 1002.0)])
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(url, output_cap=CAP).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert raw_sql(url, [("SELECT version FROM ocho_schema", ())]) == [(LATEST,)]
    assert raw_sql(url, [("SELECT jobs FROM job_counts WHERE state = 'succeeded'", ())]) == [(1,)]


def test_a_database_newer_than_the_code_is_refused(url: str) -> None:
    Store(url, output_cap=CAP).close()
    raw_sql(url, [("UPDATE ocho_schema SET version = ?", (LATEST + 1,))])
    with pytest.raises(StoreUnavailable, match=f"schema version {LATEST + 1}, newer"):
        Store(url, output_cap=CAP)


def ended(store: Store, state: str, finished_at: float) -> str:
    job_id = new_id()
    store.create_job(job_id, "ls", [], timeout=30, created_at=finished_at - 10)
    if state == "rejected":
        store.reject(job_id, "bad")
    elif state == "cancelled":
        store.cancel_queued(job_id)
    else:
        store.apply_event({"type": "output", "id": job_id, "attempt": 1, "stream": "stdout",
                           "offset": 0, "data": "out\n"})
        store.apply_event({"type": "finished", "id": job_id, "attempt": 1, "state": state,
                           "exit_code": 0, "ts": finished_at})
    # reject and cancel stamp the time they happen; age them as the test needs.
    with store.transaction() as tx:
        tx.update(job_id, finished_at=finished_at)
    return job_id


def test_retention_deletes_only_ended_jobs_older_than_the_cutoff(store: Store) -> None:
    now = time.time()
    old = [ended(store, state, now - 40 * DAY)
           for state in ("succeeded", "failed", "timed_out", "rejected", "cancelled")]
    recent = ended(store, "succeeded", now - 1 * DAY)
    old_queued, old_running = new_id(), new_id()
    store.create_job(old_queued, "ls", [], timeout=30, created_at=now - 50 * DAY)
    store.create_job(old_running, "ls", [], timeout=30, created_at=now - 50 * DAY)
    store.apply_event({"type": "started", "id": old_running, "attempt": 1, "ts": now - 50 * DAY})

    assert store.delete_ended(now - 30 * DAY, batch=2, pause=0) == len(old)

    kept = {job.id for job in store.list_jobs(limit=100).jobs}
    assert kept == {recent, old_queued, old_running}
    assert store.read_output(recent).data == "out\n"
    with store.transaction(write=False) as tx:
        left = tx.fetchall("SELECT DISTINCT job_id FROM job_output", ())
    assert {row[0] for row in left} == {recent}
    counts = store.count_by_state()
    assert {state: n for state, n in counts.items() if n} == {
        "succeeded": 1, "queued": 1, "running": 1}
    assert store.delete_ended(now - 30 * DAY) == 0


def test_counts_follow_every_state_change(store: Store) -> None:
    a, b, c, d = new_id(), new_id(), new_id(), new_id()
    for job_id in (a, b, c, d):
        store.create_job(job_id, "ls", [], timeout=30)
    store.apply_event({"type": "started", "id": a, "attempt": 1})
    store.apply_event({"type": "started", "id": a, "attempt": 1})  # duplicate: no change
    store.apply_event({"type": "finished", "id": a, "attempt": 1, "state": "succeeded"})
    store.apply_event({"type": "finished", "id": a, "attempt": 1, "state": "failed"})  # late
    store.cancel_queued(b)
    store.reject(c, "expired")
    store.delete_unpublished(d)
    unseen = new_id()  # an event for a job submitted straight over AMQP
    store.apply_event({"type": "started", "id": unseen, "attempt": 1, "tool": "ls"})
    with store.transaction(write=False) as tx:
        actual = dict(tx.fetchall("SELECT state, COUNT(*) FROM jobs GROUP BY state", ()))
    counts = store.count_by_state()
    assert {state: n for state, n in counts.items() if n} == actual == {
        "succeeded": 1, "cancelled": 1, "rejected": 1, "running": 1}


def test_a_failed_transaction_changes_no_count(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.insert_job(new_id(), tool="ls", created_at=time.time())
        raise RuntimeError("the batch broke")
    assert store.count_by_state()["queued"] == 0


def test_concurrent_batches_keep_the_counts_exact_and_never_deadlock(store: Store) -> None:
    """Two recorders applying batches at once (sorted by job, as the recorder does) each
    change several counts per transaction; the counts end exactly as the jobs are."""
    jobs = sorted(new_id() for _ in range(40))
    for job_id in jobs:
        store.create_job(job_id, "ls", [], timeout=30)
    errors: list[BaseException] = []

    def recorder(events: list[dict[str, Any]]) -> None:
        try:
            for start in range(0, len(events), 8):
                batch = sorted(events[start:start + 8], key=lambda e: e["id"])
                with store.transaction() as tx:
                    for event in batch:
                        tx.apply_event(event)
        except BaseException as exc:  # reported below
            errors.append(exc)

    starts = [{"type": "started", "id": j, "attempt": 1} for j in jobs]
    ends = [{"type": "finished", "id": j, "attempt": 1,
             "state": "succeeded" if i % 2 else "failed"} for i, j in enumerate(jobs)]
    threads = [threading.Thread(target=recorder, args=(events,))
               for events in (starts, ends[::-1], starts[::-1], ends)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    counts = {state: n for state, n in store.count_by_state().items() if n}
    assert counts == {"succeeded": 20, "failed": 20}
