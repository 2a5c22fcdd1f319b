"""The physical floor: the job body with no queue, in as many threads as the workers
have slots in all.

Two bodies are measured:
- `raw-popen`: bench/jobbody.py — mkdtemp, copy the tool, Popen (-P, the worker's
  allow-listed environment, a session of its own), communicate(), rmtree. The floor.
- `raw-fork`: the same body, with the tool forked by a tool zygote (ocho/worker/zygote.py:
  a warm interpreter, with the tools' runtime imported once) instead of a new
  interpreter. The floor of a warm start.
- `raw-runner`: ocho.worker.runner.run with an emit that only counts — the worker's own
  code path (selector loop, output batching, rlimits, process-group kill), without
  AMQP, starting tools cold. The gap between it and raw-popen is the runner's own cost.
"""

from __future__ import annotations

import functools
import os
import selectors
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import PROJECT_PYTHON, TEN_MB, TOOLS_DIR, CpuMeter, latency, mb_per_s, throughput
from common import windowed as run_windowed
from jobbody import run_job


def _popen_body(tool: str, args: tuple[str, ...] = ()) -> int:
    code, out, _err, _secs = run_job(str(PROJECT_PYTHON), str(TOOLS_DIR), tool, args)
    if code != 0:
        raise RuntimeError(f"{tool} exited {code}")
    return len(out)


@functools.cache
def _zygote() -> Any:
    from ocho.settings import Settings
    from ocho.worker import runner
    from ocho.worker.zygote import Zygote

    zygote = Zygote(runner.zygote_environment(Settings(tools_dir=TOOLS_DIR)))
    if not zygote.wait_ready(120):
        raise RuntimeError("the tool zygote never became ready")
    return zygote


def _fork_body(tool: str, args: tuple[str, ...] = ()) -> int:
    from jobbody import tool_env

    workdir = tempfile.mkdtemp(prefix="ocho-bench-")
    try:
        script = f"{tool}.py"
        shutil.copyfile(os.path.join(TOOLS_DIR, script), os.path.join(workdir, script))
        proc = _zygote().spawn(os.path.join(workdir, script), [script, *args], workdir,
                               tool_env(str(PROJECT_PYTHON), workdir, "bench"))
        if proc is None:
            raise RuntimeError("the zygote did not start the tool")
        proc.release()
        size = _drain(proc)
        if proc.wait() != 0:
            raise RuntimeError(f"{tool} exited {proc.returncode}")
        _zygote().want_spare()  # as the runner does once a job is out
        return size
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _drain(proc: Any) -> int:
    """communicate(), counting stdout's bytes."""
    size = 0
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
        selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
        while selector.get_map():
            for key, _ in selector.select():
                data = os.read(key.fd, 1 << 20)
                if not data:
                    selector.unregister(key.fileobj)
                elif key.data == "stdout":
                    size += len(data)
    proc.stdout.close()
    proc.stderr.close()
    return size


def _runner_body(tool: str, args: tuple[str, ...] = ()) -> int:
    from ocho.settings import Settings
    from ocho.worker import runner

    settings = Settings(tools_dir=TOOLS_DIR, output_cap=16 * 1024 * 1024)
    kept = 0

    def emit(_stream: str, _offset: int, data: str) -> None:
        nonlocal kept
        kept += len(data)

    outcome = runner.run(settings, runner.Job(str(uuid.uuid4()), tool, list(args), {}, 60), emit)
    if outcome.state != "succeeded":
        raise RuntimeError(f"{tool}: {outcome}")
    # The end of the output comes with the outcome (the worker's `finished` event).
    return kept + sum(len(chunk["data"]) for chunk in outcome.tail)


def measure(cfg: Any, variant: str) -> dict[str, Any]:
    body = {"popen": _popen_body, "fork": _fork_body, "runner": _runner_body}[variant]
    record: dict[str, Any] = {"system": f"raw-{variant}", "slots": cfg.slots}
    with ThreadPoolExecutor(cfg.slots) as pool:
        def once() -> float:
            return run_windowed(lambda: pool.submit(body, "noop"), lambda f: f.result(),
                                cfg.jobs, cfg.window)

        once()  # warm the pool, the page cache and the interpreter's .pyc files
        meter = CpuMeter({})
        meter.start()
        noop = throughput(once, cfg.jobs, cfg.rounds)
        noop["cpu_ms_per_job"] = meter.per_job_ms(cfg.jobs * cfg.rounds)
    noop.update(latency(lambda: body("noop"), cfg.seq))
    record["noop"] = noop
    seconds = []
    for _ in range(cfg.big_runs):
        started = time.perf_counter()
        size = body("print10mb")
        seconds.append(time.perf_counter() - started)
        if size != TEN_MB:
            raise RuntimeError(f"print10mb gave {size} bytes")
    record["print10mb"] = mb_per_s(seconds)
    return record
