"""The Flask app factory: wires settings, store, broker threads and resources."""

from __future__ import annotations

from flask import Flask

from gateway import auth, error_handlers, health, jobs, tools
from gateway.catalog import ToolCatalog
from gateway.notifier import JobNotifier
from gateway.publisher import Publisher
from gateway.recorder import Recorder
from gateway.services import EXTENSION_KEY, Services
from gateway.store import Store
from ocho.settings import Settings

# Form fields that are not files (a `line`, `args` as JSON) are kept in memory;
# arguments may take up to 256 × 4096 characters.
MAX_FORM_FIELD_BYTES = 2 * 1024 * 1024


def create_app(settings: Settings, *, background: bool = True) -> Flask:
    """The gateway app. With `background`, its publisher and recorder threads start now;
    stop them with gateway.services.of(app).stop()."""
    store = Store.open(settings)
    notifier = JobNotifier()
    portal = Services(
        settings=settings,
        store=store,
        notifier=notifier,
        publisher=Publisher(settings),
        recorder=Recorder(settings, store, notifier),
        catalog=ToolCatalog(settings.tools_dir),
    )
    app = Flask("gateway")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_MEMORY_SIZE=MAX_FORM_FIELD_BYTES,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION_KEY] = portal
    error_handlers.register(app)
    auth.install(app, settings.tokens)
    for blueprint in (jobs.blueprint, tools.blueprint, health.blueprint):
        app.register_blueprint(blueprint)
    if background:
        portal.start()
    return app
