"""Rules the gateway checks in code that a marshmallow field cannot state, written into
the OpenAPI document where a client can read them: tools from the catalog, safe
file names, base64 content, this gateway's limits, and the grammars of a command
line (as shlex splits it) and of `args` (a JSON list of strings).

The grammars are patterns so that a generator (schemathesis) draws only lines the
gateway takes; the gateway itself parses with shlex and json, never these.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from ocho.message import MAX_ARG_CHARS, MAX_ARGS

# no leading dot, no '/', '\\', control characters; at most 255 characters.
# What the pattern cannot say (printable characters only, at most 255 bytes in UTF-8)
# this format says in words; a client may register a generator for it.
FILE_NAME_FORMAT = "ocho-file-name"
FILE_NAME_PATTERN = r"^[^./\\\u0000-\u001f\u007f-\u009f][^/\\\u0000-\u001f\u007f-\u009f]{0,254}$"
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
NO_NUL_PATTERN = r"^[^\u0000]*$"
CORRELATION_PATTERN = r"^[ -~]*$"  # printable ASCII (gateway.submission.check_correlation_id)
_WS = r"[ \t\r\n]"
# A command line shlex.split takes, starting with one of the TOOLS: words of plain
# characters, 'single-quoted' or "double-quoted" parts and backslash escapes.
_WORD = r"""(?:[^ \t\r\n'"\\\u0000]|\\[^\u0000]|'[^'\u0000]*'|"(?:[^"\\\u0000]|\\[^\u0000])*")+"""
LINE_PATTERN = rf"^{_WS}*(?:TOOLS)(?:{_WS}+{_WORD})*{_WS}*$"
# A JSON list of strings (written without \u escapes).
_JSON_STRING = r'"(?:[^"\\\u0000-\u001f]|\\["\\/bfnrt])*"'
ARGS_PATTERN = (rf"^{_WS}*\[{_WS}*(?:{_JSON_STRING}(?:{_WS}*,{_WS}*{_JSON_STRING})*)?"
                rf"{_WS}*\]{_WS}*$")
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"



def _file(description: str) -> dict[str, Any]:
    return {"type": "string", "contentMediaType": "application/octet-stream",
            "description": description}


def refine(doc: dict[str, Any], settings: Any, tools: list[str]) -> None:
    """Rules the gateway checks in code, stated where a client can read them."""
    components = doc["components"]["schemas"]
    names = {"type": "string", "format": FILE_NAME_FORMAT, "pattern": FILE_NAME_PATTERN,
             "maxLength": 255,
             "description": "a plain file name: printable characters, at most 255 bytes in "
                            "UTF-8, without '/', '\\' or a leading dot"}
    base64_file = {"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN,
                   "maxLength": 4 * -(-settings.max_file_bytes // 3)}
    submit = components["JobSubmit"]["properties"]
    for name in ("id", "timeout"):
        submit[name].pop("default", None)  # absent: the gateway decides
    submit["id"] |= {"format": "uuid", "pattern": UUID_PATTERN}
    submit["timeout"]["description"] += f" ({settings.default_timeout} if absent)"
    submit["tool"] |= {"enum": tools or ["none"]}
    submit["args"]["items"] |= {"pattern": NO_NUL_PATTERN, "maxLength": MAX_ARG_CHARS}
    submit["args"]["maxItems"] = MAX_ARGS
    submit["files"] |= {"propertyNames": names, "additionalProperties": base64_file,
                        "maxProperties": settings.max_files}
    submit["correlation_id"]["pattern"] = CORRELATION_PATTERN
    job_form = components["JobForm"]
    form = job_form["properties"]
    form["tool"]["enum"] = tools or ["none"]
    form["line"]["pattern"] = LINE_PATTERN.replace(
        "TOOLS", "|".join(re.escape(tool) for tool in tools) or "none")
    form["args"]["pattern"] = ARGS_PATTERN
    form["correlation_id"]["pattern"] = CORRELATION_PATTERN
    for name in ("timeout", "id"):  # an empty field is one left out
        form[name] = {"anyOf": [form[name], {"type": "string", "maxLength": 0}],
                      "description": form[name].pop("description")}
    job_form["oneOf"] = [
        {"required": ["line"], "not": {"anyOf": [{"required": ["tool"]},
                                                 {"required": ["args"]}]}},
        {"required": ["tool"], "not": {"required": ["line"]}},
    ]
    # Multipart: the form's fields and file parts. A file part may have any field name,
    # and as many may be sent as OCHO_MAX_FILES allows; JSON Schema cannot name "any part
    # that is a file" apart from a text field, so one file property stands for them all.
    doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"] = {
        "type": "object",
        "properties": copy.deepcopy(form) | {"file": _file(
            f"a file for the job's directory, named by its part's filename (else its field's "
            f"name); send up to {settings.max_files} file parts, under any field names")},
        "additionalProperties": False,
        "oneOf": copy.deepcopy(job_form["oneOf"]),
    }
    doc["paths"]["/shell"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"] = {
        "type": "object",
        "properties": {"file": _file(
            f"a file for the job's directory, named by its part's field name (`curl -F "
            f"redis.yml=@redis.yml`): send up to {settings.max_files} file parts, each under "
            f"its own name")},
        # Parts that are not files are ignored, as the original ignored them.
        "additionalProperties": True,
    }
