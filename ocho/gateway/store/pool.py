"""A bounded pool of database connections.

At most `size` connections exist; each is used by one thread at a time. A
connection that broke is closed instead of being handed out again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ocho.errors import StoreUnavailable

ACQUIRE_TIMEOUT_S = 30


class ConnectionPool:
    def __init__(self, connect: Callable[[], Any], size: int) -> None:
        self._connect = connect
        self._size = size
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[Any] = []
        self._lock = threading.Lock()

    def acquire(self) -> Any:
        if not self._slots.acquire(timeout=ACQUIRE_TIMEOUT_S):
            raise StoreUnavailable(f"all {self._size} job store connections stayed busy "
                                   f"for {ACQUIRE_TIMEOUT_S} s")
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
            close_quietly(conn)
        else:
            with self._lock:
                self._idle.append(conn)
        self._slots.release()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            close_quietly(conn)


def close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: S110 - closing a broken connection may fail; it is gone anyway
        pass
