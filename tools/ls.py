#!/usr/bin/env python3
"""ls: the Ochopod clusters and their ReplicationControllers."""

from __future__ import annotations

import argparse
import sys

from ocho.kube import tool
from ocho.kube.api import connect  # imports the client lazily
from ocho.kube.clusters import Pod, select_controllers, select_orphans
from ocho.kube.config import ToolEnvironment
from ocho.kube.output import age, emit_json, table

PROG = "ls"
DESCRIPTION = """\
List the Ochopod clusters: one line per ReplicationController (one per deploy),
with its desired and ready pods, the job that deployed it and its age.

Pods left without a controller (it was deleted with the Orphan policy) are
listed too, one line per cluster with `(orphans)` as the controller: nothing
will ever remove them but `kill --orphans`.
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
    orphans = select_orphans(api, args.clusters)
    controllers = select_controllers(api, args.clusters, orphans)
    clusters: dict[str, list] = {}
    for rc in controllers:
        clusters.setdefault(rc.qualified, []).append(rc)
    orphaned: dict[str, list[Pod]] = {}
    for pod in orphans:
        orphaned.setdefault(pod.qualified, []).append(pod)
    if args.json:
        emit_json({"ok": True, "k8s_namespace": api.namespace, "clusters": [
            {"cluster": name, "pods": sum(rc.replicas for rc in clusters.get(name, [])),
             "ready": sum(rc.ready for rc in clusters.get(name, [])),
             "controllers": [rc.as_json() for rc in clusters.get(name, [])],
             "orphans": [pod.name for pod in orphaned.get(name, [])]}
            for name in sorted(clusters.keys() | orphaned.keys())]})
        return 0
    if not controllers and not orphans:
        print(f"no clusters in Kubernetes namespace {api.namespace!r}")
        return 0
    rows = [(rc.qualified, rc.name, rc.replicas, f"{rc.ready}/{rc.replicas}",
             rc.job or "-", "deleting" if rc.deleting else age(rc.created))
            for rc in controllers]
    rows += [(name, "(orphans)", len(pods), f"{sum(pod.ready for pod in pods)}/{len(pods)}",
              pods[0].raw["metadata"].get("labels", {}).get("ocho.io/job", "-"),
              age(min((pod.started for pod in pods if pod.started), default=None)))
             for name, pods in orphaned.items()]
    print(table(("CLUSTER", "CONTROLLER", "PODS", "READY", "JOB", "AGE"), rows))
    print(f"{len(clusters.keys() | orphaned.keys())} cluster(s), {len(controllers)} "
          f"controller(s), {sum(rc.replicas for rc in controllers)} pod(s) wanted")
    if orphans:
        print(f"{len(orphans)} orphaned pod(s) that no controller owns; "
              "`kill --orphans CLUSTER` removes them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
