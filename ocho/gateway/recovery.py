"""The recovery sweep: a thread that, on start and every `OCHO_RECOVER_INTERVAL` seconds,
publishes again (or rejects) the jobs a gateway that died left `submitting`.

Every gateway runs one; the store's claim makes each left-over job one gateway's
at a time, so several sweeping together neither double up nor wait on each
other. The thread never dies of an error: it logs it and tries at the next
tick. Until a sweep ran with the broker connected, it tries every second.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ocho.gateway import handoff
from ocho.gateway.background import BackgroundLoop

if TYPE_CHECKING:
    from ocho.gateway.services import Services

log = logging.getLogger(__name__)

FIRST_TRY_S = 1.0


class Recovery(BackgroundLoop):
    name = "recovery"

    def __init__(self, portal: Services) -> None:
        super().__init__()
        self._portal = portal
        self._swept = False

    def _run(self) -> None:
        interval = self._portal.settings.recover_interval
        while not self.stopping.wait(interval if self._swept else min(interval, FIRST_TRY_S)):
            try:
                self._sweep()
            except Exception as exc:
                log.warning("recovery: sweep failed, trying again later: %s", exc)

    def _sweep(self) -> None:
        if not self._portal.publisher.connected:
            return
        handled = handoff.recover(self._portal)
        self._swept = True
        if handled:
            log.info("recovery: %d job(s) left submitting by a stopped gateway handled",
                     handled)
