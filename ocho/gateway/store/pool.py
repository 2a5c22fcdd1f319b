"""A bounded pool of database connections.

At most `size` connections exist; each is used by one thread at a time. An
idle connection is checked (the dialect's `check`, a round trip on PostgreSQL)
before it is handed out. A connection that broke, in use or at that check,
is closed, and so is every idle one: what kills one pooled connection (a
server restart, a failover) has killed the others too, and a request should
not be the one to find out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ocho.errors import StoreUnavailable

log = logging.getLogger(__name__)

ACQUIRE_TIMEOUT_S = 30


def _no_check(_conn: Any) -> None:
    pass


class ConnectionPool:
    def __init__(self, connect: Callable[[], Any], size: int,
                 check: Callable[[Any], None] = _no_check) -> None:
        self._connect = connect
        self._check = check
        self._size = size
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def acquire(self) -> Any:
        if not self._slots.acquire(timeout=ACQUIRE_TIMEOUT_S):
            raise StoreUnavailable(f"all {self._size} job store connections stayed busy "
                                   f"for {ACQUIRE_TIMEOUT_S} s")
        try:
            return self._checked_idle() or self._connect()
        except BaseException:
            self._slots.release()
            raise

    def _checked_idle(self) -> Any:
        """An idle connection that still works, or None."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            return None
        try:
            self._check(conn)
        except Exception as exc:
            close_quietly(conn)
            log.warning("job store: a pooled connection is dead (%s); dropping the %d idle "
                        "ones too", str(exc).strip() or type(exc).__name__, self.empty())
            return None
        return conn

    def release(self, conn: Any, broken: bool) -> None:
        if broken:
            close_quietly(conn)
            self.empty()
        else:
            with self._lock:
                self._idle.append(conn)
        self._slots.release()

    def empty(self) -> int:
        """Close every idle connection; how many there were."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            close_quietly(conn)
        return len(idle)

    def close(self) -> None:
        self.empty()


def close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: S110 - closing a broken connection may fail; it is gone anyway
        pass
