"""GET /openapi.json: the OpenAPI 3.1 document of the whole HTTP API.

Made, not written: the paths and their parameters come from the app's Flask rules
(apispec's FlaskPlugin); each operation's text from `operations`, by endpoint (a
rule without one is an error, so the document and the app cannot drift apart);
query parameters and bodies from the marshmallow schemas the gateway reads and
answers with (ocho.message.JobRequestSchema, gateway.schemas) through apispec's
MarshmallowPlugin. A few rules that the code checks but a marshmallow field cannot
state (a tool from the catalog, safe file names, base64 content, the limits of
this gateway's settings) are added by `refine`, in one place; the schemathesis
test (tests/test_openapi.py) holds the document and the gateway to each other.

The document is made per app, since it names the installed tools and the
configured limits, and again when the catalog changes.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec_webframeworks.flask import FlaskPlugin
from flask import Blueprint, Flask, Response, current_app, jsonify

from ocho.gateway import schemas
from ocho.gateway.auth import OPEN, SHELL_PATH
from ocho.gateway.openapi.operations import JOB_ID, json_body, operations
from ocho.gateway.openapi.refine import FILE_NAME_FORMAT, refine
from ocho.gateway.services import Services, of

__all__ = ["COMPONENTS", "FILE_NAME_FORMAT", "blueprint", "build", "document"]

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
EXTENSION_KEY = "ocho.openapi"

blueprint = Blueprint("openapi", __name__)

DESCRIPTION = """\
Ocho portal runs **tools** (`deploy`, `ls`, `grep`, …) on request: a job is submitted
here, waits in RabbitMQ, and a worker runs it.

Every error is JSON, `{"error": "<what is wrong and how to fix it>", "field": "<the
field>"}`. A `202` for a job means the broker confirmed it holds the request.
`POST /shell` is the original Ochopod portal's call, kept for the scripts that use it.
"""


@blueprint.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(document(current_app))


def document(app: Flask) -> dict[str, Any]:
    """The app's OpenAPI document (cached until the tool catalog changes)."""
    portal = of(app)
    tools = tuple(portal.catalog.names())
    cache = app.extensions.setdefault(EXTENSION_KEY, {"lock": threading.Lock(), "doc": None})
    with cache["lock"]:
        if cache["doc"] is None or cache["tools"] != tools:
            cache["doc"], cache["tools"] = build(app, portal, list(tools)), tools
        return copy.deepcopy(cache["doc"])


def build(app: Flask, portal: Services, tools: list[str]) -> dict[str, Any]:
    settings = portal.settings
    marshmallow = MarshmallowPlugin()
    spec = APISpec(
        title="Ocho portal",
        version=API_VERSION,
        openapi_version=OPENAPI_VERSION,
        plugins=[FlaskPlugin(), marshmallow],
        info={"description": DESCRIPTION},
    )
    assert marshmallow.converter is not None
    marshmallow.converter.add_parameter_attribute_function(_as_the_gateway_reads_it)
    for name, schema in COMPONENTS.items():
        spec.components.schema(name, schema=schema)
    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer",
        "description": "One of the portal's tokens (OCHO_TOKENS). Required on every call "
                       "but GET /healthz and GET / when tokens are configured."})
    spec.components.security_scheme("shellSignature", {
        "type": "apiKey", "in": "header", "name": "X-Signature",
        "description": "POST /shell only, instead of a token: `sha256=<hex>`, an HMAC-SHA256 "
                       "keyed by a token over X-Signature-Timestamp, the query string, "
                       "X-Correlation-Id, the command line and the files, good once within "
                       "OCHO_SIGNATURE_MAX_AGE of its timestamp (see the README's Security "
                       "section)."})
    _add_paths(spec, app, tools, bool(settings.tokens))
    doc = spec.to_dict()
    if settings.tokens:
        doc["security"] = [{"bearerAuth": []}]
    refine(doc, settings, tools)
    return doc


def _add_paths(spec: APISpec, app: Flask, tools: list[str], tokens: bool) -> None:
    """Every rule the app serves, with its view's operations (KeyError for a view the
    document does not describe: the document and the app cannot drift apart)."""
    described_by = operations()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        described = copy.deepcopy(described_by[rule.endpoint])  # apispec resolves them in place
        if tokens:
            _require_credentials(FlaskPlugin.flaskpath2openapi(rule.rule), described)
        parameters = [_path_parameter(name, tools) for name in sorted(rule.arguments)]
        spec.path(view=app.view_functions[rule.endpoint], app=app, operations=described,
                  parameters=parameters or None)


def _path_parameter(name: str, tools: list[str]) -> dict[str, Any]:
    if name == "name":
        return {"in": "path", "name": "name", "required": True,
                "schema": {"type": "string", "enum": tools or ["none"]},
                "description": "a tool's name"}
    return copy.deepcopy(JOB_ID)


def _require_credentials(path: str, operations: dict[str, Any]) -> None:
    """With tokens configured: every call but the open ones needs one (a 401 without)."""
    for method, operation in operations.items():
        if (method.upper(), path) in OPEN:
            operation["security"] = []
            continue
        if path == SHELL_PATH:
            operation["security"] = [{"bearerAuth": []}, {"shellSignature": []}]
        operation["responses"]["401"] = json_body(
            "ShellError" if path == SHELL_PATH else "Error",
            "No credential, or not a valid one (`WWW-Authenticate: Bearer`).")


COMPONENTS = {
    "Job": schemas.JobSchema,
    "JobPage": schemas.JobPageSchema,
    "JobOutput": schemas.JobOutputSchema,
    "OutputEvent": schemas.OutputEventSchema,
    "AttemptEvent": schemas.AttemptEventSchema,
    "JobSubmit": schemas.JobSubmitSchema,
    "JobForm": schemas.JobFormSchema,
    "ShellResult": schemas.ShellResultSchema,
    "Tool": schemas.ToolSchema,
    "ToolList": schemas.ToolListSchema,
    "ToolHelp": schemas.ToolHelpSchema,
    "Health": schemas.HealthSchema,
    "Readiness": schemas.ReadinessSchema,
    "Error": schemas.ErrorSchema,
    "ShellError": schemas.ShellErrorSchema,
}


def _as_the_gateway_reads_it(converter: Any, field: Any, ret: dict[str, Any],
                             **kwargs: Any) -> dict[str, Any]:
    """Query parameters as ocho.gateway.params reads them: an empty value (`?wait=`) is
    the parameter left out; a list is one comma-separated value."""
    if ret.get("in") != "query":
        return {}
    extra: dict[str, Any] = {"allowEmptyValue": True}
    if isinstance(field, schemas.CommaList):
        extra["explode"] = False
    return extra

