"""What differs between SQLite and PostgreSQL, so the store's SQL is written once with `?`.

A dialect opens connections (SQLite in WAL mode and autocommit, so transactions
are explicit and a writer takes the lock up front with BEGIN IMMEDIATE;
PostgreSQL imported only when used), names its column types, says how to
serialise schema changes between processes starting together, how to tell a
pooled connection still works, and how gateways sharing the database tell each
other which jobs changed (PostgreSQL: NOTIFY on CHANGES_CHANNEL, sent inside the
writing transaction so it is delivered on commit and never for a rollback;
SQLite: one machine, nothing to tell).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ocho.errors import SettingsError, StoreUnavailable

# The PostgreSQL advisory lock every gateway takes while it migrates the schema.
SCHEMA_LOCK_KEY = 80770001
# The channel every gateway LISTENs on; a payload is "<origin> <id>,<id>,…".
CHANGES_CHANNEL = "ocho_jobs"
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD = 7900


class Dialect:
    name = ""
    float_type = "DOUBLE PRECISION"
    blob_type = "BYTEA"
    for_update = ""
    # Appended to a FOR UPDATE that may skip rows another transaction holds.
    skip_locked = ""
    unavailable_errors: tuple[type[BaseException], ...] = ()

    def connect(self) -> Any:
        raise NotImplementedError

    def begin(self, conn: Any, write: bool) -> None:
        """Start a transaction (write: take the write lock up front)."""

    def sql(self, text: str) -> str:
        return text

    def lock_schema(self, cur: Any) -> None:
        """Serialise schema changes between gateways starting together."""

    def is_broken(self, conn: Any) -> bool:
        return False

    def check(self, conn: Any) -> None:
        """Raise unless a pooled connection still reaches the server."""

    def announce(self, cur: Any, origin: str, job_ids: Iterable[str]) -> None:
        """Tell other gateways, once this transaction commits, that these jobs changed."""


# How long a SQLite connection waits for another one's lock.
SQLITE_BUSY_S = 30.0


def _use_wal(conn: Any) -> None:
    """Switch the file to WAL. Switching needs the file to itself and SQLite does not
    wait for that (no busy handler): while another gateway migrates a database made
    before WAL, try again until the busy time is over."""
    deadline = time.monotonic() + SQLITE_BUSY_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class SQLite(Dialect):
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
            conn = sqlite3.connect(self.path, timeout=SQLITE_BUSY_S, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_S * 1000)}")
            _use_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot open the SQLite job store {self.path!r}: {exc}") from exc
        return conn

    def begin(self, conn: Any, write: bool) -> None:
        # BEGIN IMMEDIATE is also what serialises migrations: one writer at a time.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")


class Postgres(Dialect):
    name = "postgresql"
    for_update = " FOR UPDATE"
    skip_locked = " SKIP LOCKED"

    def __init__(self, url: str) -> None:
        try:
            import psycopg  # imported here so a SQLite-only gateway never loads it
        except ImportError:
            raise SettingsError("OCHO_DATABASE_URL is a PostgreSQL URL but psycopg is not "
                                "installed: pip install 'ocho-portal[postgres]'") from None

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
        # Released at the end of the transaction that holds it, committed or not.
        cur.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})")

    def is_broken(self, conn: Any) -> bool:
        return bool(conn.broken or conn.closed)

    def check(self, conn: Any) -> None:
        # One empty round trip outside any transaction: a connection the server
        # closed (a restart, an idle timeout) fails here instead of in a request.
        conn.autocommit = True
        try:
            conn.execute("")
        finally:
            conn.autocommit = False

    def announce(self, cur: Any, origin: str, job_ids: Iterable[str]) -> None:
        for payload in notify_payloads(origin, sorted(job_ids)):
            cur.execute("SELECT pg_notify(%s, %s)", (CHANGES_CHANNEL, payload))

    def connect_listener(self) -> Any:
        """A connection of its own, outside the pool, for LISTEN (autocommit)."""
        try:
            return self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except self._psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot connect to the PostgreSQL job store: {exc}") from exc


def notify_payloads(origin: str, job_ids: list[str]) -> Iterator[str]:
    """`origin id,id,…` payloads, each below PostgreSQL's size limit."""
    batch: list[str] = []
    size = len(origin) + 1
    for job_id in job_ids:
        if batch and size + len(job_id) + 1 > MAX_PAYLOAD:
            yield f"{origin} {','.join(batch)}"
            batch, size = [], len(origin) + 1
        batch.append(job_id)
        size += len(job_id) + 1
    if batch:
        yield f"{origin} {','.join(batch)}"


def dialect_for(url: str) -> Dialect:
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path:
            raise SettingsError("OCHO_DATABASE_URL sqlite:/// needs a file path, "
                                "e.g. sqlite:///ocho.sqlite3 or sqlite:////var/lib/ocho/jobs.db")
        return SQLite(path)
    if url.startswith(("postgresql://", "postgres://")):
        return Postgres(url)
    raise SettingsError("OCHO_DATABASE_URL must start with sqlite:/// or postgresql://")
