"""Waiting slots: how many server threads long-polls, event streams and POST /shell may hold.

A bounded semaphore that also says how many slots it has and how many are
held, for /metrics, without anyone reading its private fields. `in_use` is
never negative and never above `total`; releasing a slot never taken is an
error, as with threading.BoundedSemaphore.
"""

from __future__ import annotations

import threading


class WaitingSlots:
    def __init__(self, total: int) -> None:
        self.total = total
        self._slots = threading.BoundedSemaphore(total)
        self._lock = threading.Lock()
        self._held = 0

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if not self._slots.acquire(blocking, timeout):
            return False
        with self._lock:
            self._held += 1
        return True

    def release(self) -> None:
        with self._lock:
            self._slots.release()  # raises ValueError first if none is held
            self._held -= 1

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._held
