"""Slowloris: a thousand connections that trickle their headers or their bodies, one
byte every few seconds, do not lock anyone out of the gateway — /healthz and a
normal request still answer within a second meanwhile — and headers that take too
long are cut off. (The figures in the README come from bench/slowloris.py.)"""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from tests import infra

SLOW_CONNECTIONS = 1000
TRICKLE_S = 2.0
# Longer than the thousand connections' test takes, short enough to wait for once.
HEADER_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def stack(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[infra.Stack]:
    stack = infra.Stack(tmp_path_factory.mktemp("slow"), amqp_url,
                        header_timeout=HEADER_TIMEOUT_S)
    try:
        stack.start_gateway()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def many_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = SLOW_CONNECTIONS + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"needs {wanted} open files (ulimit -Hn is {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_slow(port: int, index: int) -> socket.socket:
    """Half stop in the middle of their headers, half in a declared 1 MB body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if index % 2:
        sock.sendall(b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    else:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 1000000\r\n\r\n{")
    sock.setblocking(False)
    return sock


def trickle(socks: list[socket.socket]) -> int:
    """One more byte on each; how many the server has closed."""
    closed = 0
    for sock in socks:
        try:
            sock.send(b"a")
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def timed_get(url: str) -> float:
    began = time.monotonic()
    response = requests.get(url, timeout=5)
    assert response.status_code == 200, response.text
    return time.monotonic() - began


def test_a_thousand_slow_connections_lock_nobody_out(stack: infra.Stack, many_files: None) -> None:
    paths = ("/healthz", "/healthz", "/jobs?limit=5", "/tools")
    for path in paths:
        timed_get(f"{stack.url}{path}")  # the first GET /tools runs each tool's --help
    socks = [open_slow(stack.port, index) for index in range(SLOW_CONNECTIONS)]
    try:
        slowest = 0.0, ""
        deadline = time.monotonic() + 2 * TRICKLE_S
        while time.monotonic() < deadline:  # two rounds of trickling, measuring between
            assert trickle(socks) == 0  # all still open, all still held by the server
            for path in paths:
                slowest = max(slowest, (timed_get(f"{stack.url}{path}"), path))
            time.sleep(TRICKLE_S)
        assert slowest[0] < 1.0, f"GET {slowest[1]} took {slowest[0]:.2f} s"
    finally:
        for sock in socks:
            sock.close()


def test_headers_that_trickle_for_too_long_are_cut_off(stack: infra.Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        began = time.monotonic()
        while time.monotonic() - began < HEADER_TIMEOUT_S + 5:
            try:
                sock.sendall(b"X-Slow: y\r\n")
            except OSError:
                break  # cut off
            if _closed(sock):
                break
            time.sleep(0.5)
        took = time.monotonic() - began
    assert HEADER_TIMEOUT_S <= took < HEADER_TIMEOUT_S + 5, f"cut off after {took:.1f} s"
    assert requests.get(f"{stack.url}/healthz", timeout=5).status_code == 200


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(100) == b""
    except TimeoutError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(5)
