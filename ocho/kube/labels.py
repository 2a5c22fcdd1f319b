"""The labels that tie Kubernetes objects to Ochopod clusters and portal jobs.

Tools find their objects by these labels, never by parsing names. The same keys
are on a ReplicationController, in its selector and on its pods.
"""

from __future__ import annotations

PREFIX = "ocho.io/"
NAMESPACE = PREFIX + "namespace"      # the Ochopod namespace (`deploy -n`)
CLUSTER = PREFIX + "cluster"          # the definition's `cluster`
APPLICATION = PREFIX + "application"  # the ReplicationController's name
JOB = PREFIX + "job"                  # the portal job (OCHO_JOB_ID) that deployed it

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "ocho-portal"

# Every object the portal deploys has a cluster label: this selects them all.
ALL_CLUSTERS = CLUSTER


def equality_selector(labels: dict[str, str]) -> str:
    """`a=1,b=2`: a labelSelector that matches objects carrying all of `labels`."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))

# Annotation: the definition file a controller was deployed from.
DEFINITION_ANNOTATION = PREFIX + "definition"
# Annotation: when it was deployed, to the microsecond (creationTimestamp has
# whole seconds only, too coarse to order two deploys of one cluster).
DEPLOYED_AT_ANNOTATION = PREFIX + "deployed-at"
