"""How many times each job was started, as the portal records it: a worker's memory
of the `started` events it read from the cancel log (`ocho.control.log`, which is
also bound to `job.started` on ocho.events).

The rule (docs/amqp.md, "Attempts"): a delivery of job J is attempt 1 + the starts
of J read so far, and is run only while those starts are fewer than
OCHO_DELIVERY_LIMIT. Redeliveries that never started the job — a lost node or
channel, a consumer cancelled before the job began — count for nothing.

Invariants: the count of a job only grows (the highest attempt seen wins, so a
`started` event read twice counts once), and at most MEMORY jobs are remembered
(the least recently started are forgotten first).
"""

from __future__ import annotations

import collections

from ocho.contract import Started

MEMORY = 100_000
# A started event's attempt above this is not believed (it would dead-letter the job).
MOST_ATTEMPTS = 10_000


class Starts:
    def __init__(self, memory: int = MEMORY) -> None:
        self._memory = memory
        self._counts: collections.OrderedDict[str, int] = collections.OrderedDict()

    def record(self, event: Started) -> bool:
        """Take note of a `started` event (as ocho.contract decoded it: its id a job id,
        its attempt at least 1); False if its attempt is beyond belief."""
        if event.attempt > MOST_ATTEMPTS:
            return False
        key, attempt = event.id, event.attempt
        self._counts[key] = max(attempt, self._counts.get(key, 0))
        self._counts.move_to_end(key)
        while len(self._counts) > self._memory:
            self._counts.popitem(last=False)
        return True

    def count(self, job_id: object) -> int:
        """The starts of the job read so far (0 for one never seen)."""
        return self._counts.get(job_id, 0) if isinstance(job_id, str) else 0
