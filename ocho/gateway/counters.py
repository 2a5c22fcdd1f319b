"""The gateway's numbers for GET /metrics (ocho.gateway.health serves them), in Prometheus'
text format (version 0.0.4).

Invariants: every series lives in the app's own prometheus_client registry
(never the global one), so two apps in one process never share counts.
Submission counters live in this process (they start at 0 when the gateway
starts, as Prometheus expects of counters) and have every label combination
from the start; job counts by state come from the store's maintained counts
(a read of a few rows, not a count of the jobs table), so every gateway
sharing a PostgreSQL reports the same totals for them. The standard process
and Python collectors (`process_*`, `python_*`) come along.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask, current_app
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ocho.errors import (
    BrokerUnavailable,
    InvalidRequest,
    JobConflict,
    PayloadTooLarge,
    PublishRejected,
    StoreUnavailable,
)
from ocho.gateway.services import Services

EXTENSION_KEY = "ocho.metrics"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
ENTRY_POINTS = ("jobs", "shell")
REFUSALS = ("invalid", "too_large", "conflict", "unavailable", "other")


class Metrics:
    """The app's registry: submission counters by entry point (POST /jobs, POST /shell),
    the portal's gauges read at scrape time, and the process/Python collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.submitted = Counter(
            "ocho_gateway_jobs_submitted", "Job submissions received (POST /jobs, "
            "POST /shell), valid or not.", ["via"], registry=self.registry)
        self.accepted = Counter(
            "ocho_gateway_jobs_accepted", "Submissions the broker confirmed: answered 202 "
            "(/jobs) or run (/shell).", ["via"], registry=self.registry)
        self.rejected = Counter(
            "ocho_gateway_jobs_rejected", "Submissions refused before a job existed, by why: "
            "invalid (400), too_large (413), conflict (409), unavailable (503), other.",
            ["via", "reason"], registry=self.registry)
        for via in ENTRY_POINTS:
            self.submitted.labels(via)
            self.accepted.labels(via)
            for why in REFUSALS:
                self.rejected.labels(via, why)
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)

    def watch(self, portal: Services) -> None:
        """Report the portal's state (store, broker threads, waiting slots) at each scrape."""
        self.registry.register(PortalCollector(portal))

    @contextmanager
    def counting(self, via: str) -> Iterator[None]:
        """Count one submission: accepted if the block ends normally (the broker confirmed
        the request), rejected with the kind of its error otherwise."""
        self.submitted.labels(via).inc()
        try:
            yield
        except BaseException as exc:
            self.rejected.labels(via, refusal(exc)).inc()
            raise
        self.accepted.labels(via).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class PortalCollector(Collector):
    """Gauges and counters whose values live elsewhere, read when scraped."""

    def __init__(self, portal: Services) -> None:
        self.portal = portal

    def collect(self) -> Iterator[Metric]:
        portal = self.portal
        jobs = GaugeMetricFamily("ocho_jobs", "Jobs in the store, by state.", labels=["state"])
        for state, count in portal.store.count_by_state().items():
            jobs.add_metric([state], count)
        yield jobs
        connected = GaugeMetricFamily(
            "ocho_gateway_broker_connected", "1 while the connection is up: publisher "
            "(requests, cancels), recorder (worker events).", labels=["connection"])
        connected.add_metric(["publisher"], int(portal.publisher.connected))
        connected.add_metric(["recorder"], int(portal.recorder.connected))
        yield connected
        yield CounterMetricFamily(
            "ocho_gateway_recorder_deliveries", "Worker events and dead letters the recorder "
            "applied to the store and acked.", value=portal.recorder.recorded)
        yield from self._slots_and_retention()

    def _slots_and_retention(self) -> Iterator[Metric]:
        slots = self.portal.waiting_slots
        yield GaugeMetricFamily(
            "ocho_gateway_waiting_slots", "Server threads that long-polls, event streams and "
            "POST /shell may hold.", value=slots.total)
        yield GaugeMetricFamily(
            "ocho_gateway_waiting_slots_in_use", "Waiting slots held now; at the limit, more "
            "are answered 503 or at once.", value=slots.in_use)
        sweeper = self.portal.sweeper
        yield CounterMetricFamily(
            "ocho_gateway_retention_deleted_jobs", "Ended jobs this gateway deleted because "
            "they were older than OCHO_RETENTION.", value=sweeper.deleted if sweeper else 0)


def refusal(exc: BaseException) -> str:
    if isinstance(exc, (PayloadTooLarge, RequestEntityTooLarge)):
        return "too_large"
    if isinstance(exc, InvalidRequest):
        return "invalid"
    if isinstance(exc, JobConflict):
        return "conflict"
    if isinstance(exc, (BrokerUnavailable, PublishRejected, StoreUnavailable)):
        return "unavailable"
    if isinstance(exc, HTTPException):
        if exc.code == 503:
            return "unavailable"
        if exc.code == 400:
            return "invalid"
    return "other"


def install(app: Flask, portal: Services) -> None:
    counters = Metrics()
    counters.watch(portal)
    app.extensions[EXTENSION_KEY] = counters


def of(app: Flask) -> Metrics:
    return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]


@contextmanager
def counting_submission(via: str) -> Iterator[None]:
    """Count a submission to the app handling the current request."""
    with of(current_app).counting(via):
        yield
