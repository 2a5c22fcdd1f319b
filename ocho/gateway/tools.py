"""HTTP resources for the tool catalog: what can run, and each tool's --help."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from werkzeug.exceptions import NotFound

from ocho.errors import UnknownTool
from ocho.gateway.schemas import TOOL_HELP, TOOL_LIST
from ocho.gateway.services import services

blueprint = Blueprint("tools", __name__)


@blueprint.get("/tools")
def list_tools() -> Response:
    catalog = services().catalog
    return jsonify(TOOL_LIST.dump({"tools": [{"name": name, "summary": catalog.summary(name)}
                                             for name in catalog.names()]}))


@blueprint.get("/tools/<name>")
def tool_help(name: str) -> Response:
    try:
        text = services().catalog.help(name)
    except UnknownTool as exc:
        raise NotFound(str(exc)) from None
    return jsonify(TOOL_HELP.dump({"name": name, "help": text}))
