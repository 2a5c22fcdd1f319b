#!/usr/bin/env python3
"""ls: the Ochopod clusters and their ReplicationControllers."""

from __future__ import annotations

import argparse
import sys

from ocho.kube import tool
from ocho.kube.api import connect  # imports the client lazily
from ocho.kube.clusters import select_controllers
from ocho.kube.config import ToolEnvironment
from ocho.kube.output import age, emit_json, table

PROG = "ls"
DESCRIPTION = """\
List the Ochopod clusters: one line per ReplicationController (one per deploy),
with its desired and ready pods, the job that deployed it and its age.
"""
EPILOG = """\
examples:
  ls                 every cluster
  ls 'zoo*' dev.*    zookeeper-like clusters in any namespace, and all of dev
  ls -j              JSON: {"ok": true, "clusters": [...]}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = tool.make_parser(PROG, DESCRIPTION, EPILOG)
    tool.add_cluster_patterns(parser, required=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    return tool.main(argv, build_parser(), list_clusters)


def list_clusters(args: argparse.Namespace) -> int:
    api = connect(ToolEnvironment.from_environ(), args.k8s_namespace)
    controllers = select_controllers(api, args.clusters)
    clusters: dict[str, list] = {}
    for rc in controllers:
        clusters.setdefault(rc.qualified, []).append(rc)
    if args.json:
        emit_json({"ok": True, "k8s_namespace": api.namespace, "clusters": [
            {"cluster": name, "pods": sum(rc.replicas for rc in rcs),
             "ready": sum(rc.ready for rc in rcs),
             "controllers": [rc.as_json() for rc in rcs]}
            for name, rcs in clusters.items()]})
        return 0
    if not controllers:
        print(f"no clusters in Kubernetes namespace {api.namespace!r}")
        return 0
    rows = [(rc.qualified, rc.name, rc.replicas, f"{rc.ready}/{rc.replicas}",
             rc.job or "-", "deleting" if rc.deleting else age(rc.created))
            for rc in controllers]
    print(table(("CLUSTER", "CONTROLLER", "PODS", "READY", "JOB", "AGE"), rows))
    print(f"{len(clusters)} cluster(s), {len(controllers)} controller(s), "
          f"{sum(rc.replicas for rc in controllers)} pod(s) wanted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
