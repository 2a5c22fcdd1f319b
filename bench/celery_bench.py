"""Celery on the same broker (a vhost of its own), measured with the same harness.

Run by bench/run.py with Celery's venv interpreter; prints one JSON line. Two
`celery worker` processes with the prefork pool, -c <concurrency> each: Celery's
default pool and the one its users deploy (each task runs in a forked child; the
job body is the same Popen either way). Gossip, mingle and worker heartbeats are
off, which only takes load off the broker.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    PROJECT_PYTHON,
    TEN_MB,
    TOOLS_DIR,
    CpuMeter,
    Processes,
    amqp_url,
    create_vhost,
    delete_vhost,
    latency,
    mb_per_s,
    throughput,
    tree_memory_mb,
    wait_for,
    windowed,
)


def measure(cfg: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"system": "celery", "slots": cfg.slots, "pool": cfg.celery_pool}
    vhost = create_vhost("celery")
    tmp = tempfile.TemporaryDirectory(prefix="ocho-bench-celery-")
    processes = Processes(Path(tmp.name))
    try:
        broker = amqp_url(vhost)
        env = {**os.environ, "BENCH_CELERY_BROKER": broker,
               "BENCH_TOOL_PYTHON": str(PROJECT_PYTHON), "BENCH_TOOLS_DIR": str(TOOLS_DIR)}
        celery = str(Path(sys.executable).parent / "celery")
        pids = []
        for index in range(cfg.workers):
            log = f"celery{index}.log"
            proc = processes.spawn(
                [celery, "-A", "celery_app", "worker", "-P", cfg.celery_pool,
                 "-c", str(cfg.concurrency), "-n", f"w{index}@%h", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
                log, env, cwd=Path(__file__).resolve().parent)
            wait_for(lambda log=log, proc=proc: " ready." in processes.log(log)
                     or proc.poll() is not None, 60, f"{log}: ready")
            if proc.poll() is not None:
                raise RuntimeError(f"celery worker exited: {processes.log(log)[-2000:]}")
            pids.append(proc.pid)
        record["worker_memory_idle"] = tree_memory_mb(pids)
        os.environ["BENCH_CELERY_BROKER"] = broker  # read when celery_app is imported
        import celery_app

        task = celery_app.run_tool

        def done(result: Any) -> dict[str, Any]:
            value = result.get(timeout=120)
            if value["exit_code"] != 0:
                raise RuntimeError(f"task: {value}")
            return value  # type: ignore[no-any-return]

        def once() -> float:
            return windowed(lambda: task.apply_async(("noop", [])), done, cfg.jobs, cfg.window)

        once()  # warm-up
        meter = CpuMeter({"workers": [p for pid in pids for p in _tree(pid)]})
        meter.start()
        noop = throughput(once, cfg.jobs, cfg.rounds)
        noop["cpu_ms_per_job"] = meter.per_job_ms(cfg.jobs * cfg.rounds)
        noop.update(latency(lambda: done(task.apply_async(("noop", []))), cfg.seq))
        record["noop"] = noop
        seconds = []
        for _ in range(cfg.big_runs):
            started = time.perf_counter()
            value = done(task.apply_async(("print10mb", [])))
            seconds.append(time.perf_counter() - started)
            if len(value["stdout"]) != TEN_MB:
                raise RuntimeError(f"print10mb gave {len(value['stdout'])} bytes")
        record["print10mb"] = mb_per_s(seconds)
        record["worker_memory_after"] = tree_memory_mb(pids)
    finally:
        try:
            processes.stop()
        finally:
            delete_vhost(vhost)
            tmp.cleanup()
    return record


def _tree(pid: int) -> list[int]:
    from common import descendants

    return descendants(pid)


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("jobs", "window", "seq", "rounds", "big_runs", "workers", "concurrency"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, required=True)
    parser.add_argument("--celery-pool", default="prefork")
    cfg = parser.parse_args()
    cfg.slots = cfg.workers * cfg.concurrency
    from common import dump

    try:
        print(dump(measure(cfg)), flush=True)
    except KeyboardInterrupt:
        return 130  # measure() has stopped its workers and deleted its vhost
    return 0


if __name__ == "__main__":
    sys.exit(main())
