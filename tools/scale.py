#!/usr/bin/env python3
"""scale: change how many pods Ochopod clusters run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ocho.errors import OchoError
from ocho.kube import tool
from ocho.kube.api import KubeApi, connect  # imports the client lazily
from ocho.kube.clusters import Controller, select_controllers
from ocho.kube.config import ToolEnvironment
from ocho.kube.errors import KubeError
from ocho.kube.output import emit_json
from ocho.kube.scaling import ScaleFactor, spread

PROG = "scale"
DESCRIPTION = """\
Set how many pods each matching cluster runs, through the scale subresource of
its ReplicationControllers. -f FACTOR is one of:
  @N   exactly N pods
  xF   F times as many, rounded to the nearest pod (x0.5 halves, x2 doubles)
  +N   N more;   -N   N fewer (never below 0)

The count is the cluster's total over its controllers (one per deploy): growth
goes to the newest controller, shrinking takes pods from the oldest first.
A concurrent change (409 conflict) is read again and the factor re-applied.
"""
EPILOG = """\
examples:
  scale 'zoo*' -f @5      five zookeeper pods
  scale dev.kafka -f x2   twice as many
  scale web-server -f -1  one fewer
"""
CONFLICT_RETRIES = 3


def factor(text: str) -> ScaleFactor:
    try:
        return ScaleFactor.parse(text)
    except OchoError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = tool.make_parser(PROG, DESCRIPTION, EPILOG)
    tool.add_cluster_patterns(parser, required=True)
    parser.add_argument("-f", "--factor", type=factor, required=True, metavar="FACTOR",
                        help="@N, xF or +N/-N (see above)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return tool.main(argv, build_parser(), scale)


def scale_cluster(api: KubeApi, rcs: list[Controller], how: ScaleFactor) -> dict[str, Any]:
    """Scale one cluster; on a 409 read it again and redo the arithmetic."""
    qualified = rcs[0].qualified
    for attempt in range(CONFLICT_RETRIES + 1):
        before = sum(rc.replicas for rc in rcs)
        after = how.apply(before)
        counts = spread([rc.replicas for rc in rcs], after)
        try:
            for rc, count in zip(rcs, counts, strict=True):
                if count != rc.replicas:
                    api.replace_scale(rc.name, count, rc.resource_version)
        except KubeError as exc:
            if exc.status != 409 or attempt == CONFLICT_RETRIES:
                raise
            rcs = [rc for rc in select_controllers(api, [qualified]) if not rc.deleting]
            continue
        return {"cluster": qualified, "from": before, "to": after,
                "controllers": [{"controller": rc.name, "from": rc.replicas, "to": count}
                                for rc, count in zip(rcs, counts, strict=True)]}
    raise AssertionError("unreachable")  # pragma: no cover


def scale(args: argparse.Namespace) -> int:
    api = connect(ToolEnvironment.from_environ(), args.k8s_namespace)
    clusters: dict[str, list[Controller]] = {}
    for rc in select_controllers(api, args.clusters):
        if not rc.deleting:
            clusters.setdefault(rc.qualified, []).append(rc)
    if not clusters:
        raise OchoError("the matching clusters are all being deleted; nothing to scale")
    results = []
    for rcs in clusters.values():
        result = scale_cluster(api, rcs, args.factor)
        results.append(result)
        if not args.json:
            print(f"{result['cluster']}: {result['from']} -> {result['to']} pod(s)")
    if args.json:
        emit_json({"ok": True, "k8s_namespace": api.namespace, "factor": args.factor.text,
                   "clusters": results})
    else:
        print(f"scaled {len(results)} cluster(s) to {sum(r['to'] for r in results)} pod(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
