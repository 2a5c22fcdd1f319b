"""What every process that holds a broker connection shares (the gateway's publisher
and recorder, the worker): how to connect, which errors mean the connection is gone,
and how long to wait before trying again."""

from __future__ import annotations

import threading

import pika
import pika.exceptions

from ocho.settings import Settings

# What means "this connection or channel is unusable now": reconnect. (A publisher
# catches UnroutableError and NackError, which are AMQPErrors too, before these.)
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)


def connection_parameters(settings: Settings, name: str) -> pika.URLParameters:
    """Parameters for a connection shown in RabbitMQ as `name`."""
    parameters = pika.URLParameters(settings.first_amqp_url)
    if "heartbeat" not in settings.first_amqp_url:
        parameters.heartbeat = settings.heartbeat
    # A broker under a memory or disk alarm blocks publishers; give up instead of
    # hanging the thread forever, so the gateway can say the broker is unavailable.
    parameters.blocked_connection_timeout = 30
    parameters.connection_attempts = 1
    parameters.socket_timeout = 5
    parameters.client_properties = {"connection_name": name}
    return parameters


def describe(exc: BaseException) -> str:
    """A one-line reason for logs and for /readyz."""
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:300]


class Backoff:
    """Waits 0.5 s, 1 s, 2 s … up to `most` between reconnects; a stop ends the wait."""

    def __init__(self, first: float = 0.5, most: float = 15.0) -> None:
        self._first = first
        self._most = most
        self.delay = first

    def wait(self, stopping: threading.Event) -> None:
        stopping.wait(self.delay)
        self.delay = min(self.delay * 2, self._most)

    def reset(self) -> None:
        self.delay = self._first

    def step(self) -> float:
        """The delay to wait now, for a caller that waits its own way; the next doubles."""
        delay = self.delay
        self.delay = min(self.delay * 2, self._most)
        return delay
