"""What every process that holds a broker connection shares (the gateway's publisher
and recorder, the worker, ocho.client): how to connect, which errors mean the
connection is gone, and which broker node to try next.

`OCHO_AMQP_URL` holds one or more URLs separated by `;` (kombu's convention), one per
node of a RabbitMQ cluster. Each process starts at a random node of that list, so
that clients spread over the cluster; when its connection is lost or refused it
tries the next node at once, and only when a whole round of nodes has failed does
it wait, with a jittered back-off (0.5 s, 1 s, 2 s … up to 15 s, each between half
and all of that), so that many clients do not hammer a recovering cluster in step.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.parse

import pika
import pika.exceptions

from ocho.settings import Settings

# What means "this connection or channel is unusable now": reconnect. (A publisher
# catches UnroutableError and NackError, which are AMQPErrors too, before these.)
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)
# A connection must have lasted this long to count as a success that resets the back-off.
STEADY_S = 2.0


def connection_parameters(settings: Settings, name: str,
                          url: str | None = None) -> pika.URLParameters:
    """Parameters for a connection shown in RabbitMQ as `name`, to `url` (by default
    the first node of OCHO_AMQP_URL)."""
    url = url or settings.amqp_urls[0]
    parameters = pika.URLParameters(url)
    if "heartbeat" not in url:
        parameters.heartbeat = settings.heartbeat
    # A broker under a memory or disk alarm blocks publishers; give up instead of
    # hanging the thread forever, so the gateway can say the broker is unavailable.
    parameters.blocked_connection_timeout = 30
    parameters.connection_attempts = 1
    parameters.socket_timeout = 5
    parameters.client_properties = {"connection_name": name}
    return parameters


def node_name(url: str) -> str:
    """host:port of a broker URL, for logs: never its user or password."""
    try:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5672}"
    except ValueError:
        return "(unreadable URL)"


def describe(exc: BaseException) -> str:
    """A one-line reason for logs and for /readyz."""
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:300]


class Backoff:
    """Waits 0.5 s, 1 s, 2 s … up to `most` between reconnects; a stop ends the wait."""

    def __init__(self, first: float = 0.5, most: float = 15.0) -> None:
        self._first = first
        self._most = most
        self.delay = first

    def wait(self, stopping: threading.Event) -> None:
        stopping.wait(self.take())

    def take(self) -> float:
        """The delay to wait now; the next one is twice as long (up to `most`)."""
        delay = self.delay
        self.delay = min(self.delay * 2, self._most)
        return delay

    def reset(self) -> None:
        self.delay = self._first


class Nodes:
    """The broker nodes of OCHO_AMQP_URL in a round from a random start: `url` is the
    one to connect to now; after each connection ends, `next` moves on and says how
    long to wait first — nothing unless a whole round failed to connect."""

    def __init__(self, urls: tuple[str, ...] | list[str], first: float = 0.5,
                 most: float = 15.0, rng: random.Random | None = None) -> None:
        if not urls:
            raise ValueError("no broker URL")
        self._urls = list(urls)
        self._rng = rng or random.Random()
        self._index = self._rng.randrange(len(self._urls))
        self._failures = 0
        self._backoff = Backoff(first, most)
        self._since = time.monotonic()

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(self._urls)

    @property
    def url(self) -> str:
        return self._urls[self._index]

    @property
    def name(self) -> str:
        return node_name(self.url)

    def next(self, connected: bool) -> float:
        """Move to the next node; `connected` says whether the connection that just ended
        had been up. Returns the seconds to wait before connecting again.

        A connection that ended within STEADY_S of the last move counts as failed,
        so that one a broker opens and at once closes again cannot make a hot loop."""
        self._index = (self._index + 1) % len(self._urls)
        now = time.monotonic()
        steady, self._since = now - self._since >= STEADY_S, now
        if connected and steady:
            self._failures = 0
            self._backoff.reset()
            return 0.0
        self._failures += 1
        if self._failures % len(self._urls):
            return 0.0
        delay = self._backoff.take()
        return self._rng.uniform(delay / 2, delay)
