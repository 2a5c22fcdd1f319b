"""Publishing job requests and cancels, with publisher confirms, from many HTTP threads.

pika is not thread-safe and waitress serves each request in a thread of its pool,
so one thread owns the connection: it declares the topology, publishes what the
request threads hand it through a queue, and between publishes keeps calling
`process_data_events`, which answers the broker's heartbeats. A request thread
blocks on a future until the broker confirmed its message (or refused it).

While the broker is away the thread reconnects with back-off, and publishing
fails at once with BrokerUnavailable instead of queueing up requests that a
client would believe accepted.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import time

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ocho import topology
from ocho.amqp import CONNECTION_ERRORS, describe
from ocho.contract import CONTENT_TYPE, Cancel, JobRequest
from ocho.errors import BrokerUnavailable, PublishRejected
from ocho.gateway.broker_thread import BrokerThread
from ocho.settings import Settings

log = logging.getLogger(__name__)

PERSISTENT = 2


@dataclasses.dataclass
class Outgoing:
    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    what: str  # for messages: "job <id>", "cancel of job <id>"
    future: concurrent.futures.Future[None] = dataclasses.field(
        default_factory=concurrent.futures.Future)


class Publisher(BrokerThread):
    role = "publisher"

    def __init__(self, settings: Settings, *, confirm_timeout: float = 10.0) -> None:
        super().__init__(settings)
        self.confirm_timeout = confirm_timeout
        self._outbox: queue.Queue[Outgoing] = queue.Queue()

    # -- called from request threads ---------------------------------------------------------

    def publish_job(self, request: JobRequest, correlation_id: str | None = None,
                    reply_to: str | None = None, body: bytes | None = None) -> None:
        """Publish a validated job request; return once the broker confirmed it. `body`:
        the request's bytes as recorded, if they were (else it is encoded here)."""
        properties = pika.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            message_id=request.id,
            correlation_id=correlation_id or request.id,
            reply_to=reply_to,
            timestamp=int(time.time()),
            app_id="ocho-gateway",
        )
        self._publish(Outgoing(topology.JOBS_EXCHANGE, request.tool, body or request.encode(),
                               properties, what=f"job {request.id}"))

    def publish_cancel(self, job_id: str) -> None:
        """Ask every worker (and any worker started later) not to run, or to stop, a job."""
        body = Cancel(job_id).encode()
        properties = pika.BasicProperties(content_type=CONTENT_TYPE, delivery_mode=PERSISTENT,
                                          message_id=job_id, timestamp=int(time.time()),
                                          app_id="ocho-gateway")
        self._publish(Outgoing(topology.CONTROL_EXCHANGE, "", body, properties,
                               what=f"cancel of job {job_id}"))

    def _publish(self, item: Outgoing) -> None:
        if not self.connected:
            raise BrokerUnavailable(f"the message broker is unavailable ({self.last_error}); "
                                    "nothing was submitted, try again shortly")
        self._outbox.put(item)
        self._wake()
        try:
            item.future.result(timeout=self.confirm_timeout)
        except concurrent.futures.TimeoutError:
            if not item.future.cancel():
                # Already on the wire: its confirm decides, give it one more period.
                try:
                    item.future.result(timeout=self.confirm_timeout)
                    return
                except concurrent.futures.TimeoutError:
                    pass
            raise BrokerUnavailable(
                f"the message broker did not confirm the {item.what} within "
                f"{self.confirm_timeout:.0f} s; try again shortly") from None

    def _wake(self) -> None:
        """Make the owning thread leave process_data_events and look at the outbox."""
        connection = self._connection
        if connection is None:
            return
        try:
            connection.add_callback_threadsafe(lambda: None)
        except CONNECTION_ERRORS:
            pass  # it is reconnecting; it fails or sends the outbox itself

    # -- the owning thread ------------------------------------------------------------------

    def _set_up(self, channel: BlockingChannel) -> None:
        channel.confirm_delivery()
        log.info("publisher: connected to the broker, topology declared")

    def _serve(self) -> None:
        assert self._connection is not None
        while not self._stopping.is_set():
            self._send_outbox()
            # Returns early when _wake() posts a callback; otherwise every second,
            # having answered heartbeats meanwhile.
            self._connection.process_data_events(time_limit=1.0)
        self._send_outbox()

    def _send_outbox(self) -> None:
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return
            if not item.future.set_running_or_notify_cancel():
                continue  # its caller gave up waiting: never send it behind their back
            self._send(item)

    def _send(self, item: Outgoing) -> None:
        assert self._channel is not None
        try:
            self._channel.basic_publish(item.exchange, item.routing_key, item.body,
                                        item.properties, mandatory=True)
        except pika.exceptions.UnroutableError:
            item.future.set_exception(PublishRejected(
                f"the broker could not route the {item.what} to any queue "
                f"(exchange {item.exchange!r}, routing key {item.routing_key!r})"))
        except pika.exceptions.NackError:
            self._refused(item)
        except CONNECTION_ERRORS as exc:
            item.future.set_exception(BrokerUnavailable(
                f"the broker connection failed while sending the {item.what}: {describe(exc)}"))
            raise
        except Exception as exc:  # e.g. a property pika cannot encode: never leave a caller
            item.future.set_exception(PublishRejected(
                f"the {item.what} could not be sent: {describe(exc)}"))
            raise
        else:
            item.future.set_result(None)

    def _refused(self, item: Outgoing) -> None:
        """Fail a nacked publish. ocho.jobs refuses one when it holds OCHO_MAX_QUEUED
        requests — or, in a cluster, when its leader was lost: then the channel's queue
        client may go on refusing after a new leader is elected, so the connection is
        dropped and made again (to the next node)."""
        if item.exchange != topology.JOBS_EXCHANGE:
            item.future.set_exception(PublishRejected(
                f"the broker refused the {item.what} (nack); try again shortly"))
            return
        assert self._channel is not None
        try:
            waiting = self._channel.queue_declare(topology.JOBS_QUEUE, passive=True)
        except CONNECTION_ERRORS as exc:
            item.future.set_exception(BrokerUnavailable(
                f"the broker refused the {item.what}: {describe(exc)}; try again shortly"))
            raise
        if waiting.method.message_count >= self.settings.max_queued:
            item.future.set_exception(PublishRejected(
                f"the job queue is full ({self.settings.max_queued} requests waiting, "
                f"OCHO_MAX_QUEUED): the {item.what} was not accepted; try again later"))
            return
        item.future.set_exception(BrokerUnavailable(
            f"the broker refused the {item.what} though the job queue is not full (its "
            "leader node was lost?); nothing was submitted, try again shortly"))
        raise pika.exceptions.ChannelWrongStateError(
            f"{topology.JOBS_QUEUE} refused a publish without being full: reconnecting")

    def _down(self, reason: str) -> None:
        """Mark the broker unavailable and fail everything still waiting to be sent."""
        super()._down(reason)
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(BrokerUnavailable(
                    f"the message broker is unavailable ({reason}); try again shortly"))
