"""Liveness, readiness and metrics: for process supervisors, load balancers and Prometheus."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from ocho.errors import StoreUnavailable
from ocho.gateway import counters
from ocho.gateway.schemas import HEALTH, READINESS
from ocho.gateway.services import services
from ocho.gateway.store.listener import ChangeListener

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    """The process is up and serving HTTP."""
    return jsonify(HEALTH.dump({"status": "ok"}))


@blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready to take jobs: the broker connections are up and the store answers."""
    portal = services()
    down: list[str] = []
    checks = {"publisher": "up", "recorder": "up", "store": "up"}
    if not portal.publisher.connected:
        checks["publisher"] = "down"
        down.append(f"broker connection for publishing is down ({portal.publisher.last_error})")
    if not portal.recorder.connected:
        checks["recorder"] = "down"
        down.append(f"broker connection for recording events is down "
                    f"({portal.recorder.last_error})")
    try:
        portal.store.ping()
    except StoreUnavailable as exc:
        checks["store"] = "down"
        down.append(f"job store is unreachable ({exc})")
    checks["listener"] = _listener_state(portal.listener)
    if down:
        return jsonify(READINESS.dump({"ready": False, "error": "not ready: " + "; ".join(down),
                                       **checks})), 503
    return jsonify(READINESS.dump({"ready": True, **checks})), 200


def _listener_state(listener: ChangeListener | None) -> str:
    if listener is None:
        return "none"
    return "up" if listener.listening else "down"


@blueprint.get("/metrics")
def metrics() -> Response:
    """The app's counters and the portal's gauges, in Prometheus' text format."""
    return Response(counters.of(current_app).render(), content_type=counters.CONTENT_TYPE)
