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
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

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

    def serve(self, bind: str) -> None:
        """Serve GET /metrics on HOST:PORT from a daemon thread."""
        host, _, port = bind.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        log.info("worker metrics on http://%s/metrics", bind)
