"""Publishing a worker's events with publisher confirms, and settling requests.

Job threads never touch the channel: every publish, ack and reject is handed to
the connection's I/O loop (`on_io_thread`) and runs there only if the request's
channel is still the current one — a delivery tag belongs to its channel, and
after a reconnect it is stale and must never be acked on the new one.

Events are published without waiting for each confirm. The channel numbers the
publishes of a connection 1, 2, 3 … and confirms them in that order, so a
callback waits on the number of one publish: the one for a `finished` event acks
its request (or, if the broker refused to keep it, requeues the request to run
again). Every publish on the channel, Sync markers included, goes through `send`
so that the numbering stays that of the broker. `reset` starts it again for a new
connection; `waiting` says whether a confirm is still awaited (a draining worker
closes only once none is).

Events go to the request's reply queue first (a waiting client is the one in a
hurry), then to ocho.events; all are mandatory, and a returned one is logged.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pika
import pika.spec

from ocho import contract, topology
from ocho.amqp import describe
from ocho.worker.deliveries import Delivery

if TYPE_CHECKING:
    from ocho.worker.connection import Connection

log = logging.getLogger("ocho.worker")


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """An event ready to be sent from the I/O thread."""
    body: bytes
    routing_key: str
    properties: pika.BasicProperties
    reply_to: str | None
    to_events: bool
    on_confirmed: Callable[[bool], None] | None


class Publisher:
    def __init__(self, connection: Connection, name: str) -> None:
        self._connection = connection
        self._name = name
        self._published = 0
        self._on_confirmed: dict[int, Callable[[bool], None]] = {}

    def reset(self) -> None:
        """A new connection: its channel numbers its publishes from 1 again."""
        self._published = 0
        self._on_confirmed = {}

    def waiting(self) -> bool:
        """Whether a confirm that settles a request is still awaited."""
        return bool(self._on_confirmed)

    # -- from job threads ------------------------------------------------------------------
    def publish(self, delivery: Delivery, event: contract.Event, then_ack: bool = False,
                to_events: bool = True, confirmed: threading.Event | None = None) -> None:
        """Publish an event of the delivery's job; with `then_ack`, ack the request once
        the broker confirmed the event; `confirmed` is set then (acked or not).
        `to_events=False` sends it to the reply queue only."""
        properties = pika.BasicProperties(
            content_type=contract.CONTENT_TYPE,
            delivery_mode=pika.DeliveryMode.Persistent,
            correlation_id=delivery.correlation_id,
            message_id=str(uuid.uuid4()),
            type=event.type,
            headers={"job_id": event.id},
        )
        settle: Callable[[bool], None] | None = None
        if then_ack:
            settle = functools.partial(self._settle, delivery, event.id)
        elif confirmed is not None:
            settle = _setter(confirmed)
        outgoing = Outgoing(contract.encode_event(event), topology.event_routing_key(event.type),
                            properties, delivery.reply_to, to_events, settle)
        self.on_io_thread(delivery, functools.partial(self._send_event, outgoing))

    def ack(self, delivery: Delivery) -> None:
        self.on_io_thread(delivery, functools.partial(delivery.channel.basic_ack, delivery.tag))

    def reject(self, delivery: Delivery) -> None:
        """Dead-letter the request."""
        self.on_io_thread(delivery, functools.partial(delivery.channel.basic_reject,
                                                      delivery.tag, requeue=False))

    def on_io_thread(self, delivery: Delivery, callback: Callable[[], None]) -> None:
        """Run `callback` on the I/O thread, if the delivery's channel is current then."""
        try:
            self._connection.call_threadsafe(functools.partial(self._if_current, delivery,
                                                               callback))
        except Exception as exc:  # the loop is closing: the broker redelivers the job
            log.debug("worker %s: dropped a callback for job %s: %s", self._name,
                      delivery.properties.message_id, describe(exc))

    # -- on the I/O thread -----------------------------------------------------------------
    def _if_current(self, delivery: Delivery, callback: Callable[[], None]) -> None:
        if self.is_current(delivery):
            callback()

    def is_current(self, delivery: Delivery) -> bool:
        # A delivery tag belongs to its channel: after a reconnect it is stale
        # and must never be acked on the new one.
        channel = self._connection.channel
        return channel is not None and delivery.channel is channel and channel.is_open

    def _send_event(self, outgoing: Outgoing) -> None:
        # The reply queue first: a waiting client is the one in a hurry.
        if outgoing.reply_to:
            self.send("", outgoing.reply_to, outgoing.body, outgoing.properties)
        if outgoing.to_events:
            self.send(topology.EVENTS_EXCHANGE, outgoing.routing_key, outgoing.body,
                      outgoing.properties, outgoing.on_confirmed)

    def _settle(self, delivery: Delivery, job_id: str | None, confirmed: bool) -> None:
        if not self.is_current(delivery):
            return
        if confirmed:
            delivery.channel.basic_ack(delivery.tag)
        else:
            # The broker could not keep the result: run the job again.
            log.warning("job %s: finished event refused by the broker; requeued", job_id)
            delivery.channel.basic_nack(delivery.tag, requeue=True)

    def send(self, exchange: str, routing_key: str, body: bytes,
             properties: pika.BasicProperties,
             on_confirmed: Callable[[bool], None] | None = None) -> None:
        """Publish on the current channel; `on_confirmed(ack)` once the broker confirms it."""
        channel = self._connection.channel
        assert channel is not None
        channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        self._published += 1
        if on_confirmed is not None:
            self._on_confirmed[self._published] = on_confirmed

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        confirmed = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            settled = [n for n in self._on_confirmed if n <= method.delivery_tag]
        else:
            settled = [method.delivery_tag] if method.delivery_tag in self._on_confirmed else []
        for number in sorted(settled):
            self._on_confirmed.pop(number)(confirmed)

    def on_returned(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        if method.exchange == "":
            log.info("job %s: reply queue %s is gone; events stay in %s only",
                     (properties.headers or {}).get("job_id"), method.routing_key,
                     topology.EVENTS_EXCHANGE)
        else:
            log.error("event for job %s unroutable on %s (%s): is %s bound?",
                      (properties.headers or {}).get("job_id"), method.exchange,
                      method.reply_text, topology.RECORDER_QUEUE)


def _setter(event: threading.Event) -> Callable[[bool], None]:
    return lambda _confirmed: event.set()
