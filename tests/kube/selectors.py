"""Label selectors as the API server parses them (labelSelector=...).

    key=value  key==value  key!=value  key in (a,b)  key notin (a,b)  key  !key

Requirements are comma-separated and all must hold. `!=` and `notin` also
match objects that do not have the key, as in Kubernetes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)$")
_EQUALITY = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>==|!=|=)\s*(?P<value>{_VALUE})$")
_EXISTS = re.compile(rf"^(?P<neg>!?)\s*(?P<key>{_KEY})$")


class SelectorError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # in, notin, exists, !exists
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if self.operator == "in":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


def _split(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts]


def parse(text: str | None) -> list[Requirement]:
    if not text or not text.strip():
        return []
    requirements = []
    for part in _split(text):
        if match := _SET.match(part):
            values = frozenset(value.strip() for value in match["values"].split(",")
                               if value.strip())
            requirements.append(Requirement(match["key"], match["op"], values))
        elif match := _EQUALITY.match(part):
            operator = "notin" if match["op"] == "!=" else "in"
            requirements.append(Requirement(match["key"], operator, frozenset([match["value"]])))
        elif match := _EXISTS.match(part):
            requirements.append(Requirement(match["key"], "!exists" if match["neg"] else "exists"))
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")
    return requirements


def matches(requirements: list[Requirement], labels: Mapping[str, str] | None) -> bool:
    return all(requirement.matches(labels or {}) for requirement in requirements)


def from_map(selector: Mapping[str, str]) -> list[Requirement]:
    """A ReplicationController's selector (a plain map) as requirements."""
    return [Requirement(key, "in", frozenset([value])) for key, value in selector.items()]
