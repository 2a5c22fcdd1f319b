"""What the HTTP handlers work with, built once per app by ocho.gateway.app.create_app."""

from __future__ import annotations

import dataclasses
import logging

from flask import Flask, current_app

from ocho.gateway.catalog import ToolCatalog
from ocho.gateway.notifier import JobNotifier
from ocho.gateway.publisher import Publisher
from ocho.gateway.recorder import Recorder
from ocho.gateway.slots import WaitingSlots
from ocho.gateway.store import Store
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

    def __post_init__(self) -> None:
        threads = self.settings.gateway_threads
        self.waiting_slots = WaitingSlots(max(1, threads - max(2, threads // 4)))

    def start(self) -> None:
        """Start the publisher's and the recorder's threads (each owns a connection)."""
        self.publisher.start()
        self.recorder.start()
        if self.sweeper is not None:
            self.sweeper.start()

    def stop(self) -> None:
        """Wake waiting requests, let the recorder ack its batch, close connections."""
        self.notifier.close()
        if self.sweeper is not None:
            self.sweeper.stop()
        self.recorder.stop()
        self.publisher.stop()
        self.store.close()
        log.info("gateway services stopped")


def services() -> Services:
    """The services of the app handling the current request."""
    return of(current_app)


def of(app: Flask) -> Services:
    return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
