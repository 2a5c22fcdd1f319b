"""A RabbitMQ node of a test's own, for tests that stop, kill or restart a broker.

Invariants:
- the node has its own name (`ocho-test-<pid>-<n>@localhost`), its own AMQP and
  distribution ports, its own data, log and config files and Erlang cookie, all
  under one directory the caller owns; it listens on 127.0.0.1 only and runs no
  plugin;
- every command here names that node (`-n`) and carries that cookie (HOME), so
  nothing here can reach, stop or reconfigure the machine's shared broker;
- the ports are picked below the kernel's ephemeral range, where no other
  process (e.g. a `rabbitmqctl` of someone else, which takes a dynamic port for
  its own distribution) can be handed them while the node starts.

Several nodes may share a cookie (pass the same `cookie`) to form a cluster.
"""

from __future__ import annotations

import itertools
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pika

from tests.infra import processes_in_group

# Debian's /usr/sbin scripts switch to the `rabbitmq` user (and its cookie and
# environment file); the scripts they wrap run as the caller, with our environment.
RABBITMQ_BIN = Path(os.environ.get("OCHO_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
# Below 32768 (Linux's default ephemeral range) and away from 4369 (epmd) and
# 5672/25672 (the shared node).
PORT_RANGE = (20000, 32000)
SHARED_PORTS = {25672}
_counter = itertools.count(1)


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As Erlang binds: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(taken: tuple[int, ...] = ()) -> int:
    """A loopback port that nobody listens on, outside the ephemeral range."""
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        if port not in taken and port not in SHARED_PORTS and _port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


class PrivateBroker:
    """One RabbitMQ node in `base`; start() it, then stop_app/start_app/kill/close it."""

    def __init__(self, base: Path, cookie: str | None = None, name: str | None = None) -> None:
        self.base = base
        self.node = name or f"ocho-test-{os.getpid()}-{next(_counter)}@localhost"
        self.cookie = cookie or secrets.token_hex(20).upper()
        self.amqp_port = 0
        self.dist_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        base.mkdir(parents=True, exist_ok=True)
        self._write_home()

    # -- files ---------------------------------------------------------------------------
    def _write_home(self) -> None:
        cookie = self.base / ".erlang.cookie"
        if cookie.exists():
            cookie.chmod(0o600)
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)  # Erlang refuses a cookie others may read
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")

    def _write_config(self) -> None:
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            "loopback_users.guest = true\n")

    def env(self) -> dict[str, str]:
        """The environment both the server and the CLI run with."""
        base = str(self.base)
        return {
            **os.environ,
            "HOME": base,  # where both read .erlang.cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": f"{base}/rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": f"{base}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{base}/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{base}/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": f"{base}/mnesia",
            "RABBITMQ_LOG_BASE": f"{base}/log",
            "RABBITMQ_PID_FILE": f"{base}/node.pid",
            "ERL_CRASH_DUMP": f"{base}/erl_crash.dump",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    # -- life cycle ----------------------------------------------------------------------
    def start(self, timeout: float = 90) -> PrivateBroker:
        """Start the node (on new ports the first time; on the same ones after a kill)."""
        attempts = 3 if not self.amqp_port else 1
        for attempt in range(attempts):
            if not self.amqp_port or attempt:
                self.amqp_port = pick_port()
                self.dist_port = pick_port((self.amqp_port,))
            self._write_config()
            if self._launch(timeout):
                return self
        raise RuntimeError(f"RabbitMQ node {self.node} did not start:\n{self.log_tail()}")

    def _launch(self, timeout: float) -> bool:
        with open(self.base / "server.out", "ab") as out:
            self.process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")], env=self.env(), cwd=self.base,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        # Polling the AMQP port is cheap; each CLI call starts an Erlang VM.
        while not self._amqp_answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._kill_group()
                return False
            time.sleep(0.2)
        self.ctl("await_startup", "--timeout", str(int(timeout)))
        return True

    def _ports_free(self) -> bool:
        return all(_port_is_free(port) for port in (self.amqp_port, self.dist_port) if port)

    def _amqp_answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.amqp_port), timeout=1):
                return True
        except OSError:
            return False

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """rabbitmqctl against this node only."""
        done = subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-q", "-n", self.node, *args],
                              env=self.env(), cwd=self.base, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.node} failed: "
                               f"{done.stderr or done.stdout}")
        return done.stdout

    def stop_app(self) -> None:
        """The broker goes away (connections closed, port shut); the VM stays."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")

    def kill(self) -> None:
        """The node dies at once, as in a crash: SIGKILL to its whole process group."""
        self._kill_group()

    def close(self) -> None:
        """Stop the node for good; its directory stays for the caller to remove."""
        if self.process is None or self.process.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        self._kill_group()

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def _kill_group(self) -> None:
        """SIGKILL the group and wait until its ports are free: the shell script is the
        group leader, the VM its child, and the VM's threads outlive its main one (which
        shows as a zombie meanwhile)."""
        if self.process is None:
            return
        self._signal_group(signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 30
        while processes_in_group(self.process.pid) or not self._ports_free():
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ node {self.node} outlived SIGKILL")
            time.sleep(0.05)

    # -- what tests use ------------------------------------------------------------------
    def url(self, vhost: str = "%2F") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/{vhost}"

    def create_vhost(self) -> str:
        """A fresh vhost on this node, for a test that must start from empty queues."""
        name = f"ocho-test-{secrets.token_hex(6)}"
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return self.url(name)

    def log_tail(self, chars: int = 4000) -> str:
        logs = sorted((self.base / "log").glob("*.log")) + [self.base / "server.out"]
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
                         for p in logs if p.exists())


@contextmanager
def private_broker(base: Path, **kwargs: str) -> Iterator[PrivateBroker]:
    """A started node, closed and its files removed on exit."""
    node = PrivateBroker(base, **kwargs)
    try:
        yield node.start()
    finally:
        node.close()
        shutil.rmtree(base, ignore_errors=True)


def shared_broker_uptime_ms() -> int:
    """How long the machine's shared node's VM has run: read-only, through Debian's wrapper."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", "eval", "element(1, erlang:statistics(wall_clock))."],
        capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout.strip())


def open_shared_connection(url: str) -> pika.BlockingConnection:
    """A connection to the shared broker with no heartbeat, so it survives idling
    through a whole module: if it is still open afterwards, the broker never stopped."""
    params = pika.URLParameters(url)
    params.heartbeat = 0
    return pika.BlockingConnection(params)
