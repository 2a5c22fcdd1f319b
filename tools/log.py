#!/usr/bin/env python3
"""log: the last lines each pod of Ochopod clusters wrote."""

from __future__ import annotations

import argparse
import re
import sys

from ocho.kube import tool
from ocho.kube.api import KubeApi, connect  # imports the client lazily
from ocho.kube.clusters import Pod, select_pods
from ocho.kube.config import ToolEnvironment
from ocho.kube.errors import KubeError
from ocho.kube.output import emit_json

PROG = "log"
DESCRIPTION = """\
Print the last lines of each pod's log for the matching clusters, one block per
pod headed by `==> <namespace>.<cluster> <pod> <==`.

A pod with nothing logged yet (e.g. Pending: not scheduled or still pulling
its image) shows `(no log yet)`. A pod whose log cannot be read (its container
is still starting, its node does not answer, it went away) shows why, in its
block and as one line on stderr; the other pods are still shown. Exits 1 only
if no matching pod's log could be read at all.
"""
EPILOG = """\
examples:
  log 'zoo*'                 the last 50 lines of every zookeeper pod
  log dev.kafka --tail 200
  log 'zoo*' --since 10m     only what was written in the last 10 minutes
  log -j 'zoo*'              {"ok": true, "pods": [{"cluster", "pod", "lines", "error"}]}
"""
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    match = _DURATION.match(text.strip())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 10m, 2h or 1d")
    return int(match[1]) * _UNIT_SECONDS[match[2]]


def line_count(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be a number of lines from 1 up, not {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = tool.make_parser(PROG, DESCRIPTION, EPILOG)
    tool.add_cluster_patterns(parser, required=True)
    parser.add_argument("--tail", type=line_count, default=50, metavar="N",
                        help="lines per pod, from the end (default: 50)")
    parser.add_argument("--since", type=duration, metavar="DURATION",
                        help="only lines newer than this: 30s, 10m, 2h, 1d")
    return parser


def main(argv: list[str] | None = None) -> int:
    return tool.main(argv, build_parser(), show_logs)


def show_logs(args: argparse.Namespace) -> int:
    api = connect(ToolEnvironment.from_environ(), args.k8s_namespace)
    blocks = [(pod, *read_one(api, pod, args)) for pod in select_pods(api, args.clusters)]
    ok = any(problem is None for _, _, problem in blocks)
    if args.json:
        emit_json({"ok": ok, "k8s_namespace": api.namespace, "pods": [
            {"cluster": pod.qualified, "pod": pod.name, "lines": lines, "error": problem,
             "gone": problem == GONE}
            for pod, lines, problem in blocks]})
        return 0 if ok else tool.EXIT_FAILED
    for index, (pod, lines, problem) in enumerate(blocks):
        if index:
            print()
        print(f"==> {pod.qualified} {pod.name} <==")
        if problem is not None:
            print(f"({problem})")
            print(f"{PROG}: {pod.qualified} {pod.name}: {problem}", file=sys.stderr)
        elif not lines:
            print("(no log yet)" if pod.phase == "Pending" else "(the log is empty)")
        for line in lines:
            print(line)
    return 0 if ok else tool.EXIT_FAILED


GONE = "the pod is gone"


def log_lines(text: str) -> list[str]:
    """The log's lines as the pod wrote them. A line ends at \\n only, as Kubernetes
    counts lines for --tail; str.splitlines() would also end one at \\r (a pod's
    \\r\\n, a progress bar redrawn in place), \\x0c, \\u2028 and the like."""
    return text.removesuffix("\n").split("\n") if text else []


def read_one(api: KubeApi, pod: Pod, args: argparse.Namespace) -> tuple[list[str], str | None]:
    """(lines, None), or ([], why this pod's log could not be read).

    Only a failure that every pod would share (no access, no API) ends the tool.
    """
    try:
        return log_lines(api.read_log(pod.name, tail_lines=args.tail,
                                      since_seconds=args.since)), None
    except KubeError as exc:
        if exc.fatal:
            raise
        if exc.status == 404:
            return [], GONE  # it went away since it was listed: normal churn
        return [], str(exc)


if __name__ == "__main__":
    sys.exit(main())
