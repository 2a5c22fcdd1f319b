"""The emulator's HTTP side: routes, authentication and the API's error bodies.

Served paths (core/v1 only, what the tools use):
  GET  /version  /api  /healthz
  GET|POST               /api/v1/namespaces[/{name}]
  GET (list, ?watch=true) /api/v1/{replicationcontrollers|pods}  (all namespaces)
  GET|POST               /api/v1/namespaces/{ns}/replicationcontrollers
  GET|PUT|PATCH|DELETE   /api/v1/namespaces/{ns}/replicationcontrollers/{name}
  GET|PUT|PATCH          /api/v1/namespaces/{ns}/replicationcontrollers/{name}/scale
  GET                    /api/v1/namespaces/{ns}/pods[/{name}]   DELETE .../pods/{name}
  GET                    /api/v1/namespaces/{ns}/pods/{name}/log (text/plain)
Errors are `Status` objects with the API's reasons, codes and messages.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tests.kube import selectors, validation
from tests.kube.store import Object, now_rfc3339

if TYPE_CHECKING:
    from tests.kube.emulator import KubeEmulator

MAX_BODY = 3 * 1024 * 1024  # the API server's request size limit
KINDS = {"replicationcontrollers": "ReplicationController", "pods": "Pod",
         "namespaces": "Namespace"}
PROPAGATION_POLICIES = ("Orphan", "Background", "Foreground")
_NAMESPACED = re.compile(
    r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<resource>replicationcontrollers|pods)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>scale|status|log))?)?$")
_ALL_NAMESPACES = re.compile(r"^/api/v1/(?P<resource>replicationcontrollers|pods)$")
_NAMESPACES = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?$")


class ApiError(Exception):
    """Raised by a route to answer with a Status body."""

    def __init__(self, code: int, reason: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


def status_body(code: int, reason: str, message: str,
                details: dict[str, Any] | None = None) -> Object:
    body: Object = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def not_found(resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource} "{name}" not found',
                    {"name": name, "kind": resource})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge: the emulator's
    objects have no lists that strategic merge would merge by key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 for the operations clients send: add, replace, remove, test."""
    document = copy.deepcopy(target)
    for operation in operations:
        parts = [part.replace("~1", "/").replace("~0", "~")
                 for part in str(operation.get("path", "")).split("/")[1:]]
        if not parts:
            raise ApiError(422, "Invalid", "the JSON patch path must not be empty")
        parent = document
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        op = operation.get("op")
        if op in ("add", "replace"):
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if op == "add":
                    parent.insert(index, operation.get("value"))
                else:
                    parent[index] = operation.get("value")
            else:
                parent[last] = operation.get("value")
        elif op == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif op == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != operation.get("value"):
                raise ApiError(422, "Invalid", f"the test operation on {operation['path']} "
                                               "failed")
        else:
            raise ApiError(422, "Invalid", f"unsupported JSON patch operation {op!r}")
    return document


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-emulator/1"
    emulator: KubeEmulator  # set on the class made per server

    # -- plumbing -----------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        self.emulator.requests.append(format % args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, "RequestEntityTooLarge", "the request body is too large")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "BadRequest", f"the body is not valid JSON: {exc}") from None

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.route_path = url.path.rstrip("/") or "/"
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        body: Any = None
        try:
            body = self._body()  # always read, so that keep-alive stays in step
            self._authorize()
            self.emulator.check_faults(self.command, self.route_path)
            self._route(body)
        except ApiError as error:
            self._send(error.code, status_body(error.code, error.reason, error.message,
                                               error.details))
        except (BrokenPipeError, ConnectionResetError):
            pass

    # -- authentication and authorization -------------------------------------------------
    def _verb_and_resource(self) -> tuple[str, str, str | None]:
        match = _NAMESPACED.match(self.route_path)
        resource, name, namespace = "", None, None
        if match:
            resource = match["resource"] + (f"/{match['sub']}" if match["sub"] else "")
            name, namespace = match["name"], match["ns"]
        elif match := _ALL_NAMESPACES.match(self.route_path):
            resource = match["resource"]
        elif match := _NAMESPACES.match(self.route_path):
            resource, name = "namespaces", match["name"]
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(self.command, "get")
        if verb == "get" and name is None:
            verb = "watch" if self.query.get("watch") in ("true", "1") else "list"
        self.verb_namespace = namespace
        self.verb_name = name
        return verb, resource, namespace

    def _authorize(self) -> None:
        if self.route_path in ("/healthz", "/version", "/readyz", "/livez"):
            return
        header = self.headers.get("Authorization", "")
        token = header[7:].strip() if header.startswith("Bearer ") else None
        account = self.emulator.tokens.get(token or "")
        if account is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        verb, resource, namespace = self._verb_and_resource()
        if "*" in account.verbs or verb in account.verbs:
            return
        base = resource.split("/")[0] or "resources"
        target = f'{base} "{self.verb_name}"' if self.verb_name else base
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        details = {"name": self.verb_name, "kind": base} if self.verb_name else {"kind": base}
        raise ApiError(403, "Forbidden",
                       f'{target} is forbidden: User "{account.user}" cannot {verb} resource '
                       f'"{resource}" in API group "" {scope}', details)

    # -- routing --------------------------------------------------------------------------
    def _route(self, body: Any) -> None:
        path, method = self.route_path, self.command
        if path in ("/healthz", "/readyz", "/livez"):
            return self._send(200, b"ok", "text/plain; charset=utf-8")
        if path == "/version":
            return self._send(200, {"major": "1", "minor": "37", "gitVersion": "v1.37.0-emulated",
                                    "platform": "linux/amd64"})
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": []})
        if match := _NAMESPACES.match(path):
            return self._namespaces(method, match["name"], body)
        if match := _ALL_NAMESPACES.match(path):
            if method != "GET":
                raise self._not_allowed()
            return self._collection(match["resource"], None)
        match = _NAMESPACED.match(path)
        if match is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace, resource, name, sub = match["ns"], match["resource"], match["name"], match["sub"]
        if name is None:
            if method == "GET":
                return self._collection(resource, namespace)
            if method == "POST":
                return self._create(resource, namespace, body)
            raise self._not_allowed()
        if resource == "replicationcontrollers":
            if sub == "scale":
                return self._scale(namespace, name, method, body)
            if sub == "status":
                if method != "GET":
                    raise self._not_allowed()
                return self._send(200, self._get(resource, namespace, name))
            return self._controller(namespace, name, method, body)
        if sub == "log":
            if method != "GET":
                raise self._not_allowed()
            return self._log(namespace, name)
        if sub is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return self._pod(namespace, name, method)

    def _not_allowed(self) -> ApiError:
        return ApiError(405, "MethodNotAllowed",
                        "the server does not allow this method on the requested resource")

    def _get(self, resource: str, namespace: str, name: str) -> Object:
        obj = self.emulator.store.get(resource, namespace, name)
        if obj is None:
            raise not_found(resource, name)
        return obj

    # -- namespaces -----------------------------------------------------------------------
    def _namespaces(self, method: str, name: str | None, body: Any) -> None:
        store = self.emulator.store
        if name is None and method == "GET":
            return self._collection("namespaces", "")
        if name is None and method == "POST":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "a Namespace object is required")
            causes = validation.metadata(body.get("metadata"))
            if causes:
                ns_name = (body.get("metadata") or {}).get("name", "")
                raise ApiError(422, "Invalid", validation.message("Namespace", ns_name, causes),
                               {"name": ns_name, "kind": "Namespace", "causes": causes})
            body.update(apiVersion="v1", kind="Namespace", status={"phase": "Active"})
            with store.lock:
                if store.get("namespaces", "", body["metadata"]["name"]) is not None:
                    raise ApiError(409, "AlreadyExists",
                                   f'namespaces "{body["metadata"]["name"]}" already exists',
                                   {"name": body["metadata"]["name"], "kind": "namespaces"})
                return self._send(201, store.create("namespaces", "", body))
        if name is not None and method == "GET":
            return self._send(200, self._get("namespaces", "", name))
        raise self._not_allowed()

    # -- lists and watches ----------------------------------------------------------------
    def _filters(self) -> tuple[list[selectors.Requirement], dict[str, str]]:
        try:
            requirements = selectors.parse(self.query.get("labelSelector"))
        except selectors.SelectorError as exc:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {exc}") from None
        fields: dict[str, str] = {}
        for term in filter(None, (self.query.get("fieldSelector") or "").split(",")):
            key, _, value = term.partition("=")
            key = key.rstrip("=")
            value = value.lstrip("=")
            if key not in ("metadata.name", "metadata.namespace", "status.phase"):
                raise ApiError(400, "BadRequest", f'field label not supported: {key}')
            fields[key] = value
        return requirements, fields

    @staticmethod
    def _field_value(obj: Object, key: str) -> str:
        section, _, name = key.partition(".")
        return str((obj.get(section) or {}).get(name, ""))

    def _matcher(self) -> Any:
        requirements, fields = self._filters()

        def matches(obj: Object) -> bool:
            return (selectors.matches(requirements, obj["metadata"].get("labels"))
                    and all(self._field_value(obj, key) == value for key, value in fields.items()))
        return matches

    def _collection(self, resource: str, namespace: str | None) -> None:
        matches = self._matcher()
        if self.query.get("watch") in ("true", "1"):
            return self._watch(resource, namespace, matches)
        store = self.emulator.store
        with store.lock:
            items = store.list(resource, namespace, matches)
            revision = store.revision
        meta: Object = {"resourceVersion": str(revision)}
        limit = int(self.query.get("limit") or 0)
        start = 0
        if self.query.get("continue"):
            try:
                start = json.loads(base64.urlsafe_b64decode(self.query["continue"]))["start"]
            except (ValueError, KeyError):
                raise ApiError(400, "BadRequest", "the continue token is not valid") from None
        if limit or start:
            page = items[start:start + limit] if limit else items[start:]
            if limit and start + limit < len(items):
                meta["continue"] = base64.urlsafe_b64encode(
                    json.dumps({"start": start + limit}).encode()).decode()
                meta["remainingItemCount"] = len(items) - start - limit
            items = page
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        self._send(200, {"kind": f"{KINDS[resource]}List", "apiVersion": "v1",
                         "metadata": meta, "items": items})

    def _watch(self, resource: str, namespace: str | None, matches: Any) -> None:
        """Newline-delimited JSON events over a chunked response, as the API streams them."""
        store = self.emulator.store
        timeout = float(self.query.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def write(event_type: str, obj: Object) -> None:
            line = json.dumps({"type": event_type, "object": obj}).encode() + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()

        since = self.query.get("resourceVersion")
        with store.lock:
            if since in (None, "", "0"):
                revision = store.revision
                initial = store.list(resource, namespace, matches)
            else:
                revision, initial = int(since), []
        try:
            for obj in initial:
                write("ADDED", obj)
            while time.monotonic() < deadline and not self.emulator.stopping:
                with store.changed:
                    events = store.events_after(revision, resource, namespace)
                    if not events:
                        store.changed.wait(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                        continue
                for event in events:
                    revision = event.revision
                    if matches(event.object):
                        write(event.type, event.object)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    # -- creation -------------------------------------------------------------------------
    def _create(self, resource: str, namespace: str, body: Any) -> None:
        store = self.emulator.store
        if resource != "replicationcontrollers":
            raise self._not_allowed()  # pods are made by controllers here
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "a ReplicationController object is required")
        if body.get("kind", "ReplicationController") != "ReplicationController" or \
                body.get("apiVersion", "v1") != "v1":
            raise ApiError(400, "BadRequest", f"the body kind {body.get('kind')!r} / apiVersion "
                                              f"{body.get('apiVersion')!r} is not a v1 "
                                              "ReplicationController")
        meta = body.setdefault("metadata", {})
        if meta.get("namespace") not in (None, namespace):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                                              "match the namespace sent on the request")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + base64.b32encode(
                time.time_ns().to_bytes(8, "big")).decode().lower()[-5:]
        self._default_controller(body)
        causes = validation.replication_controller(body)
        name = meta.get("name", "")
        if causes:
            raise ApiError(422, "Invalid",
                           validation.message("ReplicationController", name, causes),
                           {"name": name, "kind": "ReplicationController", "causes": causes})
        dry_run = self.query.get("dryRun")
        if dry_run not in (None, "All"):  # as the API server's ValidateCreateOptions
            raise ApiError(422, "Invalid", f'CreateOptions.meta.k8s.io "" is invalid: dryRun: '
                           f'Unsupported value: []string{{"{dry_run}"}}: supported values: "All"',
                           {"group": "meta.k8s.io", "kind": "CreateOptions", "causes": [
                               {"reason": "FieldValueNotSupported", "field": "dryRun",
                                "message": 'Unsupported value: ... supported values: "All"'}]})
        with store.lock:
            if store.get("namespaces", "", namespace) is None:
                raise not_found("namespaces", namespace)
            if store.get(resource, namespace, name) is not None:
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists',
                               {"name": name, "kind": resource})
            body.update(apiVersion="v1", kind="ReplicationController")
            meta["generation"] = 1
            body["status"] = {"replicas": 0}
            if self.query.get("dryRun") == "All":
                return self._send(201, body)
            self._send(201, store.create(resource, namespace, body))

    @staticmethod
    def _default_controller(body: Object) -> None:
        """The API server's defaulting for core/v1 RCs."""
        spec = body.get("spec")
        if not isinstance(spec, dict):
            return
        spec.setdefault("replicas", 1)
        template = spec.get("template")
        template_labels = ((template or {}).get("metadata") or {}).get("labels") or {}
        if not spec.get("selector") and template_labels:
            spec["selector"] = dict(template_labels)
        if not body["metadata"].get("labels") and template_labels:
            body["metadata"]["labels"] = dict(template_labels)

    # -- one replication controller -------------------------------------------------------
    def _controller(self, namespace: str, name: str, method: str, body: Any) -> None:
        resource = "replicationcontrollers"
        if method == "GET":
            return self._send(200, self._get(resource, namespace, name))
        if method == "DELETE":
            return self._delete_controller(namespace, name, body)
        if method not in ("PUT", "PATCH"):
            raise self._not_allowed()
        store = self.emulator.store
        with store.lock:
            current = self._get(resource, namespace, name)
            if method == "PUT":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a ReplicationController object is required")
                wanted = body
            else:
                wanted = self._patched(current, body)
            wanted_meta = wanted.setdefault("metadata", {})
            if wanted_meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the "
                                                  "name on the URL")
            self._check_version(resource, name, current, wanted_meta.get("resourceVersion"))
            for kept in ("uid", "creationTimestamp", "generation", "deletionTimestamp",
                         "finalizers", "namespace"):
                if kept in current["metadata"]:
                    wanted_meta[kept] = current["metadata"][kept]
            wanted_meta["name"] = name
            wanted["status"] = current.get("status")
            wanted.update(apiVersion="v1", kind="ReplicationController")
            self._default_controller(wanted)
            causes = validation.replication_controller(wanted)
            if causes:
                raise ApiError(422, "Invalid", validation.message("ReplicationController", name,
                                                                  causes),
                               {"name": name, "kind": "ReplicationController", "causes": causes})
            if wanted.get("spec") != current.get("spec"):
                wanted_meta["generation"] = current["metadata"].get("generation", 1) + 1
            self._send(200, store.update(resource, namespace, wanted))

    def _patched(self, current: Object, body: Any) -> Object:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
            try:
                return json_patch(current, body)
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                raise ApiError(422, "Invalid", f"the JSON patch could not be applied: {exc}") \
                    from None
        if content_type in ("application/merge-patch+json",
                            "application/strategic-merge-patch+json"):
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            return merge_patch(current, body)
        raise ApiError(415, "UnsupportedMediaType",
                       f'the body of the request was in an unknown format - accepted media types '
                       f'include: application/json-patch+json, application/merge-patch+json, '
                       f'application/strategic-merge-patch+json (got "{content_type}")')

    @staticmethod
    def _check_version(resource: str, name: str, current: Object, wanted: str | None) -> None:
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict",
                           f'Operation cannot be fulfilled on {resource} "{name}": the object has '
                           "been modified; please apply your changes to the latest version and "
                           "try again", {"name": name, "kind": resource})

    def _delete_controller(self, namespace: str, name: str, body: Any) -> None:
        resource = "replicationcontrollers"
        options = body if isinstance(body, dict) else {}
        policy = options.get("propagationPolicy") or self.query.get("propagationPolicy")
        if options.get("orphanDependents") is True and policy is None:
            policy = "Orphan"
        if policy is not None and policy not in PROPAGATION_POLICIES:
            cause = validation.invalid("propagationPolicy", policy,
                                       "propagationPolicy must be one of: Orphan, Background, "
                                       "Foreground")
            raise ApiError(422, "Invalid", f'DeleteOptions.meta.k8s.io "" is invalid: '
                                           f'propagationPolicy: {cause["message"]}',
                           {"group": "meta.k8s.io", "kind": "DeleteOptions", "causes": [cause]})
        store = self.emulator.store
        with store.lock:
            current = self._get(resource, namespace, name)
            meta = current["metadata"]
            if meta.get("deletionTimestamp"):
                return self._send(200, current)  # already going; deleting again changes nothing
            # core/v1 ReplicationControllers default to orphaning their pods.
            policy = policy or "Orphan"
            if policy == "Background":
                store.delete(resource, namespace, name)
                return self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                        "status": "Success",
                                        "details": {"name": name, "kind": resource,
                                                    "uid": meta["uid"]}})
            meta["deletionTimestamp"] = now_rfc3339()
            meta["deletionGracePeriodSeconds"] = 0
            meta["finalizers"] = [*meta.get("finalizers", []),
                                  "orphan" if policy == "Orphan" else "foregroundDeletion"]
            self._send(200, store.update(resource, namespace, current))

    # -- the scale subresource ------------------------------------------------------------
    def _scale_of(self, rc: Object) -> Object:
        meta = rc["metadata"]
        selector = ",".join(f"{key}={value}"
                            for key, value in sorted((rc["spec"].get("selector") or {}).items()))
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {key: meta[key] for key in ("name", "namespace", "uid",
                                                        "resourceVersion", "creationTimestamp")},
                "spec": {"replicas": rc["spec"].get("replicas", 1)},
                "status": {"replicas": (rc.get("status") or {}).get("replicas", 0),
                           "selector": selector}}

    def _scale(self, namespace: str, name: str, method: str, body: Any) -> None:
        resource = "replicationcontrollers"
        store = self.emulator.store
        with store.lock:
            rc = self._get(resource, namespace, name)
            if method == "GET":
                return self._send(200, self._scale_of(rc))
            if method == "PUT":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a Scale object is required")
                wanted = body
            elif method == "PATCH":
                wanted = self._patched(self._scale_of(rc), body)
            else:
                raise self._not_allowed()
            self._check_version(resource, name, rc,
                                (wanted.get("metadata") or {}).get("resourceVersion"))
            causes = validation.scale(wanted)
            if causes:
                raise ApiError(422, "Invalid", validation.message("Scale", name, causes),
                               {"name": name, "group": "autoscaling", "kind": "Scale",
                                "causes": causes})
            replicas = (wanted.get("spec") or {}).get("replicas", 0)
            if replicas != rc["spec"].get("replicas"):
                rc["spec"]["replicas"] = replicas
                rc["metadata"]["generation"] = rc["metadata"].get("generation", 1) + 1
                rc = store.update(resource, namespace, rc)
            self._send(200, self._scale_of(rc))

    # -- pods -----------------------------------------------------------------------------
    def _pod(self, namespace: str, name: str, method: str) -> None:
        if method == "GET":
            return self._send(200, self._get("pods", namespace, name))
        if method == "DELETE":
            with self.emulator.store.lock:
                pod = self._get("pods", namespace, name)
                self.emulator.control_plane.delete_pod(namespace, name)
            pod["metadata"]["deletionTimestamp"] = now_rfc3339()
            return self._send(200, pod)
        raise self._not_allowed()

    def _log(self, namespace: str, name: str) -> None:
        pod = self._get("pods", namespace, name)
        containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
        container = self.query.get("container")
        if container is None and len(containers) > 1:
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod "
                                              f"{name}, choose one of: [{' '.join(containers)}]")
        if container is not None and container not in containers:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        entries = self.emulator.logs.read(namespace, name)
        if self.query.get("sinceSeconds"):
            since = datetime.now(UTC) - timedelta(seconds=int(self.query["sinceSeconds"]))
            entries = [(at, line) for at, line in entries if at >= since]
        if self.query.get("tailLines"):
            tail = int(self.query["tailLines"])
            entries = entries[-tail:] if tail > 0 else []
        stamped = self.query.get("timestamps") in ("true", "1")
        text = "".join(
            (f"{at.strftime('%Y-%m-%dT%H:%M:%S.%fZ')} " if stamped else "") + line + "\n"
            for at, line in entries).encode()
        if self.query.get("limitBytes"):
            text = text[:int(self.query["limitBytes"])]
        self._send(200, text, "text/plain; charset=utf-8")
