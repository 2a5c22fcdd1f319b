#!/usr/bin/env python3
"""kill: delete the ReplicationControllers of Ochopod clusters, and their pods."""

from __future__ import annotations

import argparse
import sys

from ocho.kube import tool
from ocho.kube.api import KubeApi, connect  # imports the client lazily
from ocho.kube.clusters import Pod, select_controllers, select_orphans
from ocho.kube.config import ToolEnvironment
from ocho.kube.output import emit_json

PROG = "kill"
DESCRIPTION = """\
Delete every ReplicationController of the matching clusters, and so their pods.

Deleting a core/v1 ReplicationController without a propagation policy would
leave its pods running; kill always passes one: Background (the default: the
controller goes at once, Kubernetes removes its pods right after) or, with
--foreground, Foreground (the controller stays, marked for deletion, until its
pods are gone). Every pattern must match a cluster, or nothing is deleted.

Pods whose controller is gone (it was deleted with the Orphan policy) are
never removed by Kubernetes; with --orphans, kill deletes those of the
matching clusters too. Without it, kill says how many it left.
"""
EPILOG = """\
examples:
  kill 'zoo*'           every zookeeper-like cluster, in any namespace
  kill dev.kafka -j     {"ok": true, "clusters": [...], "controllers": 1, "pods": 3}
  kill 'zoo*' --orphans also the zookeeper pods no controller owns any more
"""


def build_parser() -> argparse.ArgumentParser:
    parser = tool.make_parser(PROG, DESCRIPTION, EPILOG)
    tool.add_cluster_patterns(parser, required=True)
    parser.add_argument("--foreground", action="store_true",
                        help="delete with propagationPolicy=Foreground instead of Background")
    parser.add_argument("--orphans", action="store_true",
                        help="also delete the clusters' pods that no controller owns any more")
    return parser


def main(argv: list[str] | None = None) -> int:
    return tool.main(argv, build_parser(), kill)


def kill(args: argparse.Namespace) -> int:
    policy = "Foreground" if args.foreground else "Background"
    api = connect(ToolEnvironment.from_environ(), args.k8s_namespace)
    orphans = select_orphans(api, args.clusters)
    # All resolved before any delete; a cluster left with orphans only still matches.
    controllers = select_controllers(api, args.clusters, orphans)
    killed = []
    for rc in controllers:
        api.delete_controller(rc.name, policy)
        killed.append(rc)
        if not args.json:
            print(f"killed {rc.qualified}: {rc.name} ({rc.current} pod(s))")
    removed = delete_orphans(api, orphans, args.json) if args.orphans else []
    clusters = sorted({rc.qualified for rc in killed} | {pod.qualified for pod in removed})
    pods = sum(rc.current for rc in killed)
    if args.json:
        emit_json({"ok": True, "k8s_namespace": api.namespace, "propagation_policy": policy,
                   "clusters": clusters, "controllers": len(killed), "pods": pods,
                   "deleted": [rc.as_json() for rc in killed],
                   "orphans": [pod.name for pod in removed],
                   "orphans_left": [] if args.orphans else [pod.name for pod in orphans]})
        return 0
    print(f"killed {len(clusters)} cluster(s): {len(killed)} controller(s), "
          f"{pods} pod(s) ({policy.lower()} deletion)"
          + (f", {len(removed)} orphaned pod(s)" if args.orphans else ""))
    if orphans and not args.orphans:
        print(f"left {len(orphans)} orphaned pod(s) that no controller owns; "
              "kill --orphans removes them")
    return 0


def delete_orphans(api: KubeApi, orphans: list[Pod], quiet: bool) -> list[Pod]:
    removed = []
    for pod in orphans:
        api.delete_pod(pod.name)
        removed.append(pod)
        if not quiet:
            print(f"killed {pod.qualified}: orphaned pod {pod.name}")
    return removed


if __name__ == "__main__":
    sys.exit(main())
