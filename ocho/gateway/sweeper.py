"""The retention sweeper: a gateway thread that deletes ended jobs older than OCHO_RETENTION.

Invariants: only ended jobs go (the store's rule), in small batches each in its
own short transaction, so the recorder and the API keep writing meanwhile; a
pass that fails (the database is away) is logged and tried again at the next
one; with OCHO_RETENTION=0 no thread is started at all. Several gateways may
sweep the same database: deleting is idempotent and skips rows another holds.
"""

from __future__ import annotations

import logging
import time

from ocho.errors import StoreUnavailable
from ocho.gateway.background import BackgroundLoop
from ocho.gateway.store import Store

log = logging.getLogger(__name__)

# A pass at most this often and at least this rarely; between them, a tenth of the
# retention, so that nothing outlives it by much more than that.
MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 600.0


class RetentionSweeper(BackgroundLoop):
    name = "retention"
    join_timeout_s = 10.0

    def __init__(self, store: Store, retention_s: float) -> None:
        super().__init__()
        self.store = store
        self.retention_s = retention_s
        self.interval_s = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, retention_s / 10))
        self.deleted = 0

    @property
    def enabled(self) -> bool:
        return self.retention_s > 0

    def start(self) -> None:
        if self.enabled:
            super().start()

    def sweep(self) -> int:
        """One pass: delete what ended more than the retention ago; how many jobs went."""
        deleted = self.store.delete_ended(time.time() - self.retention_s)
        self.deleted += deleted
        if deleted:
            log.info("retention: deleted %d job(s) that ended more than %.0f s ago",
                     deleted, self.retention_s)
        return deleted

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.sweep()
            except StoreUnavailable as exc:
                log.warning("retention: job store unavailable (%s); trying again in %.0f s",
                            exc, self.interval_s)
            except Exception:
                log.exception("retention: a pass failed; trying again in %.0f s",
                              self.interval_s)
            self.stopping.wait(self.interval_s)
