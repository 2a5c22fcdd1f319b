"""What every benchmark shares: vhosts, processes, memory and CPU readings, timing.

Standard library only, so the Celery client (which runs in Celery's own venv)
uses the very same harness as the others.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TOOLS_DIR = BENCH / "tools"
PROJECT_VENV = ROOT / ".venv"
PROJECT_PYTHON = PROJECT_VENV / "bin" / "python"
BROKER = "127.0.0.1:5672"
MIB = 1024 * 1024
TEN_MB = 10 * MIB


# -- RabbitMQ vhosts ------------------------------------------------------------------------


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def create_vhost(kind: str) -> str:
    """A fresh vhost (its name), with all rights for guest."""
    name = f"ocho-bench-{kind}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return name


def delete_vhost(name: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)


def amqp_url(vhost: str) -> str:
    return f"amqp://guest:guest@{BROKER}/{vhost}"


# -- processes: memory and CPU from /proc ---------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def live_children() -> dict[int, list[int]]:
    """Every live (not zombie) process, by its parent's pid."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children[int(fields[1])].append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """pid and every live process below it."""
    children = live_children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def memory_mb(pids: list[int]) -> dict[str, float]:
    """Summed VmRSS (counts pages shared after fork once per process) and PSS (each
    shared page split between its sharers: the memory the processes really cost)."""
    rss = sum(_status_kib(pid, "VmRSS") for pid in pids)
    pss = sum(_pss_kib(pid) for pid in pids)
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1),
            "processes": len(pids)}


def tree_memory_mb(roots: list[int]) -> dict[str, float]:
    pids = [p for root in roots for p in descendants(root)]
    return memory_mb(pids)


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of the process (and of its reaped children, with `children`)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def broker_pid() -> int | None:
    """RabbitMQ's Erlang VM: the largest beam.smp (rabbitmqctl runs a small one too)."""
    found: list[tuple[int, int]] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    found.append((_status_kib(int(entry.name), "VmRSS"), int(entry.name)))
            except OSError:
                continue
    return max(found)[1] if found else None


class CpuMeter:
    """CPU seconds used by named processes (and this one) over a stretch of time."""

    def __init__(self, named: dict[str, list[int]]) -> None:
        self.named = dict(named)
        broker = broker_pid()
        if broker:
            self.named["broker"] = [broker]
        self._start: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        now = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.named.items()}
        times = os.times()
        now["client"] = times.user + times.system
        # Tools: the reaped children of this process and of the named ones, and what
        # their live children (a worker's tool zygote and its reaped middle processes:
        # the forks of warm starts) used so far.
        children = live_children()
        now["tools"] = times.children_user + times.children_system + sum(
            cpu_seconds(pid, children=True) - cpu_seconds(pid)
            + sum(cpu_seconds(child, children=True) for child in children.get(pid, ()))
            for pids in self.named.values() for pid in pids)
        return now

    def start(self) -> None:
        self._start = self._read()

    def per_job_ms(self, jobs: int) -> dict[str, float]:
        end = self._read()
        return {name: round((end[name] - self._start.get(name, 0.0)) * 1000 / jobs, 2)
                for name in end}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Processes:
    """Long-running processes a benchmark started; all stopped on exit, even on Ctrl-C."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, command: list[str], log_name: str, env: dict[str, str],
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with open(self.logdir / log_name, "ab") as log:
            # A session of its own: a Ctrl-C meant for the benchmark reaches it only
            # through stop(), in order, so nothing is left half-stopped.
            proc = subprocess.Popen(command, cwd=cwd or self.logdir, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, log_name: str) -> str:
        path = self.logdir / log_name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, grace: float = 15.0) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait()


# -- measuring -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency(one: Callable[[], None], count: int, warmup: int = 5) -> dict[str, float]:
    """One job at a time: p50/p99/mean of `count` jobs, after `warmup` uncounted ones."""
    for _ in range(warmup):
        one()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        one()
        samples.append((time.perf_counter() - started) * 1000)
    return {"seq_jobs": count, "p50_ms": round(percentile(samples, 50), 2),
            "p99_ms": round(percentile(samples, 99), 2),
            "mean_ms": round(statistics.fmean(samples), 2)}


def windowed(submit: Callable[[], Any], wait: Callable[[Any], None], jobs: int,
             window: int) -> float:
    """Keep `window` jobs in flight until `jobs` finished; returns seconds taken.
    Waits on the oldest first (FIFO), which is what each system's queue does."""
    started = time.perf_counter()
    in_flight: collections.deque[Any] = collections.deque()
    submitted = 0
    while submitted < jobs or in_flight:
        while submitted < jobs and len(in_flight) < window:
            in_flight.append(submit())
            submitted += 1
        wait(in_flight.popleft())
    return time.perf_counter() - started


def throughput(run_once: Callable[[], float], jobs: int, rounds: int) -> dict[str, Any]:
    """Median jobs/s over `rounds` runs of `jobs` jobs each."""
    rates = [jobs / run_once() for _ in range(rounds)]
    return {"jobs": jobs, "rounds": rounds, "jobs_per_s": round(statistics.median(rates), 1),
            "jobs_per_s_all": [round(r, 1) for r in rates]}


def mb_per_s(seconds: list[float], size: int = TEN_MB) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {"mb": round(size / MIB, 1), "runs": len(seconds),
            "seconds": round(median, 3), "mb_per_s": round(size / MIB / median, 1)}


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    print(f"  … {label}: {time.perf_counter() - started:.1f} s", flush=True,
          file=__import__("sys").stderr)


def dump(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(", ", ": "))
