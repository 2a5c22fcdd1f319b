"""The cancel log as a worker reads it: the stream ocho.control.log, consumed from
its first message on a channel of its own, on the I/O thread.

It carries cancels (published to ocho.control), the `started` events the portal
records (bound from ocho.events) and the Sync markers workers append to learn
that they have read it up to a moment. From it a worker knows:

- which jobs were cancelled: the last CANCELLED_MEMORY distinct ids (docs/amqp.md
  says what a flood of more cancels can and cannot do); a cancel of a job running
  here kills it (`on_cancel`);
- how often each job was started (ocho.worker.starts), which makes the attempt of
  a delivery: 1 + the starts read so far.

A starting worker reads the log to its end before taking any job (`catch_up`: it
appends a marker of its own and reads until it sees it, or CANCEL_LOG_CATCH_UP_S
passed), and a redelivered request waits until the log is read up to its arrival
(`after_read`, at most LOG_SYNC_WAIT_S: a log without a leader for a while must
not hold the request forever).

No control message can stop a worker: one that cannot be read (too large, bad
JSON, wrong types, anything raised) is ignored and logged, with control characters
escaped, at most CONTROL_LOG_BURST lines per CONTROL_LOG_WINDOW_S then as a count.
The stream only needs credit back, so its messages are acked in batches of
CONTROL_ACK_EVERY (the rest stay within the prefetch).
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pika
import pika.channel

from ocho import contract, topology
from ocho.amqp import describe
from ocho.contract import Cancel, Started, Sync, shown
from ocho.errors import InvalidRequest
from ocho.settings import Settings
from ocho.worker.starts import Starts

if TYPE_CHECKING:
    from ocho.worker.connection import Connection
    from ocho.worker.publisher import Publisher

log = logging.getLogger("ocho.worker")

# How many cancelled job ids a worker remembers (about 15 MB): docs/amqp.md says
# what a flood of more cancels than this can and cannot do.
CANCELLED_MEMORY = 100_000
# A control message is a few dozen bytes; a larger one is not even parsed.
MAX_CONTROL_BYTES = 64 * 1024
# Control-stream messages are acked in batches (the stream only needs credit back).
CONTROL_ACK_EVERY = 100
# Ignored control messages: at most this many log lines per window, then a count.
CONTROL_LOG_BURST = 10
CONTROL_LOG_WINDOW_S = 10.0
# How long a starting worker reads the cancel log before taking jobs anyway.
CANCEL_LOG_CATCH_UP_S = 30.0
# How long a redelivered request waits for the cancel log to be read up to date.
LOG_SYNC_WAIT_S = 5.0


class CancelLog:
    def __init__(self, settings: Settings, name: str, publisher: Publisher,
                 connection: Connection, on_cancel: Callable[[str], None]) -> None:
        self._settings = settings
        self._name = name
        self._publisher = publisher
        self._connection = connection
        self._on_cancel = on_cancel
        self._lock = threading.Lock()  # the cancelled set is read by job threads
        self._cancelled: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._cancels_forgotten = 0
        self._starts = Starts()
        # The marker of the catch-up, and Sync markers in flight with what to do
        # once each is read.
        self._marker: str | None = None
        self._on_caught_up: Callable[[], None] = _nothing
        self._syncs: dict[str, Callable[[], None]] = {}
        self._unacked = 0
        self._ignored = 0
        self._window = (0.0, 0)  # (start, lines logged in it)

    def reset(self) -> None:
        """A new connection: markers in flight are gone with the old one."""
        self._marker = None
        self._syncs = {}
        self._unacked = 0

    def is_cancelled(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._cancelled

    def starts(self, job_id: object) -> int:
        """How many times the portal recorded the job as started, as read so far."""
        return self._starts.count(job_id)

    # -- reading up to a moment --------------------------------------------------------------
    def catch_up(self, then: Callable[[], None], done: Callable[[], bool]) -> None:
        """Read the log to its end, then `then`; or after CANCEL_LOG_CATCH_UP_S unless
        `done()` says the worker went on already.

        The worker appends a marker of its own and reads until it sees it: then every
        cancel published before this moment is known."""
        self._marker = str(uuid.uuid4())
        self._on_caught_up = then
        self._send_sync(self._marker)
        self._connection.call_later(CANCEL_LOG_CATCH_UP_S,
                                    functools.partial(self._catch_up_over, self._marker, done))

    def _catch_up_over(self, marker: str, done: Callable[[], bool]) -> None:
        if not done() and self._marker == marker:
            log.warning("worker %s: the cancel log was not read to its end in %ss",
                        self._name, CANCEL_LOG_CATCH_UP_S)
            self._on_caught_up()

    def after_read(self, then: Callable[[], None]) -> None:
        """Run `then` once the log is read up to now, or after LOG_SYNC_WAIT_S."""
        marker = str(uuid.uuid4())
        self._syncs[marker] = then
        self._send_sync(marker)
        self._connection.call_later(LOG_SYNC_WAIT_S, functools.partial(self._sync_over, marker))

    def _sync_over(self, marker: str) -> None:
        waiting = self._syncs.pop(marker, None)
        if waiting is not None:
            log.warning("worker %s: the cancel log was not read to its end in %ss; "
                        "counting the starts known so far", self._name, LOG_SYNC_WAIT_S)
            waiting()

    def _send_sync(self, marker: str) -> None:
        self._publisher.send(topology.CONTROL_EXCHANGE, "", Sync(marker).encode(),
                             pika.BasicProperties(content_type=contract.CONTENT_TYPE))

    # -- reading -----------------------------------------------------------------------------
    def on_message(self, channel: pika.channel.Channel, method: Any, props: Any,
                   body: bytes) -> None:
        self._ack(channel, method.delivery_tag)
        try:
            self._apply(body)
        except Exception as exc:  # noqa: BLE001 - no control message may stop the worker
            self._ignore(getattr(props, "message_id", None), exc)

    def _ack(self, channel: pika.channel.Channel, tag: int) -> None:
        """The stream wants credit back, not each ack: one ack now and then covers all."""
        self._unacked += 1
        if self._unacked >= CONTROL_ACK_EVERY:  # the rest stay within the prefetch
            channel.basic_ack(tag, multiple=True)
            self._unacked = 0

    def _apply(self, body: bytes) -> None:
        command = contract.decode_control(body, MAX_CONTROL_BYTES,
                                          self._settings.max_message_bytes)
        if isinstance(command, Started):  # a start the portal records
            if not self._starts.record(command):
                raise InvalidRequest(f"a started event of job {command.id} with attempt "
                                     f"{command.attempt}, beyond belief")
        elif isinstance(command, Cancel):
            self._cancel(command.id)
        elif command.id == self._marker:
            self._on_caught_up()
        elif command.id in self._syncs:
            self._syncs.pop(command.id)()

    def _cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancelled[job_id] = None
            self._cancelled.move_to_end(job_id)
            while len(self._cancelled) > CANCELLED_MEMORY:
                self._cancelled.popitem(last=False)
                self._cancels_forgotten += 1
                if self._cancels_forgotten == 1:
                    log.warning("worker %s: more than %d cancels; the oldest are forgotten "
                                "(see docs/amqp.md, Cancelling a job)", self._name,
                                CANCELLED_MEMORY)
        self._on_cancel(job_id)

    def _ignore(self, message_id: object, exc: Exception) -> None:
        """One line per ignored message, but at most CONTROL_LOG_BURST per window: a
        flood of junk must not become a flood of log lines."""
        self._ignored += 1
        now = time.monotonic()
        start, lines = self._window
        if now - start > CONTROL_LOG_WINDOW_S:
            if lines > CONTROL_LOG_BURST:
                log.warning("worker %s: %d more control messages ignored in %.0f s",
                            self._name, lines - CONTROL_LOG_BURST, now - start)
            start, lines = now, 0
        self._window = (start, lines + 1)
        if lines < CONTROL_LOG_BURST:
            reason = str(exc) if isinstance(exc, InvalidRequest) else describe(exc)
            log.warning("worker %s: ignored control message %s: %s", self._name,
                        shown(message_id or "(no message_id)", 80), shown(reason, 200))


def _nothing() -> None:
    """What a read catch-up marker does before any catch-up began."""
