#!/usr/bin/env python3
"""grep: the pods of Ochopod clusters, one aligned line each."""

from __future__ import annotations

import argparse
import sys

from ocho.kube import tool
from ocho.kube.api import connect  # imports the client lazily
from ocho.kube.clusters import select_pods
from ocho.kube.config import ToolEnvironment
from ocho.kube.output import age, emit_json, table

PROG = "grep"
DESCRIPTION = """\
Show the pods of the matching clusters: cluster, pod, IP, phase, ready
containers, restarts and age. A pod whose controller is gone (deleted with the
Orphan policy) is marked `(orphan)`; `kill --orphans` removes such pods.
Exits 1 if a pattern matches no pod.
"""
EPILOG = """\
examples:
  grep               every pod of every cluster
  grep 'zoo*'        the pods of zookeeper-like clusters in any namespace
  grep -j dev.kafka  JSON: {"ok": true, "pods": [...]}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = tool.make_parser(PROG, DESCRIPTION, EPILOG)
    tool.add_cluster_patterns(parser, required=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    return tool.main(argv, build_parser(), grep)


def grep(args: argparse.Namespace) -> int:
    api = connect(ToolEnvironment.from_environ(), args.k8s_namespace)
    pods = select_pods(api, args.clusters)
    if args.json:
        emit_json({"ok": True, "k8s_namespace": api.namespace, "pods": [
            {"cluster": pod.qualified, "pod": pod.name, "ip": pod.ip, "phase": pod.phase,
             "ready": pod.ready, "containers": pod.containers, "restarts": pod.restarts,
             "started": pod.started.isoformat() if pod.started else None,
             "application": pod.application, "deleting": pod.deleting,
             "orphaned": pod.orphaned}
            for pod in pods]})
        return 0
    if not pods:
        print(f"no pods in Kubernetes namespace {api.namespace!r}")
        return 0
    rows = [(pod.qualified, pod.name + (" (orphan)" if pod.orphaned else ""), pod.ip or "-",
             "Terminating" if pod.deleting else pod.phase, f"{pod.ready}/{pod.containers}",
             pod.restarts, age(pod.started)) for pod in pods]
    print(table(("CLUSTER", "POD", "IP", "PHASE", "READY", "RESTARTS", "AGE"), rows))
    orphans = sum(1 for pod in pods if pod.orphaned)
    print(f"{len(pods)} pod(s)" + (f", {orphans} orphaned (`kill --orphans` removes them)"
                                   if orphans else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
