"""The AMQP topology, declared idempotently by every side that connects.

    ocho.jobs    topic exchange, routing key = tool name
      └─ ocho.jobs      quorum queue bound with '#', delivery limit, at most
                        max_queued requests (a publish past it is nacked),
                        dead-letters to ocho.dead
    ocho.dead    fanout exchange → ocho.dead queue (rejected and poison requests)
    ocho.events  topic exchange, routing keys job.started / job.output / job.finished
      └─ ocho.recorder  quorum queue bound with 'job.#': the gateway's recorder
                        reads it, so events wait there while no gateway runs
    ocho.control fanout exchange: cancel requests
      └─ ocho.control.log  stream queue: every worker reads it from the start,
                           so a worker that starts after a cancel still knows
                           not to run that job

Queue arguments cannot change once a queue exists: declaring a queue with
another delivery limit, length limit or replica count gets 406
PRECONDITION_FAILED (so does a queue made before it had a length limit, or
pre-declared by an operator with arguments of their own). Then the queue as
it is is used (a passive declare), and a warning names the argument that
differs: the README says how to change them.

The declarations are written once, as data (`declarations`: exchanges, queues with
their arguments, bindings, in the order they must be made), and walked by two
drivers that share how each one is sent and what a 406 does: `declare` on a
blocking channel (the gateway, `ensure`) and `AsyncDeclare` on a SelectConnection
channel (the worker, on the connection it consumes with). Either ends on the
channel to go on with, a new one if the broker closed the first over a queue's
arguments; anything else the broker refuses ends the walk (an exception, or
`on_failed`).

ocho.jobs' broker delivery limit is a safety net set well above the portal's
OCHO_DELIVERY_LIMIT (BROKER_DELIVERY_FACTOR times it): the portal's limit
counts the times a worker started the job (see ocho.worker.starts), and is
applied by the worker, so that redeliveries caused by lost nodes or channels
use up no attempt.

Replies go only to queues a client cannot name after someone else's:
server-named queues (`amq.gen-…`) and direct reply-to (`amq.rabbitmq.reply-to…`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

JOBS_EXCHANGE = "ocho.jobs"
JOBS_QUEUE = "ocho.jobs"
DEAD_EXCHANGE = "ocho.dead"
DEAD_QUEUE = "ocho.dead"
EVENTS_EXCHANGE = "ocho.events"
RECORDER_QUEUE = "ocho.recorder"
CONTROL_EXCHANGE = "ocho.control"
CONTROL_LOG = "ocho.control.log"
# Cancels are kept at least this long: longer than a request may sit queued.
CONTROL_LOG_MAX_AGE = "7D"
DEFAULT_DELIVERY_LIMIT = 5
DEFAULT_MAX_QUEUED = 10_000
# The broker dead-letters a request only after this many times OCHO_DELIVERY_LIMIT
# deliveries: what a request that is delivered over and over but never starts gets.
BROKER_DELIVERY_FACTOR = 10
# Server-named queues and direct reply-to (the broker adds a suffix to the pseudo-queue).
REPLY_ADDRESS = re.compile(r"^(amq\.gen-[A-Za-z0-9_-]{1,200}|amq\.rabbitmq\.reply-to"
                           r"(\.[A-Za-z0-9_.=+/-]{1,250})?)\Z")


def is_reply_address(name: object) -> bool:
    """A reply_to the worker may publish to: `amq.gen-*` or `amq.rabbitmq.reply-to*`."""
    return isinstance(name, str) and REPLY_ADDRESS.match(name) is not None


def event_routing_key(event_type: str) -> str:
    return f"job.{event_type}"


def broker_delivery_limit(delivery_limit: int) -> int:
    """ocho.jobs' x-delivery-limit for a portal whose OCHO_DELIVERY_LIMIT is given."""
    return BROKER_DELIVERY_FACTOR * max(delivery_limit, 1)


def ensure(connection: Any, delivery_limit: int,
           max_queued: int = DEFAULT_MAX_QUEUED) -> None:
    """For clients: declare the topology only where it does not exist yet.

    The portal's own processes declare it with their configured delivery
    limit; a client must not fail on a queue declared with another one.
    """
    channel = connection.channel()
    try:
        channel.queue_declare(JOBS_QUEUE, passive=True)
        channel.queue_declare(RECORDER_QUEUE, passive=True)
    except Exception as exc:  # pika closes the channel on 404 NOT_FOUND
        if getattr(exc, "reply_code", None) != 404:
            raise
        channel = connection.channel()
        channel = declare(channel, delivery_limit, max_queued)
    if channel.is_open:
        channel.close()


@dataclasses.dataclass(frozen=True)
class Exchange:
    name: str
    kind: str  # topic or fanout; always durable


@dataclasses.dataclass(frozen=True)
class Queue:
    name: str  # always durable
    arguments: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Binding:
    queue: str
    exchange: str
    routing_key: str


Declaration = Exchange | Queue | Binding


