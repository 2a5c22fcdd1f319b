"""The tables and their history: a schema version in the database and ordered migrations.

Invariants:

- `ocho_schema` holds one row, the version of the last migration applied;
  a database without it (made before versions existed) is version 0.
- MIGRATIONS are applied in order, each exactly once, all in one transaction
  with the version bump, so a failure leaves the database as it was.
- One process migrates at a time: the transaction holds PostgreSQL's advisory
  lock, or SQLite's write lock (BEGIN IMMEDIATE); a gateway starting meanwhile
  waits and then finds nothing left to do.
- A migration, once released, never changes: a later change is a new entry.
  Migration 1 is the schema as it was before versions, so it only creates what
  is missing.
- A database newer than this code (a later gateway migrated it) is refused
  rather than written with rules that do not know its columns.

To change the schema, append `Migration(N + 1, "what and why", _vN_plus_1)`
where the function returns the statements for a dialect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from ocho.errors import StoreUnavailable
from ocho.gateway.store.dialect import Dialect

if TYPE_CHECKING:
    from ocho.gateway.store.transaction import StoreTransaction


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    summary: str
    statements: Callable[[Dialect], list[str]]


def _v1_jobs_and_output(d: Dialect) -> list[str]:
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


def _v2_counts_and_retention(d: Dialect) -> list[str]:
    # Counts by state, kept by every state change, so /metrics reads a few rows
    # instead of counting the jobs table; and an index to find old ended jobs.
    return [
        "CREATE TABLE job_counts (state TEXT PRIMARY KEY, jobs BIGINT NOT NULL)",
        "INSERT INTO job_counts (state, jobs) SELECT state, COUNT(*) FROM jobs GROUP BY state",
        "CREATE INDEX jobs_by_finished ON jobs (finished_at)",
    ]


def _v3_request_digest(_d: Dialect) -> list[str]:
    # Which request a job belongs to: events and dead letters of another request that
    # reuses the id (another digest) never change the job.
    return ["ALTER TABLE jobs ADD COLUMN request_digest TEXT"]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs and their output in chunks", _v1_jobs_and_output),
    Migration(2, "job counts by state; index on finished_at", _v2_counts_and_retention),
    Migration(3, "the digest of each job's request", _v3_request_digest),
)
LATEST = MIGRATIONS[-1].version


def migrate(tx: StoreTransaction, d: Dialect) -> tuple[int, int]:
    """Bring the schema to LATEST inside `tx` (a write transaction); (from, to) versions."""
    d.lock_schema(tx.cur)
    tx.execute("CREATE TABLE IF NOT EXISTS ocho_schema (version INTEGER NOT NULL)")
    found = version(tx)
    if found > LATEST:
        raise StoreUnavailable(
            f"the job store has schema version {found}, newer than this gateway knows "
            f"({LATEST}); run the newer ocho-gateway, or a database of its own")
    for migration in MIGRATIONS[found:]:
        for statement in migration.statements(d):
            tx.execute(statement)
    if found == 0:
        tx.execute("INSERT INTO ocho_schema (version) VALUES (?)", (LATEST,))
    elif found < LATEST:
        tx.execute("UPDATE ocho_schema SET version = ?", (LATEST,))
    return found, LATEST


def version(tx: StoreTransaction) -> int:
    row = tx.fetchone("SELECT MAX(version) FROM ocho_schema", ())
    return int(row[0]) if row and row[0] is not None else 0
