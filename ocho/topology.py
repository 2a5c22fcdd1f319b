"""The AMQP topology, declared idempotently by every side that connects.

    ocho.jobs    topic exchange, routing key = tool name
      └─ ocho.jobs      quorum queue bound with '#', delivery limit,
                        dead-letters to ocho.dead
    ocho.dead    fanout exchange → ocho.dead queue (rejected and poison requests)
    ocho.events  topic exchange, routing keys job.started / job.output / job.finished
      └─ ocho.recorder  quorum queue bound with 'job.#': the gateway's recorder
                        reads it, so events wait there while no gateway runs
    ocho.control fanout exchange: cancel requests
      └─ ocho.control.log  stream queue: every worker reads it from the start,
                           so a worker that starts after a cancel still knows
                           not to run that job
"""

from __future__ import annotations

from typing import Any

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


def event_routing_key(event_type: str) -> str:
    return f"job.{event_type}"


def ensure(connection: Any, delivery_limit: int) -> None:
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
        declare(channel, delivery_limit)
    if channel.is_open:
        channel.close()


def declare(channel: Any, delivery_limit: int) -> None:
    """Declare everything; safe to call again on every (re)connect."""
    channel.exchange_declare(JOBS_EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(DEAD_EXCHANGE, exchange_type="fanout", durable=True)
    channel.exchange_declare(EVENTS_EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(CONTROL_EXCHANGE, exchange_type="fanout", durable=True)
    channel.queue_declare(
        JOBS_QUEUE,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": DEAD_EXCHANGE,
        },
    )
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
