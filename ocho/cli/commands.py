"""The subcommands of `ocho` (jobs, status, output, cancel, help) and running a tool.

Invariant: a command name takes precedence over a tool of the same name, which
runs as `ocho run NAME`; every command reports usage errors as CliError.
"""

from __future__ import annotations

import json
import sys

from ocho.cli.client import job_path
from ocho.cli.completion import cmd_completion
from ocho.cli.errors import EXIT_OK, refused
from ocho.cli.follow import Terminal, follow_job
from ocho.cli.options import Options, parse_leading_options
from ocho.cli.uploads import prepare_arguments
from ocho.cli.usage import USAGE

# typing costs start-up time; type checkers read this block, the interpreter skips it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

    Command = Callable[[Options, list[str], Terminal], int]

SUBCOMMANDS = ("run", "jobs", "status", "output", "cancel", "help", "completion")
TERMINAL_STATES = ("succeeded", "failed", "timed_out", "cancelled", "rejected")

# How long `ocho cancel` waits to see the job end.
CANCEL_WAIT_S = 15


def run_tool(options: Options, tool: str, args: list[str], terminal: Terminal) -> int:
    gateway = options.gateway()
    sent_args, uploads = prepare_arguments(args, options.upload)
    job = gateway.submit(tool, sent_args, uploads.read(), options.timeout)
    job_id = job["id"]
    if options.detach:
        print(job_id, flush=True)
        terminal.detail(f"follow it with: ocho output {job_id} --follow")
        return EXIT_OK
    files = f" with {len(uploads.paths)} file(s)" if uploads.paths else ""
    terminal.detail(f"job {job_id} submitted{files}")
    return follow_job(gateway, job_id, terminal)


