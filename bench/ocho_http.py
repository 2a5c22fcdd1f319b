"""ocho over HTTP: POST /jobs, then GET /jobs/<id>?wait=… on a keep-alive session —
what a CI pipeline does; and a 10 MB output read back with GET /jobs/<id>/output."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from common import TEN_MB, CpuMeter, latency, mb_per_s, throughput
from ocho_stack import OchoStack

WAIT_S = 30


class HttpClient:
    """One requests.Session per thread (a Session is not meant to be shared)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def submit(self, tool: str, args: list[str] | None = None) -> str:
        response = self.session.post(f"{self.url}/jobs", json={"tool": tool, "args": args or []},
                                     timeout=30)
        if response.status_code != 202:
            raise RuntimeError(f"POST /jobs: {response.status_code} {response.text}")
        return str(response.json()["id"])

    def wait(self, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = self.session.get(f"{self.url}/jobs/{job_id}", params={"wait": WAIT_S},
                                   timeout=WAIT_S + 10).json()
            if job["state"] not in ("queued", "running"):
                return job  # type: ignore[no-any-return]
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
            out = self.session.get(f"{self.url}/jobs/{job_id}/output",
                                   params={"offset": offset, "wait": WAIT_S,
                                           "limit": 16 * 1024 * 1024},
                                   timeout=WAIT_S + 10).json()
            total += len(out["data"])
            offset = out["next_offset"]
            if out["finished"]:
                return total
        raise RuntimeError(f"job {job_id}: output not read in 120 s")


def measure(cfg: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"system": "ocho-http", "slots": cfg.slots,
                              "client_threads": cfg.http_threads}
    stack = OchoStack(cfg.workers, cfg.concurrency)
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
        seconds = []
        for _ in range(cfg.big_runs):
            started = time.perf_counter()
            size = client.read_all_output(client.submit("print10mb"))
            seconds.append(time.perf_counter() - started)
            if size != TEN_MB:
                raise RuntimeError(f"print10mb: read {size} bytes back")
        big = mb_per_s(seconds)
        big["gateway_memory_before"] = gateway_before
        big["gateway_memory_after"] = stack.gateway_memory()
        record["print10mb"] = big
    finally:
        stack.stop()
    return record
