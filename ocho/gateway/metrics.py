"""GET /metrics: the gateway's numbers in Prometheus' text format (version 0.0.4).

Counters live in this process (they start at 0 when the gateway starts, as
Prometheus expects of counters); job counts by state come from the store, so
every gateway sharing a PostgreSQL reports the same totals for them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, Flask, Response, current_app
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ocho.errors import (
    BrokerUnavailable,
    InvalidRequest,
    JobConflict,
    PayloadTooLarge,
    PublishRejected,
    StoreUnavailable,
)
from ocho.gateway.services import Services, services
from ocho.message import STATES

EXTENSION_KEY = "ocho.metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENTRY_POINTS = ("jobs", "shell")
REFUSALS = ("invalid", "too_large", "conflict", "unavailable", "other")

blueprint = Blueprint("metrics", __name__)


class Metrics:
    """Submission counters, by entry point (POST /jobs, POST /shell)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.submitted = dict.fromkeys(ENTRY_POINTS, 0)
        self.accepted = dict.fromkeys(ENTRY_POINTS, 0)
        self.rejected = {(via, why): 0 for via in ENTRY_POINTS for why in REFUSALS}

    @contextmanager
    def counting(self, via: str) -> Iterator[None]:
        """Count one submission: accepted if the block ends normally (the broker confirmed
        the request), rejected with the kind of its error otherwise."""
        with self._lock:
            self.submitted[via] += 1
        try:
            yield
        except BaseException as exc:
            with self._lock:
                self.rejected[(via, refusal(exc))] += 1
            raise
        with self._lock:
            self.accepted[via] += 1


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


def install(app: Flask) -> None:
    app.extensions[EXTENSION_KEY] = Metrics()
    app.register_blueprint(blueprint)


def of(app: Flask) -> Metrics:
    return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]


@contextmanager
def counting_submission(via: str) -> Iterator[None]:
    """Count a submission to the app handling the current request."""
    with of(current_app).counting(via):
        yield


@blueprint.get("/metrics")
def metrics() -> Response:
    return Response(render(services(), of(current_app)), content_type=CONTENT_TYPE)


def render(portal: Services, counters: Metrics) -> str:
    out = _Exposition()
    by_state = dict.fromkeys(STATES, 0)
    with portal.store.transaction(write=False) as tx:
        for state, count in tx.fetchall("SELECT state, COUNT(*) FROM jobs GROUP BY state", ()):
            by_state[str(state)] = int(count)
    out.family("ocho_jobs", "gauge", "Jobs in the store, by state.")
    for state, count in by_state.items():
        out.sample("ocho_jobs", count, state=state)

    with counters._lock:
        submitted = dict(counters.submitted)
        accepted = dict(counters.accepted)
        rejected = dict(counters.rejected)
    out.family("ocho_gateway_jobs_submitted_total", "counter",
               "Job submissions received (POST /jobs, POST /shell), valid or not.")
    for via, count in submitted.items():
        out.sample("ocho_gateway_jobs_submitted_total", count, via=via)
    out.family("ocho_gateway_jobs_accepted_total", "counter",
               "Submissions the broker confirmed: answered 202 (/jobs) or run (/shell).")
    for via, count in accepted.items():
        out.sample("ocho_gateway_jobs_accepted_total", count, via=via)
    out.family("ocho_gateway_jobs_rejected_total", "counter",
               "Submissions refused before a job existed, by why: invalid (400), too_large "
               "(413), conflict (409), unavailable (503), other.")
    for (via, why), count in rejected.items():
        out.sample("ocho_gateway_jobs_rejected_total", count, via=via, reason=why)

    out.family("ocho_gateway_broker_connected", "gauge",
               "1 while the connection is up: publisher (requests, cancels), recorder "
               "(worker events).")
    out.sample("ocho_gateway_broker_connected", int(portal.publisher.connected),
               connection="publisher")
    out.sample("ocho_gateway_broker_connected", int(portal.recorder.connected),
               connection="recorder")
    out.family("ocho_gateway_recorder_deliveries_total", "counter",
               "Worker events and dead letters the recorder applied to the store and acked.")
    out.sample("ocho_gateway_recorder_deliveries_total", portal.recorder.recorded)

    total, in_use = waiting_slots(portal)
    out.family("ocho_gateway_waiting_slots", "gauge",
               "Server threads that long-polls, event streams and POST /shell may hold.")
    out.sample("ocho_gateway_waiting_slots", total)
    out.family("ocho_gateway_waiting_slots_in_use", "gauge",
               "Waiting slots held now; at the limit, more are answered 503 or at once.")
    out.sample("ocho_gateway_waiting_slots_in_use", in_use)
    return out.text()


def waiting_slots(portal: Services) -> tuple[int, int]:
    """(total, in use) of the app's bounded semaphore of waiting slots."""
    slots = portal.waiting_slots
    total = int(getattr(slots, "_initial_value", 0))
    free = int(getattr(slots, "_value", total))
    return total, max(0, total - free)


class _Exposition:
    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        help_text = help_text.replace("\\", r"\\").replace("\n", r"\n")
        self._lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: int | float, **labels: str) -> None:
        if labels:
            pairs = ",".join(f'{key}="{_label(value)}"' for key, value in labels.items())
            name = f"{name}{{{pairs}}}"
        self._lines.append(f"{name} {value}")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