def declarations(delivery_limit: int, max_queued: int = DEFAULT_MAX_QUEUED,
                 group_size: int = 0, stream_size: int = 0) -> list[Declaration]:
    """Everything the portal declares, in order. `group_size` and `stream_size` (0: the
    broker's default) are the replicas of the quorum queues and of the cancel log when
    they are created."""
    quorum: dict[str, Any] = {"x-queue-type": "quorum"}
    if group_size:
        quorum["x-quorum-initial-group-size"] = group_size
    stream: dict[str, Any] = {"x-queue-type": "stream", "x-max-age": CONTROL_LOG_MAX_AGE}
    if stream_size:
        stream["x-initial-cluster-size"] = stream_size
    return [
        Exchange(JOBS_EXCHANGE, "topic"),
        Exchange(DEAD_EXCHANGE, "fanout"),
        Exchange(EVENTS_EXCHANGE, "topic"),
        Exchange(CONTROL_EXCHANGE, "fanout"),
        Queue(JOBS_QUEUE, {
            **quorum,
            "x-delivery-limit": broker_delivery_limit(delivery_limit),
            "x-dead-letter-exchange": DEAD_EXCHANGE,
            # A full queue refuses (nacks) a publish: the publisher learns it at once,
            # where drop-head would silently lose the oldest request.
            "x-max-length": max_queued,
            "x-overflow": "reject-publish",
        }),
        Binding(JOBS_QUEUE, JOBS_EXCHANGE, "#"),
        Queue(DEAD_QUEUE, quorum),
        Binding(DEAD_QUEUE, DEAD_EXCHANGE, ""),
        Queue(RECORDER_QUEUE, quorum),
        Binding(RECORDER_QUEUE, EVENTS_EXCHANGE, "job.#"),
        Queue(CONTROL_LOG, stream),
        Binding(CONTROL_LOG, CONTROL_EXCHANGE, ""),
        # Every start of a job, as the portal records it, also goes to the log every
        # worker reads: that is how a worker counts the starts of a job it is handed again.
        Binding(CONTROL_LOG, EVENTS_EXCHANGE, event_routing_key("started")),
    ]


def declare(channel: Any, delivery_limit: int, max_queued: int = DEFAULT_MAX_QUEUED,
            group_size: int = 0, stream_size: int = 0) -> Any:
    """Declare everything on a blocking channel; safe to call again on every (re)connect.
    Returns the channel to go on with: a new one if the broker closed this one over a
    queue's arguments."""
    for declaration in declarations(delivery_limit, max_queued, group_size, stream_size):
        if isinstance(declaration, Queue):
            channel = _declare_queue(channel, declaration)
        else:
            _send(channel, declaration)
    return channel


def _declare_queue(channel: Any, queue: Queue) -> Any:
    """Declare a durable queue; if it exists with other arguments, use it as it is."""
    try:
        _send(channel, queue)
        return channel
    except Exception as exc:  # pika closes the channel on 406 PRECONDITION_FAILED
        if not _differs(exc):
            raise
        _warn_differs(queue, exc)
    channel = channel.connection.channel()
    channel.queue_declare(queue.name, passive=True)
    return channel


class AsyncDeclare:
    """Declare everything on a channel of a pika SelectConnection, one reply at a time,
    then call `on_done` with the channel to go on with (a new one if the broker closed
    this one over a queue's arguments). If the channel closes for any other reason,
    `on_failed(channel, reason)` is called instead and the walk ends."""

    def __init__(self, channel: Any, steps: Iterable[Declaration],
                 on_done: Callable[[Any], None],
                 on_failed: Callable[[Any, BaseException], None]) -> None:
        self._channel = channel
        self._steps = collections.deque(steps)
        self._step: Declaration | None = None
        self._on_done = on_done
        self._on_failed = on_failed
        self._over = False

    def start(self) -> None:
        self._channel.add_on_close_callback(self._on_closed)
        self._next()

    def _next(self, _frame: Any = None) -> None:
        if not self._steps:
            self._over = True
            self._on_done(self._channel)
            return
        self._step = self._steps.popleft()
        _send(self._channel, self._step, callback=self._next)

    def _on_closed(self, channel: Any, reason: BaseException) -> None:
        if self._over or channel is not self._channel:
            return  # done, or the channel a 406 closed: its successor goes on
        if isinstance(self._step, Queue) and _differs(reason):
            _warn_differs(self._step, reason)
            channel.connection.channel(on_open_callback=self._on_new_channel)
            return
        self._over = True
        self._on_failed(channel, reason)

    def _on_new_channel(self, channel: Any) -> None:
        """Use the queue a 406 refused as it is, on a channel of its own."""
        assert isinstance(self._step, Queue)
        self._channel = channel
        channel.add_on_close_callback(self._on_closed)
        channel.queue_declare(self._step.name, passive=True, callback=self._next)


def _send(channel: Any, declaration: Declaration, **reply: Any) -> None:
    """Send one declaration; `reply` holds the callback of an asynchronous channel."""
    if isinstance(declaration, Exchange):
        channel.exchange_declare(declaration.name, exchange_type=declaration.kind,
                                 durable=True, **reply)
    elif isinstance(declaration, Queue):
        channel.queue_declare(declaration.name, durable=True,
                              arguments=declaration.arguments, **reply)
    else:
        channel.queue_bind(declaration.queue, declaration.exchange,
                           routing_key=declaration.routing_key, **reply)


def _differs(exc: BaseException) -> bool:
    """The broker's 406 PRECONDITION_FAILED: the queue exists with other arguments."""
    return getattr(exc, "reply_code", None) == 406


def _warn_differs(queue: Queue, exc: BaseException) -> None:
    log.warning("queue %s exists with other arguments than this process's settings "
                "(%s; wanted %s); using it as it is: see README, Changing queue limits",
                queue.name, getattr(exc, "reply_text", exc), _shown(queue.arguments))


def _shown(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(arguments.items()))
