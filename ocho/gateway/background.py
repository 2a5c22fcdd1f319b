"""A gateway's background loop: one daemon thread, started once, that runs until `stop`.

Invariants: `stopping` is the one stop flag, and every wait in a loop waits on it,
so `stop` ends the loop within one wait; `stop` joins the thread for at most
`join_timeout_s` (a daemon thread never holds the process up); a subclass's
`_run` never lets an error end the thread: it logs and carries on.
"""

from __future__ import annotations

import threading


class BackgroundLoop:
    name = "background"
    join_timeout_s = 5.0

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.join_timeout_s)

    def _run(self) -> None:
        raise NotImplementedError
