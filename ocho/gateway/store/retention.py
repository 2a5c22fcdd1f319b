"""Retention: deleting ended jobs, and their output, once they are older than a cut-off.

Only jobs in a terminal state whose `finished_at` is before the cut-off go; a
queued or running job is never deleted, however old. Deleting happens in small
batches, each its own short transaction, so the recorder (which needs the same
write lock in SQLite) waits at most one batch. Rows another gateway's sweep
holds are skipped in PostgreSQL (FOR UPDATE SKIP LOCKED), not waited for.
"""

from __future__ import annotations

from ocho.gateway.store.dialect import Dialect
from ocho.gateway.store.transaction import StoreTransaction
from ocho.message import TERMINAL_STATES

# At most this many jobs, and about this much output, per transaction.
BATCH_JOBS = 500
BATCH_OUTPUT_BYTES = 64 * 1024 * 1024


def delete_batch(tx: StoreTransaction, d: Dialect, cutoff: float,
                 size: int = BATCH_JOBS) -> tuple[int, bool]:
    """Delete up to `size` ended jobs finished before `cutoff`; (how many, whether more
    may be left)."""
    states = sorted(TERMINAL_STATES)
    rows = tx.fetchall(
        f"SELECT id, state, output_bytes FROM jobs WHERE finished_at < ? "
        f"AND state IN ({', '.join('?' for _ in states)}) "
        f"ORDER BY finished_at LIMIT ?{d.for_update}{d.skip_locked}",
        (cutoff, *states, size))
    doomed = _within_output_budget(rows)
    if doomed:
        marks = ", ".join("?" for _ in doomed)
        ids = [job_id for job_id, _state in doomed]
        tx.execute(f"DELETE FROM job_output WHERE job_id IN ({marks})", ids)
        tx.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
        for _job_id, state in doomed:
            tx.count(state, -1)
    return len(doomed), len(rows) == size or len(doomed) < len(rows)


def _within_output_budget(rows: list[tuple[str, str, int]]) -> list[tuple[str, str]]:
    """The first rows whose output fits BATCH_OUTPUT_BYTES (always at least one)."""
    kept: list[tuple[str, str]] = []
    total = 0
    for job_id, state, output_bytes in rows:
        total += int(output_bytes)
        if kept and total > BATCH_OUTPUT_BYTES:
            break
        kept.append((str(job_id), str(state)))
    return kept
