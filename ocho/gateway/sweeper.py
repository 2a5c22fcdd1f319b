"""The retention sweeper: a gateway thread that deletes ended jobs older than OCHO_RETENTION.

Invariants: only ended jobs go (the store's rule), in small batches each in its
own short transaction, so the recorder and the API keep writing meanwhile; a
pass that fails (the database is away) is logged and tried again at the next
one; with OCHO_RETENTION=0 no thread is started at all. Several gateways may
sweep the same database: deleting is idempotent and skips rows another holds.
"""

from __future__ import annotations

import logging
import threading
import time

from ocho.errors import StoreUnavailable
from ocho.gateway.store import Store

log = logging.getLogger(__name__)

# A pass at most this often and at least this rarely; between them, a tenth of the
# retention, so that nothing outlives it by much more than that.
MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 600.0


class RetentionSweeper:
    def __init__(self, store: Store, retention_s: float) -> None:
        self.store = store
        self.retention_s = retention_s
        self.interval_s = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, retention_s / 10))
        self.deleted = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    @property
    def enabled(self) -> bool:
        return self.retention_s > 0

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def sweep(self) -> int:
        """One pass: delete what ended more than the retention ago; how many jobs went."""
        deleted = self.store.delete_ended(time.time() - self.retention_s)
        self.deleted += deleted
        if deleted:
            log.info("retention: deleted %d job(s) that ended more than %.0f s ago",
                     deleted, self.retention_s)
        return deleted

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.sweep()
            except StoreUnavailable as exc:
                log.warning("retention: job store unavailable (%s); trying again in %.0f s",
                            exc, self.interval_s)
            except Exception:
                log.exception("retention: a pass failed; trying again in %.0f s",
                              self.interval_s)
            self._stopping.wait(self.interval_s)
