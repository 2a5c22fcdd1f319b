"""Wakes the HTTP requests waiting on a job (long-polls, SSE) when the recorder changed it.

A waiter registers interest in one job id and gets its own threading.Event, so a
busy recorder wakes only the requests that care. This is the one seam every wait
goes through (GET /jobs/<id>?wait, the output tail's wait, the event stream,
POST /shell): this gateway's recorder calls `notify` after its commit, and so
does the store listener when another gateway sharing the PostgreSQL database
committed a change (LISTEN/NOTIFY); `notify_all` after the listener lost its
connection, since changes may have been missed meanwhile. The store stays the
truth: a waiter re-reads it after every wake-up, and every few seconds anyway
as a safety net.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Watch:
    """One waiter's view of one job."""

    def __init__(self, notifier: JobNotifier) -> None:
        self._notifier = notifier
        self._changed = threading.Event()

    def wait(self, timeout: float) -> bool:
        """Sleep until the job may have changed or `timeout` passed; True if woken."""
        woken = self._changed.wait(max(0.0, timeout))
        # Cleared before the caller re-reads the store, so a change recorded after
        # that read sets it again and is not lost.
        self._changed.clear()
        return woken

    @property
    def closing(self) -> bool:
        return self._notifier.closing

    def wake(self) -> None:
        """Called by the notifier: the job may have changed."""
        self._changed.set()


class JobNotifier:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}
        self.closing = False

    @contextmanager
    def watch(self, job_id: str) -> Iterator[Watch]:
        watch = Watch(self)
        with self._lock:
            self._watches.setdefault(job_id, set()).add(watch)
        try:
            yield watch
        finally:
            with self._lock:
                watches = self._watches.get(job_id)
                if watches is not None:
                    watches.discard(watch)
                    if not watches:
                        del self._watches[job_id]

    def notify(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            woken = [w for job_id in job_ids for w in self._watches.get(job_id, ())]
        for watch in woken:
            watch.wake()

    def notify_all(self) -> None:
        """Wake every waiter to re-read the store: changes may have gone unheard."""
        with self._lock:
            woken = [w for watches in self._watches.values() for w in watches]
        for watch in woken:
            watch.wake()

    def close(self) -> None:
        """Wake every waiter so that a stopping gateway does not hold requests open."""
        self.closing = True
        self.notify_all()

