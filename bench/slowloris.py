"""How fast the gateway answers while slow clients hold connections open.

    python bench/slowloris.py                      # 1000 slow connections, ~1 minute
    python bench/slowloris.py --connections 300 --max-connections 100   # waitress's old limit

It starts a gateway (no workers: what is measured is the HTTP side) against a vhost
and a SQLite store of its own, measures `/healthz` and a normal request (`GET
/tools`) one at a time on fresh connections, then opens the slow connections — half
trickle their headers, half declare a body and trickle it, one byte per connection
every `--interval` seconds — and measures again while they are open. It prints one
JSON line and a table row for the README. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import percentile  # noqa: E402
from ocho_stack import OchoStack  # noqa: E402

TIMEOUT_S = 5.0


class SlowClients:
    """`count` connections to 127.0.0.1:`port`, each sending one byte every `interval` s
    from one thread: half in their headers, half in a declared 1 MB body."""

    def __init__(self, port: int, count: int, interval: float) -> None:
        self.port, self.count, self.interval = port, count, interval
        self.sockets: list[socket.socket] = []
        self.closed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def open(self) -> SlowClients:
        for index in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT_S)
            sock.sendall(self._start(index))
            sock.setblocking(False)
            self.sockets.append(sock)
        self._thread.start()
        return self

    def _start(self, index: int) -> bytes:
        if index % 2:
            return b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        return (b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                b"\r\nContent-Length: 1000000\r\n\r\n{")

    def _trickle(self) -> None:
        while not self._stop.wait(self.interval):
            for sock in self.sockets:
                try:
                    sock.send(b"a")
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self.closed += 1  # the server closed it
                    sock.close()
            self.sockets = [sock for sock in self.sockets if sock.fileno() != -1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + TIMEOUT_S)
        for sock in self.sockets:
            sock.close()


def get_ms(port: int, path: str) -> float:
    """One GET on a fresh connection, in ms; TIMEOUT_S * 1000 if it did not answer."""
    began = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close"
                         "\r\n\r\n".encode())
            if not sock.recv(64).startswith(b"HTTP/1.1 200"):
                return TIMEOUT_S * 1000
    except OSError:
        return TIMEOUT_S * 1000
    return (time.perf_counter() - began) * 1000


def measure(port: int, requests: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    for name, path in (("healthz", "/healthz"), ("tools", "/tools")):
        times = []
        for _ in range(requests):
            times.append(get_ms(port, path))
            time.sleep(0.01)
        figures[f"{name}_p50_ms"] = round(percentile(times, 50), 1)
        figures[f"{name}_p99_ms"] = round(percentile(times, 99), 1)
        figures[f"{name}_failed"] = sum(1 for t in times if t >= TIMEOUT_S * 1000)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=3.0,
                        help="seconds between two bytes of one slow connection")
    parser.add_argument("--requests", type=int, default=200, help="measured GETs per figure")
    parser.add_argument("--max-connections", type=int, default=None,
                        help="the gateway's OCHO_MAX_CONNECTIONS (default: its own)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 512), hard))
    settings = {} if args.max_connections is None else {
        "max_connections": str(args.max_connections)}
    stack = OchoStack(workers=0, concurrency=1, **settings).start()
    clients = None
    try:
        quiet = measure(stack.port, args.requests)
        clients = SlowClients(stack.port, args.connections, args.interval).open()
        time.sleep(args.interval)  # every slow connection has sent a byte more
        attacked = measure(stack.port, args.requests)
        record = {"connections": args.connections, "interval_s": args.interval,
                  "max_connections": args.max_connections, "quiet": quiet,
                  "attacked": attacked, "slow_connections_closed": clients.closed}
    finally:
        if clients is not None:
            clients.close()
        stack.stop()
    print(json.dumps(record))
    print(f"| /healthz | {quiet['healthz_p50_ms']} / {quiet['healthz_p99_ms']} | "
          f"{attacked['healthz_p50_ms']} / {attacked['healthz_p99_ms']} "
          f"({attacked['healthz_failed']} failed) |")
    print(f"| GET /tools | {quiet['tools_p50_ms']} / {quiet['tools_p99_ms']} | "
          f"{attacked['tools_p50_ms']} / {attacked['tools_p99_ms']} "
          f"({attacked['tools_failed']} failed) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
