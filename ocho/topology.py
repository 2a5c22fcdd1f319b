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

ocho.jobs' broker delivery limit is a safety net set well above the portal's
OCHO_DELIVERY_LIMIT (BROKER_DELIVERY_FACTOR times it): the portal's limit
counts the times a worker started the job (see ocho.worker.starts), and is
applied by the worker, so that redeliveries caused by lost nodes or channels
use up no attempt.

Replies go only to queues a client cannot name after someone else's:
server-named queues (`amq.gen-…`) and direct reply-to (`amq.rabbitmq.reply-to…`).
"""

from __future__ import annotations

import logging
import re
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


def declare(channel: Any, delivery_limit: int, max_queued: int = DEFAULT_MAX_QUEUED,
            group_size: int = 0, stream_size: int = 0) -> Any:
    """Declare everything; safe to call again on every (re)connect. Returns the channel
    to go on with: a new one if the broker closed this one over a queue's arguments.
    `group_size` and `stream_size` (0: the broker's default) are the replicas of the
    quorum queues and of the cancel log when they are created."""
    channel.exchange_declare(JOBS_EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(DEAD_EXCHANGE, exchange_type="fanout", durable=True)
    channel.exchange_declare(EVENTS_EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(CONTROL_EXCHANGE, exchange_type="fanout", durable=True)
    quorum: dict[str, Any] = {"x-queue-type": "quorum"}
    if group_size:
        quorum["x-quorum-initial-group-size"] = group_size
    channel = _declare_queue(channel, JOBS_QUEUE, {
        **quorum,
        "x-delivery-limit": broker_delivery_limit(delivery_limit),
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        # A full queue refuses (nacks) a publish: the publisher learns it at once,
        # where drop-head would silently lose the oldest request.
        "x-max-length": max_queued,
        "x-overflow": "reject-publish",
    })
    channel.queue_bind(JOBS_QUEUE, JOBS_EXCHANGE, routing_key="#")
    channel = _declare_queue(channel, DEAD_QUEUE, quorum)
    channel.queue_bind(DEAD_QUEUE, DEAD_EXCHANGE, routing_key="")
    channel = _declare_queue(channel, RECORDER_QUEUE, quorum)
    channel.queue_bind(RECORDER_QUEUE, EVENTS_EXCHANGE, routing_key="job.#")
    stream: dict[str, Any] = {"x-queue-type": "stream", "x-max-age": CONTROL_LOG_MAX_AGE}
    if stream_size:
        stream["x-initial-cluster-size"] = stream_size
    channel = _declare_queue(channel, CONTROL_LOG, stream)
    channel.queue_bind(CONTROL_LOG, CONTROL_EXCHANGE, routing_key="")
    # Every start of a job, as the portal records it, also goes to the log every worker
    # reads: that is how a worker counts the starts of a job it is handed again.
    channel.queue_bind(CONTROL_LOG, EVENTS_EXCHANGE, routing_key=event_routing_key("started"))
    return channel


def _declare_queue(channel: Any, name: str, arguments: dict[str, Any]) -> Any:
    """Declare a durable queue; if it exists with other arguments, use it as it is."""
    try:
        channel.queue_declare(name, durable=True, arguments=arguments)
        return channel
    except Exception as exc:  # pika closes the channel on 406 PRECONDITION_FAILED
        if getattr(exc, "reply_code", None) != 406:
            raise
        log.warning("queue %s exists with other arguments than this process's settings "
                    "(%s; wanted %s); using it as it is: see README, Changing queue limits",
                    name, getattr(exc, "reply_text", exc), _shown(arguments))
    channel = channel.connection.channel()
    channel.queue_declare(name, passive=True)
    return channel


def _shown(arguments: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in sorted(arguments.items()))
