"""ocho over HTTP: POST /jobs, then GET /jobs/<id>?wait=… on a kept-alive connection —
what a CI pipeline does; and a 10 MB output read back with GET /jobs/<id>/output."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import TEN_MB, CpuMeter, latency, mb_per_s, throughput
from ocho_stack import OchoStack

WAIT_S = 30


class HttpClient:
    """Keep-alive HTTP/1.1, one connection per thread, with the standard library's
    http.client: requests costs the benchmark's own process ~7 ms of CPU per job,
    which on this 2-core machine is taken from the gateway and the tools."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self._local = threading.local()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              timeout: float = 30) -> tuple[int, dict[str, Any]]:
        status, _headers, raw = self._request(method, path, body, timeout)
        return status, json.loads(raw)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout: float = 30) -> tuple[int, http.client.HTTPMessage, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port,
                                                                     timeout=timeout)
            try:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                return response.status, response.headers, response.read()
            except (http.client.HTTPException, ConnectionError):
                conn.close()  # the server closed a kept-alive connection: once more
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def submit(self, tool: str, args: list[str] | None = None) -> str:
        status, job = self._call("POST", "/jobs", {"tool": tool, "args": args or []})
        if status != 202:
            raise RuntimeError(f"POST /jobs: {status} {job}")
        return str(job["id"])

    def wait(self, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            _, job = self._call("GET", f"/jobs/{job_id}?wait={WAIT_S}", timeout=WAIT_S + 10)
            if job["state"] not in ("queued", "running"):
                return job
        raise RuntimeError(f"job {job_id} did not end in 120 s")

    def run(self, tool: str) -> None:
        job = self.wait(self.submit(tool))
        if job["state"] != "succeeded":
            raise RuntimeError(f"job {job['id']}: {job['state']} {job.get('reason')}")

    def read_all_output(self, job_id: str) -> int:
        """Tail GET /jobs/<id>/output (long-polling for news) until the job finished and
        all of its output was read; the byte count."""
        offset, total = 0, 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            # Pages of the gateway's default size (1 MiB) as plain text, as a tailing
            # client that wants the bytes reads them.
            _, headers, data = self._request(
                "GET", f"/jobs/{job_id}/output?offset={offset}&wait={WAIT_S}&format=text",
                timeout=WAIT_S + 10)
            total += len(data)
            offset = int(headers["Ocho-Next-Offset"])
            if headers["Ocho-Finished"] == "true":
                return total
        raise RuntimeError(f"job {job_id}: output not read in 120 s")


def measure(cfg: Any, tool_start: str = "warm") -> dict[str, Any]:
    system = "ocho-http" if tool_start == "warm" else "ocho-http-cold"
    record: dict[str, Any] = {"system": system, "tool_start": tool_start, "slots": cfg.slots,
                              "client_threads": cfg.http_threads}
    stack = OchoStack(cfg.workers, cfg.concurrency, tool_start=tool_start)
    try:
        stack.start()
        record["worker_memory_idle"] = stack.worker_memory()
        client = HttpClient(stack.url)
        with ThreadPoolExecutor(cfg.http_threads) as pool:
            def once() -> float:
                started = time.perf_counter()
                for future in [pool.submit(client.run, "noop") for _ in range(cfg.jobs)]:
                    future.result()
                return time.perf_counter() - started

            once()  # warm-up: connections, .pyc files, SQLite pages
            meter = CpuMeter({"workers": stack.worker_pids, "gateway": [stack.gateway_pid]})
            meter.start()
            noop = throughput(once, cfg.jobs, cfg.rounds)
            noop["cpu_ms_per_job"] = meter.per_job_ms(cfg.jobs * cfg.rounds)
        noop.update(latency(lambda: client.run("noop"), cfg.seq))
        record["noop"] = noop
        record["worker_memory_after"] = stack.worker_memory()
        gateway_before = stack.gateway_memory()
        seconds, rss_after_each = [], []
        for _ in range(cfg.big_runs):
            started = time.perf_counter()
            size = client.read_all_output(client.submit("print10mb"))
            seconds.append(time.perf_counter() - started)
            rss_after_each.append(stack.gateway_memory()["rss_mb"])
            if size != TEN_MB:
                raise RuntimeError(f"print10mb: read {size} bytes back")
        big = mb_per_s(seconds)
        big["gateway_memory_before"] = gateway_before
        big["gateway_memory_after"] = stack.gateway_memory()
        big["gateway_rss_mb_after_each"] = rss_after_each
        record["print10mb"] = big
    finally:
        stack.stop()
    return record
