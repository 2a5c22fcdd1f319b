#!/usr/bin/env python3
"""deploy: one ReplicationController per container definition."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
from datetime import UTC, datetime
from typing import Any

from ocho.errors import OchoError
from ocho.kube import labels, tool
from ocho.kube.api import KubeApi, connect  # imports the client lazily
from ocho.kube.config import ToolEnvironment
from ocho.kube.definition import (
    Definition,
    DefinitionError,
    Overrides,
    expand_paths,
    load_definitions,
    load_overrides,
)
from ocho.kube.errors import KubeError
from ocho.kube.manifest import build_controller, size_problem
from ocho.kube.names import DNS1123_LABEL_RULE, is_dns1123_label
from ocho.kube.output import emit_json
from ocho.kube.rollout import wait_until_ready

PROG = "deploy"
DESCRIPTION = """\
Spawn one ReplicationController (and its pods) per container definition.

Every definition is checked first: if any is invalid, or would make a
controller over 1 MiB as JSON (etcd refuses objects over 1.5 MiB), nothing is
created and every problem is listed with its file and field. Then the API
server checks the whole batch (a server-side dry run, dryRun=All): if it
refuses any controller, nothing is created either. A batch deploys whole or
not at all. Ochopod's settings are added
to each container (ochopod_cluster, ochopod_namespace, ochopod_application,
the definition's `settings` as JSON in $pod, control port 8080).

A definition (YAML):
    cluster:  zookeeper                  # required: a DNS-1123 label
    image:    paugamo/k8s-ec2-zookeeper  # required
    ports:    [2181, 2888, 3888]
    settings: {tick: 2000}               # any data -> $pod as JSON
    pods:     3                          # default replica count
    env: {NAME: value}    resources: {requests: {cpu: 250m}, limits: {memory: 1Gi}}
    command: [...]        args: [...]    labels: {team: data}
"""
EPILOG = """\
overrides (-o): a YAML mapping merged deeply into every definition before it is
checked; a top-level key with a dot is a <namespace>.<cluster> pattern whose value
applies only to matching clusters, e.g. `dev.web-server: {pods: 2}`.

A job that runs again (same $OCHO_JOB_ID) finds the controllers it created by
their labels and creates no second one. With --wait, deploy watches the pods
and succeeds only once every controller has all its pods running and ready.

examples:
  deploy zookeeper.yml -p 3
  deploy -p 3                 # every *.yml / *.yaml uploaded with the job
  deploy '*.yml' -n dev -o dev-overrides.yml
  deploy --dry-run kafka.yml | kubernetes-validate --strict -
"""


@dataclasses.dataclass
class Outcome:
    source: str
    cluster: str
    state: str  # created | exists | not ready (--wait) | failed | skipped
    controller: str | None = None
    pods: int = 0
    ready: int | None = None  # with --wait: pods running and ready in time
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.state in ("created", "exists")

    @property
    def spawned(self) -> int:
        """Pods its controller runs (also when they were not ready in time)."""
        return self.pods if self.controller else 0


def pod_count(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number of pods, not {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = tool.make_parser(PROG, DESCRIPTION, EPILOG)
    parser.add_argument("definitions", nargs="*", metavar="DEFINITION",
                        help="container definition files; globs such as '*.yml' are "
                             "expanded; none: every *.yml and *.yaml file uploaded with the "
                             "job (in the current directory), as the original portal did")
    parser.add_argument("-p", "--pods", type=pod_count, metavar="PODS",
                        help="pods per cluster (default: the definition's `pods`, else 1)")
    parser.add_argument("-n", "--namespace", default="default", metavar="NAMESPACE",
                        help="Ochopod namespace of the clusters (default: default)")
    parser.add_argument("-o", "--overrides", metavar="OVERRIDES.yml",
                        help="YAML merged into every definition (see below)")
    parser.add_argument("--wait", type=int, default=0, metavar="SECONDS",
                        help="then wait up to SECONDS for every pod to be running and ready; "
                             "exit 1 if some are not (default: 0, do not wait)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the manifests as YAML and contact nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    return tool.main(argv, build_parser(), deploy)


def deploy(args: argparse.Namespace) -> int:
    env = ToolEnvironment.from_environ()
    if not is_dns1123_label(args.namespace):
        raise OchoError(f"namespace {args.namespace!r} {DNS1123_LABEL_RULE}")
    paths, problems = expand_paths(args.definitions or every_uploaded_definition(args.overrides))
    overrides = Overrides()
    if args.overrides:
        try:
            overrides = load_overrides(args.overrides)
        except DefinitionError as exc:
            problems += exc.problems
    definitions, more = load_definitions(paths, overrides, args.namespace)
    problems += more
    if problems:
        return report_invalid(problems, args)

    when = datetime.now(UTC)
    plans = [(definition, build_controller(
        definition, namespace=args.namespace, job_id=env.job_id, when=when,
        pods=args.pods if args.pods is not None else (
            definition.pods if definition.pods is not None else 1)))
        for definition in definitions]
    problems = [f"{definition.source}: {problem}" for definition, manifest in plans
                if (problem := size_problem(manifest))]
    if problems:
        return report_invalid(problems, args)
    if args.dry_run:
        return print_manifests([manifest for _, manifest in plans], args.json)

    api = connect(env, args.k8s_namespace)  # imports the kubernetes client: only now
    outcomes = deploy_batch(api, plans, args.namespace, env.job_id)
    if args.wait > 0:
        wait_for_pods(api, outcomes, args.wait, args.namespace)
    return report(outcomes, args, api.namespace)


def every_uploaded_definition(overrides: str | None) -> list[str]:
    """No DEFINITION: every *.yml/*.yaml here (the job's uploads), as the original
    deployed `*`; the overrides file is not a definition."""
    skip = os.path.basename(overrides) if overrides else None
    found = sorted(set(glob.glob("*.yml") + glob.glob("*.yaml")) - {skip})
    if not found:
        raise OchoError("no DEFINITION given, and no *.yml or *.yaml file was uploaded with "
                        "the job: upload one (ocho deploy zookeeper.yml) or name it")
    return found


def wait_for_pods(api: KubeApi, outcomes: list[Outcome], seconds: int, namespace: str) -> None:
    """Record how many pods of each deployed controller became ready in time."""
    wanted = {outcome.controller: outcome.pods for outcome in outcomes
              if outcome.ok and outcome.controller}
    ready = wait_until_ready(api, wanted, seconds)
    for outcome in outcomes:
        if outcome.ok and outcome.controller:
            outcome.ready = ready.get(outcome.controller, 0)
            if outcome.ready < outcome.pods:
                outcome.state = "not ready"
                outcome.error = (f"{namespace}.{outcome.cluster} ({outcome.controller}): only "
                                 f"{outcome.ready}/{outcome.pods} pod(s) running and ready "
                                 f"after {seconds}s")


Plan = tuple[Definition, dict[str, Any]]


def deploy_batch(api: KubeApi, plans: list[Plan], namespace: str,
                 job_id: str | None) -> list[Outcome]:
    """Create every planned controller, or none: the server checks them all first.

    Controllers this job already created (a redelivered job) are reported, not redone.
    """
    outcomes: dict[int, Outcome] = {}
    for index, (definition, _) in enumerate(plans):
        if (found := already_deployed(api, definition, namespace, job_id)) is not None:
            outcomes[index] = found
    todo = [index for index in range(len(plans)) if index not in outcomes]
    refused = check_on_server(api, [plans[index] for index in todo])
    for index, error in zip(todo, refused, strict=True):
        definition = plans[index][0]
        if error is not None:
            outcomes[index] = Outcome(definition.source, definition.cluster, "failed",
                                      error=error)
    if any(error is not None for error in refused):  # create nothing
        names = ", ".join(outcome.source for outcome in outcomes.values()
                          if outcome.state == "failed")
        for index in todo:
            definition = plans[index][0]
            outcomes.setdefault(index, Outcome(
                definition.source, definition.cluster, "skipped",
                error=f"not created: a batch deploys whole or not at all, and the API server "
                      f"refused {names}"))
    else:
        for index in todo:
            outcomes[index] = create(api, *plans[index])
    return [outcomes[index] for index in range(len(plans))]


def already_deployed(api: KubeApi, definition: Definition, namespace: str,
                     job_id: str | None) -> Outcome | None:
    """The controller this job created for the definition on an earlier attempt."""
    if not job_id:
        return None
    mine = {labels.NAMESPACE: namespace, labels.CLUSTER: definition.cluster,
            labels.JOB: job_id}
    existing = [rc for rc in api.list_controllers(labels.equality_selector(mine))
                if not rc["metadata"].get("deletionTimestamp")]
    if not existing:
        return None
    rc = existing[0]
    return Outcome(definition.source, definition.cluster, "exists",
                   controller=rc["metadata"]["name"], pods=rc["spec"].get("replicas", 1))


def check_on_server(api: KubeApi, plans: list[Plan]) -> list[str | None]:
    """A server-side dry run of each controller: None if the server would create it,
    else why not. After a failure every further call shares, the rest are not tried."""
    refused: list[str | None] = []
    fatal: KubeError | None = None
    for _, manifest in plans:
        if fatal is not None:
            refused.append(f"not checked: {fatal}")
            continue
        try:
            api.create_controller(manifest, dry_run=True)
            refused.append(None)
        except KubeError as exc:
            refused.append(str(exc))
            fatal = exc if exc.fatal else None
    return refused


def create(api: KubeApi, definition: Definition, manifest: dict[str, Any]) -> Outcome:
    try:
        created = api.create_controller(manifest)
    except KubeError as exc:  # after a dry run that passed: a race, e.g. a quota just filled
        return Outcome(definition.source, definition.cluster, "failed", error=str(exc))
    return Outcome(definition.source, definition.cluster, "created",
                   controller=created["metadata"]["name"],
                   pods=created["spec"].get("replicas", 1))


def print_manifests(manifests: list[dict[str, Any]], json_output: bool) -> int:
    if json_output:
        emit_json({"ok": True, "dry_run": True, "manifests": manifests})
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False,
                                            default_flow_style=False, width=100))
    return 0


def report_invalid(problems: list[str], args: argparse.Namespace) -> int:
    summary = f"0% success / spawned 0 pod(s): {len(problems)} problem(s), nothing deployed"
    if args.json:
        emit_json({"ok": False, "error": summary, "problems": problems, "pods": 0,
                   "definitions": []})
    else:
        for problem in problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        print(summary)
    return tool.EXIT_FAILED


def report(outcomes: list[Outcome], args: argparse.Namespace, k8s_namespace: str) -> int:
    succeeded = sum(1 for outcome in outcomes if outcome.ok)
    percent = 100 * succeeded // len(outcomes) if outcomes else 0
    pods = sum(outcome.spawned for outcome in outcomes)
    ok = succeeded == len(outcomes)
    if args.json:
        emit_json({"ok": ok, "success": percent, "pods": pods, "k8s_namespace": k8s_namespace,
                   "definitions": [dataclasses.asdict(outcome) for outcome in outcomes]})
        return 0 if ok else tool.EXIT_FAILED
    for outcome in outcomes:
        qualified = f"{args.namespace}.{outcome.cluster}"
        ready = f", {outcome.ready} ready" if outcome.ready is not None else ""
        if outcome.state == "created":
            print(f"{outcome.source}: deployed {qualified} as {outcome.controller} "
                  f"({outcome.pods} pod(s){ready})")
        elif outcome.state == "exists":
            print(f"{outcome.source}: {qualified} was already deployed by this job as "
                  f"{outcome.controller} ({outcome.pods} pod(s){ready}); nothing new created")
        else:
            print(f"{PROG}: {outcome.source}: {outcome.error}", file=sys.stderr)
    print(f"{percent}% success / spawned {pods} pod(s)")
    return 0 if ok else tool.EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
