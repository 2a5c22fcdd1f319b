"""The shapes Kubernetes accepts for names, label keys and label values.

Checked on our side so that a bad definition fails before anything is created,
with a message that says what is allowed instead of a 422 from the server.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
DNS1123_SUBDOMAIN_MAX = 253
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
LABEL_NAME_MAX = 63

# A pod of a ReplicationController is named "<rc>-<5 random chars>": keeping the
# RC name at 57 characters keeps pod names valid DNS-1123 labels (63).
CONTROLLER_NAME_MAX = 57
TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"

DNS1123_LABEL_RULE = (
    "must be a DNS-1123 label: lower-case letters, digits and '-', starting and ending "
    "with a letter or digit, at most 63 characters (e.g. 'zookeeper')"
)


def is_dns1123_label(value: str) -> bool:
    return len(value) <= DNS1123_LABEL_MAX and bool(DNS1123_LABEL.match(value))


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= DNS1123_SUBDOMAIN_MAX and bool(DNS1123_SUBDOMAIN.match(value))


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a valid label key, or None if it is."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return "the prefix before '/' is empty"
    if prefix and not is_dns1123_subdomain(prefix):
        return f"prefix {prefix!r} must be a DNS subdomain such as 'example.com'"
    if not name or len(name) > LABEL_NAME_MAX or not LABEL_NAME.match(name):
        return ("the name part must be 1-63 characters: letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit")
    return None


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value, or None if it is (empty is valid)."""
    if value == "":
        return None
    if len(value) > LABEL_NAME_MAX or not LABEL_NAME.match(value):
        return ("must be at most 63 characters: letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit")
    return None


def controller_name(namespace: str, cluster: str, when: datetime, discriminator: str) -> str:
    """`<namespace>-<cluster>-<UTC timestamp>-<discriminator>`: a DNS-1123 label, <= 57 chars.

    The timestamp has one-second resolution, so two jobs deploying the same
    cluster in the same second would collide (409): the discriminator (a few hex
    digits from the job id) keeps their names apart. Long namespace/cluster pairs
    are cut and given a short hash of the full pair, so that two long clusters
    that share a prefix still get different names.
    """
    suffix = f"{when.strftime(TIMESTAMP_FORMAT)}-{discriminator}"
    room = CONTROLLER_NAME_MAX - len(suffix) - 1
    prefix = f"{namespace}-{cluster}"
    if len(prefix) > room:
        digest = hashlib.sha256(f"{namespace}.{cluster}".encode()).hexdigest()[:6]
        prefix = f"{prefix[:room - len(digest) - 1].rstrip('-')}-{digest}"
    return f"{prefix}-{suffix}"


def discriminator(job_id: str | None) -> str:
    """Four hex digits: from the job id when there is one (stable across reruns)."""
    seed = job_id if job_id else os.urandom(8).hex()
    return hashlib.sha256(seed.encode()).hexdigest()[:4]
