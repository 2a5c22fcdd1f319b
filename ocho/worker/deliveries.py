"""A request as the broker delivered it, and reading it into a job.

A request is run only if its job id is a canonical UUID agreed by body and
`message_id`, its `content_type` is JSON, its routing key is its tool, its tool
exists here and its `reply_to` (if any) is a server-named queue; the same caps as
over HTTP apply, and a body too large is not even parsed. Whatever is wrong is an
InvalidRequest naming it (`read`); a request too broken to run is still told apart
as far as it can be (`identify`), so that its rejection can be answered.

Invariants: reading has no side effect, and a Delivery's `reply_to` is only ever a
server-named queue (or direct reply-to).
"""

from __future__ import annotations

import dataclasses

import pika
import pika.channel

from ocho import contract, topology
from ocho.amqp import describe
from ocho.contract import JobRequest, shown
from ocho.errors import InvalidRequest, PayloadTooLarge
from ocho.settings import Settings
from ocho.worker import builtins, runner


@dataclasses.dataclass
class Delivery:
    channel: pika.channel.Channel
    tag: int
    properties: pika.BasicProperties
    attempt: int
    routing_key: str = ""
    # Delivered before (the broker's flag): its tool may have killed a worker.
    redelivered: bool = False
    digest: str | None = None  # of the body; set by the job thread (hashing takes time)

    @property
    def correlation_id(self) -> str | None:
        return self.properties.correlation_id or self.properties.message_id

    @property
    def reply_to(self) -> str | None:
        """Where events go besides ocho.events: only a server-named queue."""
        reply_to = self.properties.reply_to
        return reply_to if topology.is_reply_address(reply_to) else None


def read(settings: Settings, delivery: Delivery, body: bytes) -> JobRequest:
    """The request a delivery carries, checked; InvalidRequest naming what is wrong."""
    # The same caps as over HTTP (gateway.submission), checked before any parsing.
    if len(body) > settings.max_message_bytes:
        raise PayloadTooLarge(f"body: {len(body)} bytes; at most "
                              f"{settings.max_message_bytes} per request "
                              "(from OCHO_MAX_REQUEST_BYTES)", field="body")
    check_properties(delivery)
    request = JobRequest.decode(body, delivery.properties.message_id)
    if delivery.routing_key != request.tool:
        raise InvalidRequest(f"routing key {shown(delivery.routing_key, 80)!r} is not the "
                             f"tool {request.tool!r}: publish with routing key = tool",
                             field="routing_key")
    contract.check(request, settings)  # the same caps as over HTTP
    if request.tool not in builtins.NAMES and runner.tool_path(settings, request.tool) is None:
        raise InvalidRequest(f"unknown tool {request.tool!r}", field="tool")
    return request


def job_of(settings: Settings, request: JobRequest, attempt: int) -> runner.Job:
    """The job to run for a request that was read."""
    request = request.with_timeout(settings.default_timeout, settings.max_timeout)
    return runner.Job(request.id, request.tool, list(request.args), dict(request.files),
                      request.timeout or settings.default_timeout, attempt)


def check_properties(delivery: Delivery) -> None:
    properties = delivery.properties
    content_type = (properties.content_type or "").split(";")[0].strip().lower()
    if content_type != contract.CONTENT_TYPE:
        raise InvalidRequest(f"content_type {shown(properties.content_type or '', 80)!r}: "
                             f"must be {contract.CONTENT_TYPE}", field="content_type")
    if properties.reply_to and delivery.reply_to is None:
        raise InvalidRequest(f"reply_to {shown(properties.reply_to, 80)!r}: must be a "
                             "server-named queue (amq.gen-…, declare it with an empty name) "
                             "or amq.rabbitmq.reply-to", field="reply_to")


def refusal(settings: Settings, delivery: Delivery, body: bytes,
            exc: Exception) -> tuple[str | None, str | None, str]:
    """Why a request that cannot be read is rejected, with its job id and tool as far
    as they can be told: (job_id, tool, reason)."""
    reason = str(exc) if isinstance(exc, InvalidRequest) else \
        f"the request could not be read: {describe(exc)}"
    try:
        # An oversized body is not parsed even to find its id (message_id has it).
        oversized = len(body) > settings.max_message_bytes
        job_id, tool = identify(delivery, b"" if oversized else body)
    except Exception:  # noqa: BLE001 - nothing more can be told of it
        job_id, tool = None, None
    return job_id, tool, reason


def identify(delivery: Delivery, body: bytes) -> tuple[str | None, str | None]:
    """The job id and tool of a request too broken to run, as far as they can be told."""
    salvaged = contract.salvage(body, delivery.properties.message_id)
    return salvaged.job_id, salvaged.tool
