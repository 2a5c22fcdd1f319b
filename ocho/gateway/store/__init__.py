"""The job store: one row per job and its output in chunks, in SQLite or PostgreSQL.

One module per concept:

- `records`: the immutable snapshots handed out (Job, Chunk, OutputSlice, JobPage);
- `dialect`: what differs between SQLite (a file, WAL) and PostgreSQL;
- `pool`: the bounded connection pool;
- `schema`: the tables, their version and the ordered migrations;
- `machine`: the job state machine, state changes as methods on a locked row;
- `transaction`: SQL plumbing inside one transaction, handing rows to the machine,
  and the job counts by state it keeps;
- `output`: stored chunks → a slice of output from a byte offset;
- `retention`: deleting ended jobs past a cut-off, a batch at a time;
- `jobstore`: Store, the object the gateway uses.

Callers import from here: `from ocho.gateway.store import Store, Job`.
Errors are domain errors (JobNotFound, JobConflict, StoreUnavailable); the
HTTP layer decides how to word them for a client.
"""

from ocho.gateway.store.jobstore import Store
from ocho.gateway.store.output import CHUNKS_PER_READ, NOTICE_ROOM
from ocho.gateway.store.records import MAX_TEXT, Chunk, Job, JobPage, OutputSlice
from ocho.gateway.store.transaction import StoreTransaction

__all__ = ["CHUNKS_PER_READ", "MAX_TEXT", "NOTICE_ROOM", "Chunk", "Job", "JobPage",
           "OutputSlice", "Store", "StoreTransaction"]
