"""A worker's liveness signal for container healthchecks: a file
(OCHO_LIVENESS_FILE) whose modification time is the last moment the worker's
I/O loop ran while consuming on a live broker connection.

Invariants: touched only from the I/O loop and at most once per INTERVAL_S, so
a stuck loop or a lost connection lets the file age, and a healthy worker pays
one utime() call every few seconds; no file configured, nothing is done.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("ocho.worker")

INTERVAL_S = 5.0


class LivenessFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._last = float("-inf")
        self._failed = False

    def beat(self) -> None:
        now = time.monotonic()
        if not self.path or now - self._last < INTERVAL_S:
            return
        self._last = now
        try:
            with open(self.path, "a"):
                os.utime(self.path)
        except OSError as exc:
            if not self._failed:  # say it once, not every few seconds
                log.warning("cannot touch the liveness file %s: %s", self.path, exc)
            self._failed = True
