"""A worker's own Prometheus metrics, served on OCHO_METRICS_BIND when it is set.

The consumer calls the few methods below as things happen; counting is always
on (it costs a lock and an add) and only the HTTP endpoint is optional.

Invariants: every series is in this object's own registry (never the global
one), so several workers in one process never collide; the `tool` label only
ever holds a tool that exists in OCHO_TOOLS_DIR, anything else is `unknown`,
so a stream of bad requests cannot create unbounded series; busy slots go up
when a job thread takes a delivery and down when it lets go of it, whatever
happened in between.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ocho.errors import SettingsError
from ocho.settings import Settings
from ocho.worker import runner

log = logging.getLogger(__name__)

UNKNOWN_TOOL = "unknown"
# From a `help` to a deploy that waits for its pods, up to the longest time limit.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class WorkerMetrics:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self._declare()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.slots.set(settings.concurrency)
        self._server: WSGIServer | None = None

    def _declare(self) -> None:
        def make(kind: Any, name: str, text: str, labels: tuple[str, ...] = (),
                 **more: Any) -> Any:
            return kind(name, text, labels, registry=self.registry, **more)

        self.started = make(Counter, "ocho_worker_jobs_started", "Jobs this worker started "
                            "running a tool for, by tool.", ("tool",))
        self.finished = make(Counter, "ocho_worker_jobs_finished", "Jobs this worker reported "
                             "finished, by tool and state (rejected: never ran).",
                             ("tool", "state"))
        self.duration = make(Histogram, "ocho_worker_job_duration_seconds", "How long a "
                             "job's tool ran, by tool.", ("tool",), buckets=DURATION_BUCKETS)
        self.busy = make(Gauge, "ocho_worker_busy_slots", "Job slots holding a job now.")
        self.slots = make(Gauge, "ocho_worker_slots", "Job slots (OCHO_CONCURRENCY).")
        self.connected_now = make(Gauge, "ocho_worker_broker_connected",
                                  "1 while the broker connection is open.")
        self.reconnects = make(Counter, "ocho_worker_reconnects", "Broker connections "
                               "opened after the first one (after a loss).")
        self._connections = 0

    # -- hooks the consumer calls ---------------------------------------------------------

    def in_slot(self, handle: Callable[..., None]) -> Callable[..., None]:
        """`handle`, counted as a busy slot while it runs."""
        @functools.wraps(handle)
        def counted(*args: Any) -> None:
            with self.busy.track_inprogress():
                handle(*args)
        return counted

    def job_started(self, tool: str) -> None:
        self.started.labels(self._tool(tool)).inc()

    def job_finished(self, tool: str | None, state: str, ms: int) -> None:
        label = self._tool(tool)
        self.finished.labels(label, state).inc()
        if ms:
            self.duration.labels(label).observe(ms / 1000)

    def connected(self) -> None:
        if self._connections:
            self.reconnects.inc()
        self._connections += 1
        self.connected_now.set(1)

    def disconnected(self) -> None:
        self.connected_now.set(0)

    def _tool(self, tool: str | None) -> str:
        if tool and runner.tool_path(self.settings, tool) is not None:
            return tool
        return UNKNOWN_TOOL

    # -- the endpoint ---------------------------------------------------------------------

    def listen(self, bind: str) -> None:
        """Bind HOST:PORT now (a taken port is a SettingsError, said at start); serve only
        once serve() is called, so no thread exists before the worker forks its helpers."""
        host, _, port = bind.rpartition(":")
        try:
            self._server = make_server(host.strip("[]"), int(port),
                                       make_wsgi_app(self.registry), handler_class=_Quiet)
        except OSError as exc:
            raise SettingsError(f"OCHO_METRICS_BIND={bind}: cannot listen there: "
                                f"{exc.strerror or exc}") from None

    def serve(self) -> None:
        """Answer GET /metrics from a daemon thread (after listen())."""
        if self._server is None:
            return
        threading.Thread(target=self._server.serve_forever, name="metrics",
                         daemon=True).start()
        host, port = self._server.server_address[:2]
        log.info("worker metrics on http://%s:%s/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Quiet(WSGIRequestHandler):
    """No line on stderr per scrape."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass
