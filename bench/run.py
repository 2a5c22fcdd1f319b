"""Benchmark ocho against the raw job body and Celery, in one command:

    python bench/run.py [--jobs N] [--quick] [--only raw-popen,ocho-amqp,...]

ocho-amqp and ocho-http start tools warm (the default, OCHO_TOOL_START=warm);
ocho-amqp-cold and ocho-http-cold start a new interpreter per job; ocho-amqp-no-spare
starts them warm without spares (OCHO_TOOL_SPARE_IDLE_S=0: each tool forked when its
job comes).

Every system gets a RabbitMQ vhost of its own on 127.0.0.1:5672 (deleted afterwards,
also on Ctrl-C), 2 workers × 2 job slots, and the tools in bench/tools. Prints one
JSON line per system (ratios to the raw floor included), then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PROJECT_PYTHON = ROOT / ".venv" / "bin" / "python"
CELERY_VENV = BENCH / ".venv-celery"
CELERY_REQUIREMENT = "celery>=5.4,<6"
SYSTEMS = ("raw-popen", "raw-fork", "raw-runner", "ocho-amqp", "ocho-amqp-no-spare",
           "ocho-amqp-cold", "ocho-http", "ocho-http-cold", "celery", "tool-ls")
FLOOR = "raw-popen"

# Checked against the floor measured in the same run: issue 15's for warm starts,
# issue 7's for cold ones.
TARGETS = {
    "ocho-amqp": {"throughput": 1.5, "p50_plus_ms": 0.0},
    "ocho-http": {"throughput": 1.2, "p50_plus_ms": 3.0},
    "ocho-amqp-cold": {"throughput": 0.85, "p50_plus_ms": 3.0},
    "ocho-http-cold": {"throughput": 0.75, "p50_plus_ms": 5.0},
}
TARGET_VS_CELERY = 1.5
TARGET_MB_PER_S = 50.0
TARGET_IDLE_RSS_MB = 60.0


def _in_project_venv() -> None:
    """`python bench/run.py` with any python: carry on in the project's venv."""
    if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve():
        return
    if not PROJECT_PYTHON.exists():
        sys.exit(f"bench: {PROJECT_PYTHON} is missing; run `make install` (or `make bench`) first")
    os.execv(str(PROJECT_PYTHON), [str(PROJECT_PYTHON), *sys.argv])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, help="jobs per throughput round (200; quick: 100)")
    parser.add_argument("--window", type=int, default=16, help="jobs in flight (16)")
    parser.add_argument("--seq", type=int, help="sequential jobs for latency (100; quick: 30)")
    parser.add_argument("--rounds", type=int, help="throughput rounds, median kept (3; quick: 1)")
    parser.add_argument("--big-runs", type=int, help="10 MB jobs, median kept (3; quick: 1)")
    parser.add_argument("--http-threads", type=int, default=12,
                        help="HTTP client threads, each with one job in flight (12: the "
                        "long-poll slots of a gateway with its default 16 threads)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2, help="job slots per worker")
    parser.add_argument("--celery-pool", default="prefork", choices=("prefork", "threads"))
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure everything N times, interleaved, and report for each "
                        "system the repetition with the median ratio to the floor measured "
                        "just before it (1; the README's tables use 3): the machine's speed "
                        "drifts over minutes")
    parser.add_argument("--kubeconfig", help="tool-ls: the API server to list from (default: "
                        "the tool tests' emulator, which kubectl may not talk to)")
    parser.add_argument("--quick", action="store_true", help="fewer jobs: under 2 minutes")
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    cfg = parser.parse_args(argv)
    quick = cfg.quick
    cfg.jobs = cfg.jobs or (100 if quick else 200)
    cfg.seq = cfg.seq or (30 if quick else 100)
    cfg.rounds = cfg.rounds or (1 if quick else 3)
    cfg.big_runs = cfg.big_runs or (1 if quick else 3)
    cfg.slots = cfg.workers * cfg.concurrency
    cfg.only = [s for s in cfg.only.split(",") if s]
    unknown = set(cfg.only) - set(SYSTEMS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    return cfg


# -- Celery in a venv of its own --------------------------------------------------------------


def celery_python() -> Path:
    python = CELERY_VENV / "bin" / "python"
    if not (CELERY_VENV / "bin" / "celery").exists():
        print(f"creating {CELERY_VENV} with {CELERY_REQUIREMENT} …", file=sys.stderr, flush=True)
        base = getattr(sys, "_base_executable", None) or "python3"
        subprocess.run([base, "-m", "venv", str(CELERY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", CELERY_REQUIREMENT],
                       check=True)
    return python


def run_celery(cfg: argparse.Namespace) -> dict[str, Any]:
    command = [str(celery_python()), str(BENCH / "celery_bench.py"), "--jobs", str(cfg.jobs),
               "--window", str(cfg.window), "--seq", str(cfg.seq), "--rounds", str(cfg.rounds),
               "--big-runs", str(cfg.big_runs), "--workers", str(cfg.workers),
               "--concurrency", str(cfg.concurrency), "--celery-pool", cfg.celery_pool]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=600)
    except BaseException:
        # Let it clean up (its workers, its vhost) rather than kill it outright.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"the Celery benchmark failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- the run ------------------------------------------------------------------------------------


def measure(system: str, cfg: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH))
    if system.startswith("raw-"):
        import raw

        return raw.measure(cfg, system.removeprefix("raw-"))
    if system == "tool-ls":
        import tool_latency

        return tool_latency.measure(cfg)
    start = "cold" if system.endswith("-cold") else "warm"
    if system.startswith("ocho-amqp"):
        import ocho_amqp

        return ocho_amqp.measure(cfg, start, spares=not system.endswith("-no-spare"))
    if system.startswith("ocho-http"):
        import ocho_http

        return ocho_http.measure(cfg, start)
    return run_celery(cfg)


def compare(record: dict[str, Any], floor: dict[str, Any] | None) -> None:
    if floor is None or record is floor or "noop" not in record:
        return
    noop, base = record["noop"], floor["noop"]
    record["vs_raw"] = {
        "throughput": round(noop["jobs_per_s"] / base["jobs_per_s"], 3),
        "p50_plus_ms": round(noop["p50_ms"] - base["p50_ms"], 2),
        "p99_plus_ms": round(noop["p99_ms"] - base["p99_ms"], 2),
        "mb_per_s": round(record["print10mb"]["mb_per_s"] / floor["print10mb"]["mb_per_s"], 3),
    }


def median_run(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """Of one system's repetitions, the one with the median throughput ratio (the
    floor: median jobs/s), carrying every repetition's ratio for the record."""
    def key(record: dict[str, Any]) -> float:
        if "noop" not in record:  # tool-ls: by its warm p50
            return float(record["ls_warm"]["p50_ms"])
        return float(record["vs_raw"]["throughput"] if "vs_raw" in record
                     else record["noop"]["jobs_per_s"])

    chosen = sorted(measured, key=key)[(len(measured) - 1) // 2]
    if len(measured) > 1:
        chosen["throughput_ratio_all"] = [record.get("vs_raw", {}).get("throughput")
                                          for record in measured]
    return chosen


def _mem(record: dict[str, Any], key: str) -> str:
    memory = record.get(key)
    return f"{memory['rss_mb']:.0f}/{memory['pss_mb']:.0f}" if memory else "-"


def table(records: list[dict[str, Any]]) -> str:
    header = ("system", "jobs/s", "×raw", "p50 ms", "+raw", "p99 ms", "10MB MB/s",
              "RSS/PSS idle", "RSS/PSS after", "cpu ms/job w/g/b")
    rows = [header]
    for r in (r for r in records if "noop" in r):
        noop, vs = r["noop"], r.get("vs_raw", {})
        cpu = noop.get("cpu_ms_per_job", {})
        rows.append((
            r["system"], f"{noop['jobs_per_s']:.0f}",
            f"{vs['throughput']:.2f}" if vs else "1", f"{noop['p50_ms']:.1f}",
            f"{vs['p50_plus_ms']:+.1f}" if vs else "0", f"{noop['p99_ms']:.1f}",
            f"{r['print10mb']['mb_per_s']:.0f}", _mem(r, "worker_memory_idle"),
            _mem(r, "worker_memory_after"),
            "/".join(f"{cpu.get(k, 0):.1f}" for k in ("workers", "gateway", "broker"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def verdicts(records: dict[str, dict[str, Any]], workers: int) -> list[str]:
    lines = []
    for system, target in TARGETS.items():
        r = records.get(system)
        if r is None or "vs_raw" not in r:
            continue
        vs = r["vs_raw"]
        lines.append(f"{system}: throughput {vs['throughput']:.2f} × raw (target "
                     f"≥ {target['throughput']}) {_ok(vs['throughput'] >= target['throughput'])}"
                     f"; p50 raw {vs['p50_plus_ms']:+.1f} ms (target ≤ +{target['p50_plus_ms']:g})"
                     f" {_ok(vs['p50_plus_ms'] <= target['p50_plus_ms'])}")
    amqp, celery = records.get("ocho-amqp"), records.get("celery")
    if amqp and celery:
        ratio = amqp["noop"]["jobs_per_s"] / celery["noop"]["jobs_per_s"]
        lines.append(f"ocho-amqp vs celery throughput: {amqp['noop']['jobs_per_s']:.0f} vs "
                     f"{celery['noop']['jobs_per_s']:.0f} jobs/s = {ratio:.2f} × (target ≥ "
                     f"{TARGET_VS_CELERY:g}) {_ok(ratio >= TARGET_VS_CELERY)}")
    http = records.get("ocho-http")
    if http:
        big = http["print10mb"]
        grew = big["gateway_memory_after"]["rss_mb"] - big["gateway_memory_before"]["rss_mb"]
        lines.append(f"ocho-http 10 MB to the store and back: {big['mb_per_s']:.0f} MB/s "
                     f"(target ≥ {TARGET_MB_PER_S:g}) {_ok(big['mb_per_s'] >= TARGET_MB_PER_S)}"
                     f"; gateway RSS {big['gateway_memory_before']['rss_mb']:.0f} → "
                     f"{big['gateway_memory_after']['rss_mb']:.0f} MB ({grew:+.0f} MB over "
                     f"{big['runs']} × 10 MB)")
    for system in ("ocho-amqp", "ocho-http", "ocho-amqp-cold", "ocho-http-cold"):
        r = records.get(system)
        if r:
            idle = r["worker_memory_idle"]
            rss, pss = idle["rss_mb"] / workers, idle["pss_mb"] / workers
            # PSS as well: the reaper and the zygote share pages with the worker and tools.
            lines.append(f"{system} idle worker: RSS {rss:.0f} MB (PSS {pss:.0f} MB) per worker "
                         f"incl. its reaper and tool zygote (target ≤ {TARGET_IDLE_RSS_MB:g} "
                         f"RSS) {_ok(rss <= TARGET_IDLE_RSS_MB)}")
    if "tool-ls" in records:
        import tool_latency

        lines.append(tool_latency.verdict(records["tool-ls"]))
    return lines


def _ok(passed: bool) -> str:
    return "MET" if passed else "NOT MET"


def main(argv: list[str] | None = None) -> int:
    _in_project_venv()
    cfg = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    print(f"# {cfg.workers} workers × {cfg.concurrency} slots; {cfg.jobs} noop jobs × "
          f"{cfg.rounds} round(s), {cfg.window} in flight ({cfg.http_threads} HTTP threads); "
          f"{cfg.seq} sequential; {cfg.big_runs} × 10 MB; OCHO_OUTPUT_CAP=16777216",
          file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"# warning: load average {load:.1f} before the run: other work shares these "
              f"{os.cpu_count()} cores and moves the figures", file=sys.stderr, flush=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for repetition in range(1, cfg.repeat + 1):
            floor: dict[str, Any] | None = None
            for system in SYSTEMS:
                if system not in cfg.only:
                    continue
                print(f"# {system} …" + (f" (repetition {repetition})" if cfg.repeat > 1
                                         else ""), file=sys.stderr, flush=True)
                load = os.getloadavg()[0]
                record = measure(system, cfg)
                # Anything else running takes CPU from the tools and the portal alike,
                # but not in the same proportion: ratios from a busy machine mislead.
                record["loadavg_1m_before"] = round(load, 2)
                record["repetition"] = repetition
                if system == FLOOR:
                    floor = record
                compare(record, floor)
                runs.setdefault(system, []).append(record)
                print(json.dumps(record), flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopped what was started and deleted the vhosts", file=sys.stderr)
        return 130
    records = {system: median_run(measured) for system, measured in runs.items()}
    print()
    if any("noop" in record for record in records.values()):
        print(table(list(records.values())))
    print()
    for line in verdicts(records, cfg.workers):
        print(line)
    print(f"# {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
