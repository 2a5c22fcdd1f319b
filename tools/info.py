#!/usr/bin/env python3
"""info: everything about the pods of Ochopod clusters, as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ocho.kube import labels, tool
from ocho.kube.api import connect  # imports the client lazily
from ocho.kube.clusters import Pod, select_pods
from ocho.kube.config import ToolEnvironment
from ocho.kube.output import emit_json

PROG = "info"
DESCRIPTION = """\
Describe each pod of the matching clusters as JSON: cluster, controller, job,
node, IP, phase, readiness, restarts, image, ports, Ochopod settings ($pod),
labels and per-container state. Pretty-printed for people; one line with -j.
"""
EPILOG = """\
examples:
  info 'zoo*'
  info -j dev.kafka   {"ok": true, "pods": [{"cluster": "dev.kafka", ...}]}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = tool.make_parser(PROG, DESCRIPTION, EPILOG)
    tool.add_cluster_patterns(parser, required=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    return tool.main(argv, build_parser(), info)


def describe(pod: Pod) -> dict[str, Any]:
    raw = pod.raw
    meta = raw.get("metadata") or {}
    spec = raw.get("spec") or {}
    status = raw.get("status") or {}
    containers = spec.get("containers") or []
    first = containers[0] if containers else {}
    env = {item.get("name"): item.get("value") for item in first.get("env") or []}
    try:
        settings = json.loads(env.get("pod") or "{}")
    except ValueError:
        settings = env.get("pod")
    statuses = {item.get("name"): item for item in status.get("containerStatuses") or []}
    return {
        "cluster": pod.qualified,
        "namespace": pod.namespace,
        "name": pod.cluster,
        "pod": pod.name,
        "controller": pod.application,
        "job": (meta.get("labels") or {}).get(labels.JOB),
        "node": pod.node,
        "ip": pod.ip,
        "phase": "Terminating" if pod.deleting else pod.phase,
        "ready": pod.containers > 0 and pod.ready == pod.containers,
        "restarts": pod.restarts,
        "started": pod.started.isoformat() if pod.started else None,
        "image": first.get("image"),
        "ports": [port.get("containerPort") for port in first.get("ports") or []],
        "settings": settings,
        "labels": meta.get("labels") or {},
        "containers": [{
            "name": container.get("name"),
            "image": container.get("image"),
            "ready": bool(statuses.get(container.get("name"), {}).get("ready")),
            "restarts": statuses.get(container.get("name"), {}).get("restartCount", 0),
            "state": statuses.get(container.get("name"), {}).get("state") or {},
        } for container in containers],
    }


def info(args: argparse.Namespace) -> int:
    api = connect(ToolEnvironment.from_environ(), args.k8s_namespace)
    document = {"ok": True, "k8s_namespace": api.namespace,
                "pods": [describe(pod) for pod in select_pods(api, args.clusters)]}
    if args.json:
        emit_json(document)
    else:
        print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
