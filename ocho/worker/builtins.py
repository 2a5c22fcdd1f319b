"""Requests the worker answers itself, without running a tool script.

`help` is the catalog over AMQP: with no argument, the tools there are and
their summaries; with a tool's name, its --help; the same text POST /shell
answers (ocho.gateway.catalog.help_text). It ends as a job does, with one
`finished` event carrying the text as output (stream `stdout`): `succeeded`,
or `failed` with exit code 1 for an unknown tool. Invariant: a built-in takes
precedence over a tool script of the same name, as it does over HTTP.
"""

from __future__ import annotations

import time
from pathlib import Path

from ocho import message
from ocho.gateway.catalog import ToolCatalog, help_text
from ocho.worker.runner import Outcome

HELP = "help"
NAMES = (HELP,)


def answer(tools_dir: Path, args: list[str]) -> Outcome:
    """The outcome of `help [TOOL]`, with its text as the output."""
    began = time.time()
    ok, text = help_text(ToolCatalog(tools_dir), args)
    data = text.encode("utf-8")
    return Outcome(message.SUCCEEDED if ok else message.FAILED, 0 if ok else 1,
                   int((time.time() - began) * 1000), False, len(data),
                   tail=[{"stream": "stdout", "offset": 0, "data": text}], started_ts=began)
