"""Cluster patterns: how a user names the clusters a tool acts on.

A cluster is addressed as `<namespace>.<cluster>`; either part may be a glob
(`*`, `?`, `[...]`). A pattern without a dot matches the cluster part in every
namespace, so `zoo*` matches `default.zookeeper` and `dev.zoo`, while `dev.*`
matches every cluster of namespace `dev`. Namespace and cluster names are
DNS-1123 labels, which have no dots, so the split is never ambiguous.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from ocho.errors import OchoError
from ocho.kube import labels

PATTERN_HELP = (
    "clusters are named <namespace>.<cluster>, each part a glob (* ? [...]); "
    "a pattern without a dot matches the cluster part in any namespace: "
    "'zoo*' matches default.zookeeper and dev.zoo, '*.kafka' every kafka, 'dev.*' all of dev"
)
GLOB_CHARS = frozenset("*?[")


@dataclasses.dataclass(frozen=True)
class ClusterPattern:
    text: str
    namespace: str
    cluster: str

    @classmethod
    def parse(cls, text: str) -> ClusterPattern:
        if text.count(".") > 1:
            raise OchoError(f"cluster pattern {text!r} has more than one '.'; {PATTERN_HELP}")
        namespace, dot, cluster = text.rpartition(".")
        if not dot:
            namespace = "*"
        if not namespace or not cluster:
            raise OchoError(f"cluster pattern {text!r} has an empty part; {PATTERN_HELP}")
        return cls(text=text, namespace=namespace, cluster=cluster)

    def matches(self, namespace: str, cluster: str) -> bool:
        return (fnmatch.fnmatchcase(namespace, self.namespace)
                and fnmatch.fnmatchcase(cluster, self.cluster))

    def label_selector(self) -> str:
        """Narrow the server-side listing with the parts that are not globs."""
        terms = [labels.ALL_CLUSTERS]
        if not GLOB_CHARS & set(self.namespace):
            terms.append(f"{labels.NAMESPACE}={self.namespace}")
        if not GLOB_CHARS & set(self.cluster):
            terms = [f"{labels.CLUSTER}={self.cluster}", *terms[1:]]
        return ",".join(terms)


def parse_patterns(texts: list[str]) -> list[ClusterPattern]:
    return [ClusterPattern.parse(text) for text in texts]


def common_selector(patterns: list[ClusterPattern]) -> str:
    """One labelSelector for a listing that covers every pattern."""
    selectors = {pattern.label_selector() for pattern in patterns}
    return selectors.pop() if len(selectors) == 1 else labels.ALL_CLUSTERS
