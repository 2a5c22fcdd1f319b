"""Failures of the Kubernetes tools, each turned into one line a person can act on.

The `kubernetes` client raises typed `ApiException`s (NotFoundException,
ConflictException, ...) that carry the server's `Status` body, and lets
urllib3 errors through when the server cannot be reached. `api_failure` and
`transport_failure` are the one place that turns those into `KubeError`s; the
tools print `KubeError`s and never a traceback.
"""

from __future__ import annotations

import json
from typing import Any

from ocho.errors import OchoError

# What a person can do about each kind of refusal.
_HINTS = {
    401: "check OCHO_K8S_TOKEN or the kubeconfig user's credentials",
    403: "the token's account needs RBAC rights for this (a Role bound to it)",
}


class KubeError(OchoError):
    """A failure to report as one line; `status` is the HTTP code when there was one."""

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(one_line(message))
        self.status = status
        self.reason = reason

    @property
    def fatal(self) -> bool:
        """True when every further call would fail the same way (no access at all)."""
        return self.status in (None, 401, 403)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def status_body(raw: Any) -> dict[str, Any]:
    """The `Status` object of an error response, or {} if the body is not one."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) and raw.get("kind") == "Status" else {}


def api_failure(exc: Any, action: str) -> KubeError:
    """Describe an `ApiException` raised while doing `action` (e.g. "create ...")."""
    code = int(getattr(exc, "status", 0) or 0)
    if code == 0:
        # The client reports TLS failures as status 0 with the SSL error as reason.
        reason = one_line(getattr(exc, "reason", "") or "unknown error")
        if "SSL" in reason or "certificate" in reason.lower():
            return KubeError(f"TLS with the Kubernetes API failed while trying to {action}: "
                             f"{reason} (set OCHO_K8S_CA_FILE to the cluster's CA, or "
                             "OCHO_K8S_INSECURE=1 for a test cluster)")
        return KubeError(f"could not {action}: {reason}")
    status = status_body(getattr(exc, "body", None))
    reason = status.get("reason") or one_line(getattr(exc, "reason", "") or "")
    message = one_line(status.get("message") or reason or "no details")
    causes = _causes(status)
    if causes and not all(cause in message for cause in causes):
        message = f"{message} ({'; '.join(causes)})"
    label = {401: "unauthorized", 403: "forbidden", 404: "not found", 409: "conflict",
             413: "too large", 422: "invalid"}.get(code, reason or "error")
    text = f"could not {action}: {code} {label}: {message}"
    terminating = _terminating_namespace(status, message)
    if terminating is not None:
        text = (f"could not {action}: the Kubernetes namespace {terminating!r} is being "
                "deleted (terminating); wait until it is gone and create it again, or use "
                "another namespace")
        reason = "NamespaceTerminating"
    elif code in _HINTS:
        text += f"; {_HINTS[code]}"
    return KubeError(text, status=code, reason=reason or None)


def _terminating_namespace(status: dict[str, Any], message: str) -> str | None:
    """The namespace's name when the refusal is for a namespace being deleted:
    a 403 that RBAC has nothing to do with."""
    details = status.get("details") or {}
    for cause in (details.get("causes") or []) if isinstance(details, dict) else []:
        if isinstance(cause, dict) and cause.get("reason") == "NamespaceTerminating":
            text = str(cause.get("message") or "")
            return text.split()[1] if text.startswith("namespace ") else "?"
    marker = " because it is being terminated"
    if marker in message and " in namespace " in message:
        return message.split(" in namespace ", 1)[1].split(marker, 1)[0]
    return None


def _causes(status: dict[str, Any]) -> list[str]:
    details = status.get("details") or {}
    causes = details.get("causes") or [] if isinstance(details, dict) else []
    found = []
    for cause in causes:
        if isinstance(cause, dict) and cause.get("message"):
            field = cause.get("field")
            found.append(f"{field}: {cause['message']}" if field else str(cause["message"]))
    return found


def transport_failure(exc: BaseException, host: str, action: str) -> KubeError:
    """Describe a urllib3 error: the API server could not be reached or answered garbage."""
    reason: Any = getattr(exc, "reason", None) or exc
    text = one_line(str(reason))
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "No route to host", "Temporary failure in name resolution",
                   "Connection reset", "Network is unreachable"):
        if marker.lower() in text.lower():
            text = marker.lower()
            break
    return KubeError(f"cannot reach the Kubernetes API at {host} to {action}: {text}")
