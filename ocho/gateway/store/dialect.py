"""What differs between SQLite and PostgreSQL, so the store's SQL is written once with `?`.

A dialect opens connections (SQLite in WAL mode and autocommit, so transactions
are explicit and a writer takes the lock up front with BEGIN IMMEDIATE;
PostgreSQL imported only when used), names its column types, and says how to
serialise schema changes between processes starting together.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ocho.errors import SettingsError, StoreUnavailable

# The PostgreSQL advisory lock every gateway takes while it migrates the schema.
SCHEMA_LOCK_KEY = 80770001


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
        # BEGIN IMMEDIATE is also what serialises migrations: one writer at a time.
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")


class Postgres(Dialect):
    name = "postgresql"
    for_update = " FOR UPDATE"
    skip_locked = " SKIP LOCKED"

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
        # Released at the end of the transaction that holds it, committed or not.
        cur.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK_KEY})")

    def is_broken(self, conn: Any) -> bool:
        return bool(conn.broken or conn.closed)


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
