"""`scale -f`: what a factor means, and how a cluster's pods are spread over its
controllers (a cluster has one ReplicationController per deploy).

  @5    exactly 5 pods
  x0.5  half as many (x2: twice as many), rounded to the nearest whole pod
  +1    one more;  -2  two fewer (never below 0)
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

from ocho.errors import OchoError

FACTOR_HELP = ("@N sets N pods; xF multiplies by F (x0.5 halves, rounded to the nearest pod); "
               "+N / -N adds or removes N pods")
_FACTOR = re.compile(r"^(?:@(?P<target>\d+)|[x*](?P<factor>\d+(?:\.\d+)?|\.\d+)|"
                     r"(?P<step>[+-]\d+))$")
MAX_PODS = 10_000  # a typo guard: nobody means x1000 on a 50-pod cluster


@dataclasses.dataclass(frozen=True)
class ScaleFactor:
    text: str
    target: int | None = None
    factor: float | None = None
    step: int | None = None

    @classmethod
    def parse(cls, text: str) -> ScaleFactor:
        match = _FACTOR.match(text.strip())
        if match is None:
            raise OchoError(f"scale factor {text!r} is not understood: {FACTOR_HELP}")
        if match["target"] is not None:
            return cls(text, target=int(match["target"]))
        if match["factor"] is not None:
            return cls(text, factor=float(match["factor"]))
        return cls(text, step=int(match["step"]))

    def apply(self, current: int) -> int:
        if self.target is not None:
            wanted = self.target
        elif self.factor is not None:
            wanted = math.floor(current * self.factor + 0.5)
        else:
            wanted = current + (self.step or 0)
        wanted = max(0, wanted)
        if wanted > MAX_PODS:
            raise OchoError(f"scaling to {wanted} pods is above the limit of {MAX_PODS}")
        return wanted


def spread(current: Sequence[int], wanted: int) -> list[int]:
    """New replica counts for a cluster's controllers, oldest first.

    Growth goes to the newest controller (the latest deploy); shrinking takes pods
    from the oldest first, so older deploys are phased out before newer ones.
    """
    counts = list(current)
    if not counts:
        return counts
    delta = wanted - sum(counts)
    if delta >= 0:
        counts[-1] += delta
        return counts
    for index, count in enumerate(counts):
        taken = min(count, -delta)
        counts[index] -= taken
        delta += taken
        if delta == 0:
            break
    return counts
