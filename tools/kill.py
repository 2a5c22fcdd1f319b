#!/usr/bin/env python3
"""kill: delete the ReplicationControllers of Ochopod clusters, and their pods."""

from __future__ import annotations

import argparse
import sys

from ocho.kube import tool
from ocho.kube.api import connect  # imports the client lazily
from ocho.kube.clusters import select_controllers
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
"""
EPILOG = """\
examples:
  kill 'zoo*'           every zookeeper-like cluster, in any namespace
  kill dev.kafka -j     {"ok": true, "clusters": [...], "controllers": 1, "pods": 3}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = tool.make_parser(PROG, DESCRIPTION, EPILOG)
    tool.add_cluster_patterns(parser, required=True)
    parser.add_argument("--foreground", action="store_true",
                        help="delete with propagationPolicy=Foreground instead of Background")
    return parser


def main(argv: list[str] | None = None) -> int:
    return tool.main(argv, build_parser(), kill)


def kill(args: argparse.Namespace) -> int:
    policy = "Foreground" if args.foreground else "Background"
    api = connect(ToolEnvironment.from_environ(), args.k8s_namespace)
    controllers = select_controllers(api, args.clusters)  # all resolved before any delete
    killed = []
    for rc in controllers:
        api.delete_controller(rc.name, policy)
        killed.append(rc)
        if not args.json:
            print(f"killed {rc.qualified}: {rc.name} ({rc.current} pod(s))")
    clusters = sorted({rc.qualified for rc in killed})
    pods = sum(rc.current for rc in killed)
    if args.json:
        emit_json({"ok": True, "k8s_namespace": api.namespace, "propagation_policy": policy,
                   "clusters": clusters, "controllers": len(killed), "pods": pods,
                   "deleted": [rc.as_json() for rc in killed]})
    else:
        print(f"killed {len(clusters)} cluster(s): {len(killed)} controller(s), "
              f"{pods} pod(s) ({policy.lower()} deletion)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
