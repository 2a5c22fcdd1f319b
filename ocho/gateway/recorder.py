"""The recorder: turns worker events and dead-lettered requests into job state.

A thread with a connection of its own consumes two queues:

- `ocho.recorder` (bound to `ocho.events` with `job.#`): started / output /
  finished events, read with ocho.contract.decode_event and applied to the store;
- `ocho.dead`: requests the broker dead-lettered (rejected by a worker, over the
  delivery limit, expired): their job ends `rejected` with the reason, unless it
  already ended.

Deliveries are taken in batches (whatever arrived together, up to the prefetch),
applied in one store transaction, and acked only after it committed, so a
gateway that dies loses nothing: the broker delivers the batch again and the
store's rules make a replay harmless. Acks go only to the channel the
deliveries came from; after a reconnect the broker redelivers.

No message can stop the recorder: anything that fails while a delivery is read
(bad JSON, nesting, wrong types, odd headers — any exception) drops that one
delivery with one log line (message id and routing key escaped) and it is acked
with its batch; an item the store refuses is dropped alone. A dead letter
counts only with a canonical job id, and carries the digest of its body: a
request that reused another job's id (and was rejected for it) never marks
that job `rejected`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from ocho import topology
from ocho.amqp import Backoff, describe
from ocho.contract import (
    decode_event,
    event_fields,
    request_digest,
    salvage,
    shown,
)
from ocho.errors import InvalidRequest, StoreUnavailable
from ocho.gateway.broker_thread import BrokerThread
from ocho.gateway.notifier import JobNotifier
from ocho.gateway.store import Store, StoreTransaction
from ocho.settings import Settings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Delivery:
    tag: int
    queue: str
    routing_key: str
    properties: pika.BasicProperties
    body: bytes


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    job_id: str
    reason: str
    request: dict[str, Any]  # tool, args, timeout, correlation_id as far as known


class Recorder(BrokerThread):
    role = "recorder"

    def __init__(self, settings: Settings, store: Store, notifier: JobNotifier, *,
                 prefetch: int = 200) -> None:
        super().__init__(settings)
        self.store = store
        self.notifier = notifier
        self.prefetch = prefetch
        self._arrived: list[Delivery] = []
        self.recorded = 0  # deliveries handled since start, for logs and tests

    def _set_up(self, channel: BlockingChannel) -> None:
        channel.basic_qos(prefetch_count=self.prefetch)
        self._arrived = []  # nothing from an earlier channel may be acked on this one
        for queue_name in (topology.RECORDER_QUEUE, topology.DEAD_QUEUE):
            channel.basic_consume(queue_name, self._on_delivery(queue_name))
        log.info("recorder: consuming %s and %s", topology.RECORDER_QUEUE, topology.DEAD_QUEUE)

    def _close(self) -> None:
        self._arrived = []
        super()._close()

    def _on_delivery(self, queue_name: str) -> Any:
        def arrived(_channel: BlockingChannel, method: Any, properties: pika.BasicProperties,
                    body: bytes) -> None:
            self._arrived.append(Delivery(method.delivery_tag, queue_name, method.routing_key,
                                          properties, body))
        return arrived

    def _serve(self) -> None:
        assert self._connection is not None
        while not self._stopping.is_set():
            # Dispatches every delivery already read from the socket in one go, so
            # a burst becomes one batch and one transaction.
            self._connection.process_data_events(time_limit=0.5)
            if self._arrived:
                batch, self._arrived = self._arrived, []
                self._record(batch)

    # -- recording --------------------------------------------------------------------------

    def _record(self, batch: list[Delivery]) -> None:
        assert self._connection is not None and self._channel is not None
        channel = self._channel
        backoff = Backoff(first=0.5, most=10.0)
        while True:
            try:
                changed = self._apply(batch)
                break
            except StoreUnavailable as exc:
                delay = backoff.take()
                log.warning("recorder: job store unavailable (%s); keeping %d deliveries "
                            "unacked and retrying in %.1f s", exc, len(batch), delay)
                # Waiting here (not sleeping) keeps the broker's heartbeats answered.
                self._connection.process_data_events(time_limit=delay)
                if self._stopping.is_set():
                    return  # unacked: the broker redelivers them to the next recorder
        # Committed: waiting requests may read it now, before the ack's round trip.
        if changed:
            self.notifier.notify(changed)
        # Every delivery up to this tag on this channel is in this batch or was acked.
        channel.basic_ack(delivery_tag=max(d.tag for d in batch), multiple=True)
        self.recorded += len(batch)

    def _apply(self, batch: list[Delivery]) -> set[str]:
        """Apply the batch in one transaction; if one item breaks it, apply them one by one
        so that only that item is dropped."""
        items = [item for item in (self._decode(d) for d in batch) if item is not None]
        if not items:
            return set()
        # Lock job rows in one order (a stable sort keeps each job's events in order),
        # so that gateways sharing a PostgreSQL never deadlock on each other's batches.
        items.sort(key=_job_id)
        try:
            with self.store.transaction() as tx:
                return {job_id for item in items if (job_id := self._apply_one(tx, item))}
        except StoreUnavailable:
            raise
        except Exception as exc:  # a single bad item, e.g. a value the database refuses
            log.warning("recorder: a batch of %d failed (%s); applying one by one",
                        len(items), describe(exc))
        changed: set[str] = set()
        for item in items:
            try:
                with self.store.transaction() as tx:
                    job_id = self._apply_one(tx, item)
            except StoreUnavailable:
                raise
            except Exception as exc:
                log.error("recorder: dropped %s for job %s: %s", _kind(item), _job_id(item),
                          describe(exc))
                continue
            if job_id:
                changed.add(job_id)
        return changed

    def _apply_one(self, tx: StoreTransaction, item: dict[str, Any] | DeadLetter) -> str | None:
        if isinstance(item, DeadLetter):
            changed = tx.reject(item.job_id, item.reason, **item.request)
            if changed:
                log.info("job %s rejected: %s", item.job_id, item.reason)
            return item.job_id if changed else None
        changed = tx.apply_event(item)
        if changed and item["type"] != "output":
            state = item.get("state") or "running"
            log.info("job %s %s (attempt %s)", item["id"], state, item["attempt"])
        return str(item["id"]) if changed else None

    def _decode(self, delivery: Delivery) -> dict[str, Any] | DeadLetter | None:
        """The event or dead letter in a delivery, or None (logged) if it is neither."""
        try:
            if delivery.queue == topology.DEAD_QUEUE:
                return self._dead_letter(delivery)
            if len(delivery.body) > self.settings.max_message_bytes:
                raise InvalidRequest(f"{len(delivery.body)} bytes: larger than any event")
            return event_fields(decode_event(delivery.body))
        except Exception as exc:  # noqa: BLE001 - no body may stop the recorder
            reason = str(exc) if isinstance(exc, InvalidRequest) else describe(exc)
            log.warning("recorder: dropped a message from %s (routing key %s, message id %s):"
                        " %s", delivery.queue, shown(delivery.routing_key, 80),
                        shown(delivery.properties.message_id or "-", 80), shown(reason, 200))
            return None

    def _dead_letter(self, delivery: Delivery) -> DeadLetter | None:
        # A body larger than any request is not parsed (its message_id tells the job).
        body = delivery.body if len(delivery.body) <= self.settings.max_message_bytes else b""
        salvaged = salvage(body, delivery.properties.message_id)
        request, job_id = salvaged.fields, salvaged.job_id
        if job_id is None:
            raise InvalidRequest("a dead letter without a job id (neither message_id nor the "
                                 "body's id is a canonical UUID)")
        headers = delivery.properties.headers if isinstance(delivery.properties.headers,
                                                             dict) else {}
        deaths = headers.get("x-death")
        death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(
            deaths[0], dict) else {}
        why = str(death.get("reason") or headers.get("x-first-death-reason") or "unknown")
        routing_keys = death.get("routing-keys")
        first_key = routing_keys[0] if isinstance(routing_keys, list) and routing_keys \
            else delivery.routing_key
        tool = request.get("tool") if isinstance(request.get("tool"), str) else first_key
        args = request.get("args")
        timeout = request.get("timeout")
        return DeadLetter(
            job_id=job_id,
            reason=self._death_reason(why, str(death.get("queue") or topology.JOBS_QUEUE)),
            request={
                "tool": str(tool)[:64] if tool else None,
                "args": [str(a) for a in args] if isinstance(args, list) else None,
                "timeout": timeout if isinstance(timeout, int) and not isinstance(
                    timeout, bool) and 0 < timeout < 2**31 else None,
                "correlation_id": delivery.properties.correlation_id,
                "digest": request_digest(delivery.body),
            },
        )

    def _death_reason(self, why: str, queue_name: str) -> str:
        limit = topology.broker_delivery_limit(self.settings.delivery_limit)
        if why == "delivery_limit":
            return (f"dead-lettered after {limit + 1} deliveries (the broker's delivery "
                    "limit): it was handed out over and over without being run to its end")
        if why == "rejected":
            return "dead-lettered: a worker rejected the request as one it cannot run"
        if why == "expired":
            return f"dead-lettered: it expired in queue {queue_name} before a worker took it"
        if why == "maxlen":
            return f"dead-lettered: queue {queue_name} was full"
        return f"dead-lettered from queue {queue_name} ({why})"


def _kind(item: dict[str, Any] | DeadLetter) -> str:
    return "a dead letter" if isinstance(item, DeadLetter) else f"a {item['type']} event"


def _job_id(item: dict[str, Any] | DeadLetter) -> str:
    return item.job_id if isinstance(item, DeadLetter) else str(item["id"])
