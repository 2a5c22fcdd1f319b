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

Queue arguments cannot change once a queue exists: declaring `ocho.jobs`
with another delivery limit or length limit gets 406 PRECONDITION_FAILED
(so does a queue made before it had a length limit). Then the queue as it
is is used, and a warning names the argument that differs: the README says
how to change them.

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
# Server-named queues and direct reply-to (the broker adds a suffix to the pseudo-queue).
REPLY_ADDRESS = re.compile(r"^(amq\.gen-[A-Za-z0-9_-]{1,200}|amq\.rabbitmq\.reply-to"
                           r"(\.[A-Za-z0-9_.=+/-]{1,250})?)\Z")


def is_reply_address(name: object) -> bool:
    """A reply_to the worker may publish to: `amq.gen-*` or `amq.rabbitmq.reply-to*`."""
    return isinstance(name, str) and REPLY_ADDRESS.match(name) is not None


def event_routing_key(event_type: str) -> str:
    return f"job.{event_type}"


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
        declare(channel, delivery_limit, max_queued)
    if channel.is_open:
        channel.close()


def declare(channel: Any, delivery_limit: int, max_queued: int = DEFAULT_MAX_QUEUED) -> Any:
    """Declare everything; safe to call again on every (re)connect. Returns the channel
    to go on with: a new one if the broker closed this one over ocho.jobs' arguments."""
    channel.exchange_declare(JOBS_EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(DEAD_EXCHANGE, exchange_type="fanout", durable=True)
    channel.exchange_declare(EVENTS_EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(CONTROL_EXCHANGE, exchange_type="fanout", durable=True)
    channel = _declare_jobs_queue(channel, {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        # A full queue refuses (nacks) a publish: the publisher learns it at once,
        # where drop-head would silently lose the oldest request.
        "x-max-length": max_queued,
        "x-overflow": "reject-publish",
    })
    channel.queue_bind(JOBS_QUEUE, JOBS_EXCHANGE, routing_key="#")
    channel.queue_declare(DEAD_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(DEAD_QUEUE, DEAD_EXCHANGE, routing_key="")
    channel.queue_declare(RECORDER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(RECORDER_QUEUE, EVENTS_EXCHANGE, routing_key="job.#")
    channel.queue_declare(
        CONTROL_LOG,
        durable=True,
        arguments={"x-queue-type": "stream", "x-max-age": CONTROL_LOG_MAX_AGE},
    )
    channel.queue_bind(CONTROL_LOG, CONTROL_EXCHANGE, routing_key="")
    return channel


def _declare_jobs_queue(channel: Any, arguments: dict[str, Any]) -> Any:
    try:
        channel.queue_declare(JOBS_QUEUE, durable=True, arguments=arguments)
        return channel
    except Exception as exc:  # pika closes the channel on 406 PRECONDITION_FAILED
        if getattr(exc, "reply_code", None) != 406:
            raise
        log.warning("queue %s exists with other arguments than this process's settings "
                    "(%s); using it as it is: see README, Changing queue limits",
                    JOBS_QUEUE, getattr(exc, "reply_text", exc))
    channel = channel.connection.channel()
    channel.queue_declare(JOBS_QUEUE, passive=True)
    return channel
