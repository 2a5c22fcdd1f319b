"""ocho over AMQP: jobs submitted with ocho.client.Client (publisher confirms), results
read from the client's reply queue — what another service does."""

from __future__ import annotations

import time
from typing import Any

from common import TEN_MB, CpuMeter, latency, mb_per_s, throughput, windowed
from ocho_stack import OchoStack

from ocho.client import Client


def measure(cfg: Any, tool_start: str = "warm", spares: bool = True) -> dict[str, Any]:
    system = "ocho-amqp" if tool_start == "warm" else "ocho-amqp-cold"
    system += "" if spares else "-no-spare"
    record: dict[str, Any] = {"system": system, "tool_start": tool_start, "slots": cfg.slots}
    stack = OchoStack(cfg.workers, cfg.concurrency, tool_start=tool_start,
                      **({} if spares else {"tool_spare_idle_s": "0"}))
    try:
        stack.start()
        record["worker_memory_idle"] = stack.worker_memory()
        with Client(stack.amqp_url) as client:
            def done(job_id: str) -> None:
                result = client.wait(job_id, timeout=120)
                if result.state != "succeeded":
                    raise RuntimeError(f"job {job_id}: {result.state} {result.reason}")

            def once() -> float:
                return windowed(lambda: client.submit("noop"), done, cfg.jobs, cfg.window)

            once()  # warm-up: connections, .pyc files, SQLite pages
            meter = CpuMeter({"workers": stack.worker_pids, "gateway": [stack.gateway_pid]})
            meter.start()
            noop = throughput(once, cfg.jobs, cfg.rounds)
            noop["cpu_ms_per_job"] = meter.per_job_ms(cfg.jobs * cfg.rounds)
            noop.update(latency(lambda: done(client.submit("noop")), cfg.seq))
            record["noop"] = noop
            seconds = []
            for _ in range(cfg.big_runs):
                started = time.perf_counter()
                result = client.wait(client.submit("print10mb"), timeout=120)
                seconds.append(time.perf_counter() - started)
                if len(result.output) != TEN_MB or result.truncated:
                    raise RuntimeError(f"print10mb gave {len(result.output)} bytes "
                                       f"(truncated: {result.truncated})")
            record["print10mb"] = mb_per_s(seconds)
        record["worker_memory_after"] = stack.worker_memory()
    finally:
        stack.stop()
    return record
