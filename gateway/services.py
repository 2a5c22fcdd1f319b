"""What the HTTP handlers work with, built once per app by gateway.app.create_app."""

from __future__ import annotations

import dataclasses
import logging

from flask import Flask, current_app

from gateway.catalog import ToolCatalog
from gateway.notifier import JobNotifier
from gateway.publisher import Publisher
from gateway.recorder import Recorder
from gateway.store import Store
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

    def start(self) -> None:
        """Start the publisher's and the recorder's threads (each owns a connection)."""
        self.publisher.start()
        self.recorder.start()

    def stop(self) -> None:
        """Wake waiting requests, let the recorder ack its batch, close connections."""
        self.notifier.close()
        self.recorder.stop()
        self.publisher.stop()
        self.store.close()
        log.info("gateway services stopped")


def services() -> Services:
    """The services of the app handling the current request."""
    return of(current_app)


def of(app: Flask) -> Services:
    return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
