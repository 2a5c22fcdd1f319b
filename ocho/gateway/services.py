"""What the HTTP handlers work with, built once per app by ocho.gateway.app.create_app.

Besides the broker threads, a started gateway runs the recovery sweep (jobs a
dead gateway left `submitting`) and, on PostgreSQL, a listener that wakes this
gateway's waiters when another gateway records a change.
"""

from __future__ import annotations

import dataclasses
import logging

from flask import Flask, current_app

from ocho.gateway.catalog import ToolCatalog
from ocho.gateway.notifier import JobNotifier
from ocho.gateway.publisher import Publisher
from ocho.gateway.recorder import Recorder
from ocho.gateway.recovery import Recovery
from ocho.gateway.slots import WaitingSlots
from ocho.gateway.store import Store
from ocho.gateway.store.listener import ChangeListener
from ocho.gateway.sweeper import RetentionSweeper
from ocho.settings import Settings

log = logging.getLogger(__name__)

EXTENSION_KEY = "ocho"


@dataclasses.dataclass
class Services:
    settings: Settings
    store: Store
    notifier: JobNotifier
    publisher: Publisher
    recorder: Recorder
    catalog: ToolCatalog
    sweeper: RetentionSweeper | None = None  # deletes ended jobs past OCHO_RETENTION
    # Long-polls and event streams each hold a server thread while they wait. This
    # many may wait at once; the rest of the pool stays free for quick requests.
    waiting_slots: WaitingSlots = dataclasses.field(init=False)
    recovery: Recovery | None = dataclasses.field(init=False, default=None)
    listener: ChangeListener | None = dataclasses.field(init=False, default=None)

    def __post_init__(self) -> None:
        threads = self.settings.gateway_threads
        self.waiting_slots = WaitingSlots(max(1, threads - max(2, threads // 4)))

    def start(self) -> None:
        """Start the publisher's and the recorder's threads (each owns a connection), the
        recovery sweep and the store listener."""
        self.publisher.start()
        self.recorder.start()
        if self.sweeper is not None:
            self.sweeper.start()
        self.listener = self.store.listen(self.notifier.notify, self.notifier.notify_all)
        self.recovery = Recovery(self)
        self.recovery.start()

    def stop(self) -> None:
        """Wake waiting requests, let the recorder ack its batch, close connections."""
        self.notifier.close()
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.recovery is not None:
            self.recovery.stop()
        if self.listener is not None:
            self.listener.stop()
        self.recorder.stop()
        self.publisher.stop()
        self.store.close()
        log.info("gateway services stopped")


def services() -> Services:
    """The services of the app handling the current request."""
    return of(current_app)


def of(app: Flask) -> Services:
    return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
