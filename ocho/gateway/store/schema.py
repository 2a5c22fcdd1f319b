"""The tables: jobs, one row each, and job_output, their output in chunks.

Creating them is idempotent (CREATE … IF NOT EXISTS), run by every gateway at
start while it holds the dialect's schema lock.
"""

from __future__ import annotations

from typing import Any

from ocho.gateway.store.dialect import Dialect


def statements(d: Dialect) -> list[str]:
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


def create(cur: Any, d: Dialect) -> None:
    """Create what is missing; run inside a write transaction."""
    d.lock_schema(cur)
    for statement in statements(d):
        cur.execute(statement)