def command_parser(name: str) -> Any:
    """argparse (imported only for commands) that reports usage errors as CliError."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise refused(f"{self.prog}: {message} (see {self.prog} --help)")

    parser = Parser(prog=f"ocho {name}")
    parser.add_argument("--url", help="the gateway (OCHO_URL)")
    parser.add_argument("--token", help="bearer token (OCHO_TOKEN)")
    return parser


def _with_connection_options(options: Options, parsed: Any) -> Options:
    chosen = options.copy()
    chosen.url = parsed.url or options.url
    chosen.token = parsed.token or options.token
    return chosen


def cmd_jobs(options: Options, words: list[str], terminal: Terminal) -> int:
    parser = command_parser("jobs")
    parser.description = "Recent jobs, newest first."
    parser.add_argument("--state", action="append", default=[],
                        help="only jobs in this state (repeat, or comma-separate): "
                             "queued, running, " + ", ".join(TERMINAL_STATES))
    parser.add_argument("--tool", help="only runs of this tool")
    parser.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON")
    parsed = parser.parse_args(words)
    gateway = _with_connection_options(options, parsed).gateway()
    states = ",".join(s for value in parsed.state for s in value.split(",") if s) or None
    page = gateway.get("/jobs", state=states, tool=parsed.tool, limit=parsed.limit)
    if parsed.json:
        print(json.dumps(page, indent=2))
        return EXIT_OK
    print_jobs_table(page["jobs"])
    return EXIT_OK


def print_jobs_table(jobs: list[dict[str, Any]]) -> None:
    import shlex
    import shutil

    if not jobs:
        print("no jobs yet", file=sys.stderr)
        return
    rows = [("ID", "STATE", "EXIT", "CREATED", "TOOK", "COMMAND")]
    for job in jobs:
        exit_code = job.get("exit_code")
        rows.append((job["id"], job["state"], "" if exit_code is None else str(exit_code),
                     local_time(job.get("created_at")), duration(job.get("ms")),
                     shlex.join([job.get("tool") or "?", *(job.get("args") or [])])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    room = shutil.get_terminal_size((120, 24)).columns - sum(widths) - 2 * len(widths)
    for row in rows:
        command = row[-1] if len(row[-1]) <= max(room, 20) else row[-1][:max(room, 20) - 1] + "…"
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + command)


def local_time(iso: str | None) -> str:
    if not iso:
        return "-"
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def cmd_status(options: Options, words: list[str], terminal: Terminal) -> int:
    parser = command_parser("status")
    parser.description = "One job: its state, exit code, timings."
    parser.add_argument("id", help="the job id")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON")
    parser.add_argument("--wait", type=float, metavar="SECONDS",
                        help="first wait up to SECONDS (at most 60) for the job to end")
    parsed = parser.parse_args(words)
    gateway = _with_connection_options(options, parsed).gateway()
    job = gateway.job(parsed.id, wait=parsed.wait)
    if parsed.json:
        print(json.dumps(job, indent=2))
    else:
        print_job_summary(job)
    return EXIT_OK


def print_job_summary(job: dict[str, Any]) -> None:
    import shlex

    state = job["state"]
    if job.get("exit_code") is not None:
        state += f", exit code {job['exit_code']}"
    lines = [
        ("id", job["id"]),
        ("command", shlex.join([job.get("tool") or "?", *(job.get("args") or [])])),
        ("state", state),
        ("reason", job.get("reason")),
        ("attempt", f"{job['attempt']} on {job['worker']}" if job.get("worker") else None),
        ("created", local_time(job.get("created_at"))),
        ("started", local_time(job.get("started_at")) if job.get("started_at") else None),
        ("finished", local_time(job.get("finished_at")) if job.get("finished_at") else None),
        ("took", duration(job.get("ms")) if job.get("ms") is not None else None),
        ("output", f"{job.get('output_bytes', 0)} bytes"
                   + (" (truncated: the portal kept only the first part)"
                      if job.get("truncated") else "")),
    ]
    for label, value in lines:
        if value:
            print(f"{label:<9} {value}")


def cmd_output(options: Options, words: list[str], terminal: Terminal) -> int:
    parser = command_parser("output")
    parser.description = ("A job's output. Without --follow: what there is so far, stdout "
                          "and stderr together on stdout. With --follow: live, each on its "
                          "own stream, to the end; the exit status is the job's, as for a run.")
    parser.add_argument("id", help="the job id")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing until the job ends")
    parsed = parser.parse_args(words)
    gateway = _with_connection_options(options, parsed).gateway()
    if parsed.follow:
        return follow_job(gateway, parsed.id, terminal)
    offset = 0
    while True:
        out = gateway.get(job_path(parsed.id, "output"), offset=offset)
        terminal.write("stdout", out["data"])
        if out["next_offset"] <= offset or not out["data"]:
            break
        offset = out["next_offset"]
    terminal.end_output()
    if not out["finished"]:
        terminal.note(f"job {parsed.id} is {out['state']}; for the rest: "
                      f"ocho output {parsed.id} --follow")
    return EXIT_OK


def cmd_cancel(options: Options, words: list[str], terminal: Terminal) -> int:
    parser = command_parser("cancel")
    parser.description = "Stop a running job (its whole process group) or drop a queued one."
    parser.add_argument("id", help="the job id")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait to see the job end")
    parsed = parser.parse_args(words)
    gateway = _with_connection_options(options, parsed).gateway()
    job = gateway.cancel(parsed.id)
    if job["state"] not in TERMINAL_STATES and not parsed.no_wait:
        job = gateway.job(parsed.id, wait=CANCEL_WAIT_S)
    if job["state"] == "cancelled":
        print(f"job {parsed.id} cancelled")
    elif job["state"] in TERMINAL_STATES:
        print(f"job {parsed.id} ended {job['state']} before the cancel reached it")
    else:
        print(f"cancel sent; job {parsed.id} is still {job['state']} "
              f"(check: ocho status {parsed.id})")
    return EXIT_OK


def cmd_help(options: Options, words: list[str], terminal: Terminal) -> int:
    if words and words[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return EXIT_OK
    if len(words) > 1:
        raise refused("usage: ocho help [TOOL]")
    gateway = options.gateway()
    if words:
        name = words[0]
        if name in SUBCOMMANDS and name != "help":
            return dispatch(options, [name, "--help"], terminal)
        from urllib.parse import quote

        sys.stdout.write(gateway.get("/tools/" + quote(name, safe=""))["help"])
        return EXIT_OK
    tools = gateway.get("/tools")["tools"]
    print_tools(tools, gateway.url)
    return EXIT_OK


def print_tools(tools: list[dict[str, Any]], url: str) -> None:
    if not tools:
        print(f"the gateway at {url} has no tools")
        return
    width = max(len(tool["name"]) for tool in tools)
    print(f"tools at {url}:")
    for tool in tools:
        clash = (f"  (named like a command: run it as `ocho run {tool['name']}`)"
                 if tool["name"] in SUBCOMMANDS else "")
        print(f"  {tool['name']:<{width}}  {tool.get('summary') or ''}{clash}")
    print("\nocho TOOL ARGS... runs one; ocho help TOOL shows its options; "
          "ocho --help shows ocho's.")


COMMANDS: dict[str, Command] = {
    "jobs": cmd_jobs,
    "status": cmd_status,
    "output": cmd_output,
    "cancel": cmd_cancel,
    "help": cmd_help,
    "completion": cmd_completion,
}


def dispatch(options: Options, words: list[str], terminal: Terminal) -> int:
    """One command line after `ocho`, options already taken off."""
    if not words:
        raise refused("nothing to run (see ocho --help)")
    first, rest = words[0], words[1:]
    if first in COMMANDS:
        return COMMANDS[first](options, rest, terminal)
    if first == "run":
        rest = parse_leading_options(rest, options)
        if options.help or not rest:
            if options.help:
                sys.stdout.write(USAGE)
                return EXIT_OK
            raise refused("usage: ocho run TOOL [ARGS...]")
        first, rest = rest[0], rest[1:]
    return run_tool(options, first, rest, terminal)
