"""Hearing about jobs another gateway changed: PostgreSQL LISTEN on a connection of its own.

Invariants:

- one thread per gateway owns one autocommit connection, outside the pool, that
  LISTENs on the changes channel; every payload names the jobs one committed
  transaction changed, and the gateway that wrote it (`origin`): a gateway's
  own changes are skipped, its recorder already woke its waiters;
- a notification sent while the connection was down is lost, so after every
  (re)connect `on_gap` runs: waiters re-read the store instead of waiting for
  their safety-net re-check;
- the thread never dies of an error: it logs it, waits (back-off up to 10 s) and
  reconnects, until `stop`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ocho.gateway.background import BackgroundLoop
from ocho.gateway.store.dialect import CHANGES_CHANNEL

log = logging.getLogger(__name__)

# How often the thread looks at its stop flag while no notification comes.
TICK_S = 0.5
FIRST_BACKOFF_S = 0.2
MOST_BACKOFF_S = 10.0


class ChangeListener(BackgroundLoop):
    name = "store-listener"
    join_timeout_s = TICK_S * 4

    def __init__(self, connect: Callable[[], Any], origin: str,
                 on_change: Callable[[list[str]], None], on_gap: Callable[[], None]) -> None:
        super().__init__()
        self._connect = connect
        self._origin = origin
        self._on_change = on_change
        self._on_gap = on_gap
        self.listening = False

    def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while not self.stopping.is_set():
            try:
                self._listen()
                backoff = FIRST_BACKOFF_S
            except Exception as exc:
                self.listening = False
                log.warning("store listener: %s; reconnecting in %.1f s",
                            str(exc).strip() or type(exc).__name__, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, MOST_BACKOFF_S)

    def _listen(self) -> None:
        with self._connect() as conn:
            conn.execute(f"LISTEN {CHANGES_CHANNEL}")
            self.listening = True
            log.info("store listener: listening for other gateways' changes")
            self._on_gap()
            while not self.stopping.is_set():
                for notice in conn.notifies(timeout=TICK_S):
                    self._heard(notice.payload)
        self.listening = False

    def _heard(self, payload: str) -> None:
        origin, _, ids = payload.partition(" ")
        if origin != self._origin and ids:
            self._on_change(ids.split(","))
