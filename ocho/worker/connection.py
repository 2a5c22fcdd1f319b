"""A worker's broker connection, step by step (after pika's asynchronous consumer
example: one named method per step, each the callback of the one before):

    connect → on_connection_open → open_channel → on_channel_open
    → declare_topology → on_topology_declared → enable_confirms → on_confirms_enabled
    → set_qos → on_qos_set → open_control_channel → on_control_channel_open
    → consume_control → on_control_consuming → (the cancel log is read to its end:
    Routes.catch_up) → start_consuming

The connection is pika's asynchronous SelectConnection, owned by the main thread's
I/O loop (`serve`), which also keeps heartbeats flowing while jobs run for minutes;
other threads reach that loop only through `call_threadsafe`. The topology is
declared on the channel the worker then consumes with (ocho.topology.AsyncDeclare;
a queue that exists with other arguments is used as it is, on a new channel).

Invariants: `channel` is the main channel once it is ready (topology declared) and
None once the connection is gone; requests are consumed only once the cancel log
was read up to date, never while stopping. Losing either channel (or the
topology's declaration failing) closes the whole connection: without its main
channel the worker can neither report nor ack, without the cancel log it could
miss a cancel. The worker then starts over on the next broker node.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

import pika
import pika.channel

from ocho import topology
from ocho.amqp import Nodes, connection_parameters, describe
from ocho.settings import Settings
from ocho.worker.metrics import WorkerMetrics

log = logging.getLogger("ocho.worker")

OnMessage = Callable[[pika.channel.Channel, Any, Any, bytes], None]


@dataclasses.dataclass(frozen=True)
class Routes:
    """Where the connection hands what the broker sends."""
    on_request: OnMessage  # a delivery from ocho.jobs
    on_control: OnMessage  # a message of the cancel log
    on_confirm: Callable[[Any], None]  # a publisher confirm (Basic.Ack or Nack frame)
    on_returned: OnMessage  # a mandatory publish the broker could not route
    catch_up: Callable[[], None]  # both channels are ready: read the cancel log


class Connection:
    def __init__(self, settings: Settings, name: str, nodes: Nodes, metrics: WorkerMetrics,
                 stopping: threading.Event) -> None:
        self._settings = settings
        self._name = name
        self._nodes = nodes
        self._metrics = metrics
        self._stopping = stopping
        self._routes: Routes | None = None
        self._connection: pika.SelectConnection | None = None
        self._control: pika.channel.Channel | None = None
        self._consumer_tag: str | None = None
        self.channel: pika.channel.Channel | None = None
        self.opened = False  # whether the current connection got as far as open
        self._consuming = False

    # -- one connection's life ---------------------------------------------------------------
    def connect(self, routes: Routes) -> None:
        """Start connecting to the current node; `serve` then runs until it has closed."""
        self._routes = routes
        self.opened = False
        self._consumer_tag = None
        parameters = connection_parameters(self._settings, f"ocho-worker {self._name}",
                                           self._nodes.url)
        parameters.heartbeat = self._settings.heartbeat
        parameters.socket_timeout = 10
        self._connection = pika.SelectConnection(
            parameters,
            on_open_callback=self.on_connection_open,
            on_open_error_callback=self.on_connection_failed,
            on_close_callback=self.on_connection_closed,
        )

    def serve(self) -> None:
        """Run the I/O loop until the connection has closed."""
        assert self._connection is not None
        self._connection.ioloop.start()
        self.forget()

    def forget(self) -> None:
        """The connection is over: nothing may use it any more."""
        self._connection = None
        self.channel = None
        self._consuming = False

    def on_connection_failed(self, connection: pika.SelectConnection, error: Any) -> None:
        log.warning("worker %s: cannot connect to the broker (%s)", self._name, describe(error))
        connection.ioloop.stop()

    def on_connection_closed(self, connection: pika.SelectConnection, reason: Any) -> None:
        self._metrics.disconnected()
        if not self._stopping.is_set():
            log.warning("worker %s: broker connection lost (%s); reconnecting", self._name,
                        describe(reason))
        self.channel = None
        connection.ioloop.stop()

    def on_connection_open(self, connection: pika.SelectConnection) -> None:
        self.opened = True
        log.info("worker %s: connected to broker node %s", self._name, self._nodes.name)
        self._metrics.connected()
        self.open_channel(connection)

    # -- the main channel: requests in, events out -------------------------------------------
    def open_channel(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self.on_channel_open)

    def on_channel_open(self, channel: pika.channel.Channel) -> None:
        self.declare_topology(channel)

    def declare_topology(self, channel: pika.channel.Channel) -> None:
        settings = self._settings
        declarations = topology.declarations(
            settings.delivery_limit, settings.max_queued, settings.quorum_group_size,
            settings.stream_cluster_size)
        topology.AsyncDeclare(channel, declarations, on_done=self.on_topology_declared,
                              on_failed=self.on_channel_closed).start()

    def on_topology_declared(self, channel: pika.channel.Channel) -> None:
        assert self._routes is not None
        self.channel = channel
        channel.add_on_close_callback(self.on_channel_closed)
        channel.add_on_return_callback(self._routes.on_returned)
        self.enable_confirms(channel)

    def enable_confirms(self, channel: pika.channel.Channel) -> None:
        assert self._routes is not None
        channel.confirm_delivery(ack_nack_callback=self._routes.on_confirm,
                                 callback=self.on_confirms_enabled)

    def on_confirms_enabled(self, _frame: Any) -> None:
        self.set_qos()

    def set_qos(self) -> None:
        assert self.channel is not None
        self.channel.basic_qos(prefetch_count=self._settings.concurrency,
                               callback=self.on_qos_set)

    def on_qos_set(self, _frame: Any) -> None:
        self.open_control_channel()

    def on_channel_closed(self, channel: pika.channel.Channel, reason: Any) -> None:
        # Without its channel the worker can neither report nor ack: start over.
        if self._connection is not None and self._connection.is_open:
            log.warning("worker %s: channel closed (%s); reconnecting", self._name,
                        describe(reason))
            self._connection.close()

    # -- the control channel: the cancel log -------------------------------------------------
    def open_control_channel(self) -> None:
        assert self._connection is not None
        self._connection.channel(on_open_callback=self.on_control_channel_open)

    def on_control_channel_open(self, control: pika.channel.Channel) -> None:
        # Without the cancel log a cancel could be missed: start over.
        control.add_on_close_callback(self.on_channel_closed)
        self._control = control
        control.basic_qos(prefetch_count=1000, callback=self.consume_control)

    def consume_control(self, _frame: Any) -> None:
        assert self._control is not None and self._routes is not None
        self._control.basic_consume(topology.CONTROL_LOG, self._routes.on_control,
                                    arguments={"x-stream-offset": "first"},
                                    callback=self.on_control_consuming)

    def on_control_consuming(self, _frame: Any) -> None:
        assert self._routes is not None
        self._routes.catch_up()

    # -- requests ----------------------------------------------------------------------------
    def start_consuming(self) -> None:
        if self._consuming or self.channel is None or self._stopping.is_set():
            return
        assert self._routes is not None
        self._consuming = True
        self._consumer_tag = self.channel.basic_consume(topology.JOBS_QUEUE,
                                                        self._routes.on_request)
        log.info("worker %s consuming %s with %d job slots", self._name, topology.JOBS_QUEUE,
                 self._settings.concurrency)

    def is_consuming(self) -> bool:
        return self._consuming

    def stop_consuming(self) -> None:
        """Take nothing new (running jobs go on)."""
        if self._consumer_tag is not None and self.channel is not None:
            self.channel.basic_cancel(self._consumer_tag)

    # -- the I/O loop ------------------------------------------------------------------------
    def is_usable(self) -> bool:
        """Whether the connection is opening or open (neither closing nor closed)."""
        connection = self._connection
        return connection is not None and not (connection.is_closing or connection.is_closed)

    def is_open(self) -> bool:
        return self._connection is not None and self._connection.is_open

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        assert self._connection is not None
        self._connection.ioloop.call_later(delay, callback)

    def call_threadsafe(self, callback: Callable[[], None]) -> None:
        """From any thread: run `callback` on the I/O thread (nothing once it is gone)."""
        connection = self._connection
        if connection is not None:
            connection.ioloop.add_callback_threadsafe(callback)

    def close(self) -> None:
        assert self._connection is not None
        self._connection.close()

    def drop(self) -> None:
        """Close a connection whose I/O loop was left by an exception, so that the broker
        hands its unacked requests to another worker at once."""
        connection = self._connection
        self.forget()
        if connection is None:
            return
        try:
            if connection.is_open:
                connection.close()
                connection.ioloop.call_later(5, connection.ioloop.stop)  # if no CloseOk
                connection.ioloop.start()  # until on_connection_closed stops it
        except Exception as exc:  # noqa: BLE001 - it is being dropped anyway
            log.debug("worker %s: closing a broken connection: %s", self._name, describe(exc))
