"""What the gateway's publisher and recorder share: a daemon thread that owns one
broker connection and keeps it up — connect, declare the topology, serve until the
connection drops, go on at once with the next broker node of OCHO_AMQP_URL (backing
off only once a whole round of nodes failed, see ocho.amqp.Nodes), and again — and
says whether it is connected and why not, for /readyz and /metrics.

The thread never dies of an exception: whatever _serve raises (a lost
connection, or a bug met on some message) is logged on one line, the connection
is closed, and after a back-off the thread connects again. Unacked deliveries
go back to the queue then, so a subclass must itself settle anything it cannot
read (see the recorder), or it would meet the same message again."""

from __future__ import annotations

import logging
import threading

import pika
from pika.adapters.blocking_connection import BlockingChannel

from ocho import topology
from ocho.amqp import CONNECTION_ERRORS, Nodes, connection_parameters, describe
from ocho.message import shown
from ocho.settings import Settings

log = logging.getLogger(__name__)


class BrokerThread:
    role = "broker"  # names the thread, the connection and the log lines

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ocho-{self.role}", daemon=True)
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._connected = threading.Event()
        self.last_error = "not connected yet"
        self.nodes = Nodes(settings.amqp_urls)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # -- for subclasses -----------------------------------------------------------------------

    def _set_up(self, channel: BlockingChannel) -> None:
        """Make a fresh channel ready for _serve (confirms, consumers…)."""

    def _serve(self) -> None:
        """Work until stopping, or until a connection error ends the connection."""
        raise NotImplementedError

    def _wake(self) -> None:
        """Make _serve notice a stop at once, if it may be waiting."""

    def _down(self, reason: str) -> None:
        self._connected.clear()
        self.last_error = reason

    # -- the owning thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            connected = False
            try:
                self._open()
                connected = True
                self._serve()
            except CONNECTION_ERRORS as exc:
                self._down(f"{self.nodes.name}: {describe(exc)}")
                log.warning("%s: broker connection to %s lost or refused (%s)", self.role,
                            self.nodes.name, describe(exc))
            except Exception as exc:  # noqa: BLE001 - this thread must outlive any bug
                self._down(f"internal error: {describe(exc)}")
                log.error("%s: unexpected %s; reconnecting", self.role,
                          shown(describe(exc), 300))
                log.debug("%s: the unexpected error's traceback", self.role, exc_info=exc)
            finally:
                self._close()
            self._pause(connected)
        self._down("the gateway is stopping")

    def _pause(self, connected: bool) -> None:
        """Move to the next node; wait only if a whole round of nodes failed."""
        try:
            delay = self.nodes.next(connected)
        except Exception:  # noqa: BLE001 - never let the thread die; wait a little
            delay = 1.0
        if delay and not self._stopping.is_set():
            log.info("%s: no broker node answered; next try (%s) in %.1f s", self.role,
                     self.nodes.name, delay)
            self._stopping.wait(delay)

    def _open(self) -> None:
        parameters = connection_parameters(self.settings, f"ocho-gateway {self.role}",
                                           self.nodes.url)
        self._connection = pika.BlockingConnection(parameters)
        channel = topology.declare(self._connection.channel(), self.settings.delivery_limit,
                                   self.settings.max_queued, self.settings.quorum_group_size,
                                   self.settings.stream_cluster_size)
        self._set_up(channel)
        self._channel = channel
        self._connected.set()
        self.last_error = ""
        log.info("%s: connected to broker node %s", self.role, self.nodes.name)

    def _close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._connected.clear()
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # noqa: BLE001, S110 - closing what is broken may fail; it is gone
                pass
