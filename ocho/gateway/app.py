"""The Flask app factory: wires settings, store, broker threads and resources."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from flask import Flask, Request
from werkzeug.formparser import FormDataParser

from ocho.errors import InvalidRequest
from ocho.gateway import (
    access_log,
    counters,
    error_handlers,
    guard,
    health,
    jobs,
    openapi,
    shell,
    tools,
    web,
)
from ocho.gateway.catalog import ToolCatalog
from ocho.gateway.notifier import JobNotifier
from ocho.gateway.publisher import Publisher
from ocho.gateway.recorder import Recorder
from ocho.gateway.services import EXTENSION_KEY, Services
from ocho.gateway.store import Store
from ocho.gateway.sweeper import RetentionSweeper
from ocho.settings import Settings

# Form fields that are not files (a `line`, `args` as JSON) are kept in memory;
# arguments may take up to 256 × 4096 characters.
MAX_FORM_FIELD_BYTES = 2 * 1024 * 1024


class _StrictFormParser(FormDataParser):
    """Werkzeug reads a multipart body it cannot parse as an empty form; a request whose
    files silently vanished would run without them, so it is a 400 instead."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["silent"] = False
        super().__init__(*args, **kwargs)

    def parse(self, stream: IO[bytes], mimetype: str, content_length: int | None,
              options: dict[str, str] | None = None) -> Any:
        try:
            return super().parse(stream, mimetype, content_length, options)
        except ValueError as exc:
            raise InvalidRequest(f"the {mimetype} body cannot be read ({exc}); send what "
                                 "curl -F or a browser form sends", field="body") from None


class _Request(Request):
    form_data_parser_class = _StrictFormParser


def create_app(settings: Settings, *, background: bool = True) -> Flask:
    """The gateway app. With `background`, its publisher and recorder threads start now;
    stop them with ocho.gateway.services.of(app).stop()."""
    store = Store.open(settings)
    notifier = JobNotifier()
    portal = Services(
        settings=settings,
        store=store,
        notifier=notifier,
        publisher=Publisher(settings, confirm_timeout=settings.confirm_timeout),
        recorder=Recorder(settings, store, notifier),
        catalog=ToolCatalog(settings.tools_dir),
        sweeper=RetentionSweeper(store, settings.retention_seconds),
    )
    # root_path: templates and static files come from the package, never the cwd.
    app = Flask("gateway", root_path=str(Path(__file__).resolve().parent))
    app.request_class = _Request
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_MEMORY_SIZE=MAX_FORM_FIELD_BYTES,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION_KEY] = portal
    error_handlers.register(app)
    access_log.install(app)  # first: its clock starts before the guard answers a 401
    guard.install(app, guard.Rules(settings))
    for blueprint in (jobs.blueprint, shell.blueprint, tools.blueprint, health.blueprint,
                      web.blueprint, openapi.blueprint):
        app.register_blueprint(blueprint)
    counters.install(app, portal)
    if background:
        portal.start()
    return app
