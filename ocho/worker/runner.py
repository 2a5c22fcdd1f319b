"""One job run: temp dir → start the tool → stream output → outcome.

Knows nothing of AMQP: output goes to an `emit` callback and cancellation
comes in through a threading.Event, so the runner can be measured and tested
on its own (the benchmark's "raw" baseline is this same code path).

A tool starts warm (forked by the worker's tool zygote, see zygote.py) when
OCHO_TOOL_START=warm, the Control carries a zygote and the tool is a Python
script; otherwise, or whenever the zygote cannot, it starts cold (Popen of a
new interpreter). Either way the same calls follow before any tool code runs
in a warm start (rlimits, on_spawn: reaper and cgroup), the worker waits for
the same pid, and kills the same process group.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ocho import message
from ocho.settings import Settings
from ocho.worker import limits, reaper
from ocho.worker.output import Chunk, Emit, OutputSink
from ocho.worker.zygote import WarmProcess, Zygote

# Size of one read from a pipe.
READ_SIZE = 65536
# After the tool exits, how long leftover output may take to drain.
DRAIN_SECONDS = 2.0



@dataclasses.dataclass
class Job:
    id: str
    tool: str
    args: list[str]
    files: dict[str, bytes]
    timeout: int
    attempt: int = 1


@dataclasses.dataclass
class Outcome:
    state: str
    exit_code: int | None
    ms: int
    truncated: bool
    output_bytes: int
    reason: str | None = None
    # The output not yet sent when the tool ended, for the `finished` event.
    tail: list[Chunk] = dataclasses.field(default_factory=list)
    # When the tool started (Unix time); None if it never did.
    started_ts: float | None = None


@dataclasses.dataclass
class Control:
    """How the consumer steers a running job from another thread."""

    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)
    # Set with cancel when the worker shuts down or loses its broker: the job is
    # killed but must not be reported, so the broker redelivers it.
    abandon: bool = False
    on_spawn: Callable[[int], None] | None = None
    on_exit: Callable[[int], None] | None = None
    # Called once with the tool's start time (Unix), before its first output
    # event or once it has run for the output flush interval, whichever comes
    # first; never for a job that ends sooner: its `finished` says it all.
    on_running: Callable[[float], None] | None = None
    # Call on_running just before the tool is started, not later: for a
    # redelivered request, whose tool may kill its worker at once (a poison
    # message), so that even such a start is counted towards OCHO_DELIVERY_LIMIT.
    announce_at_start: bool = False
    # Called with the outcome of a job that ran, before its directory is removed.
    on_outcome: Callable[[Outcome], None] | None = None
    # The worker's tool zygote, for warm starts (OCHO_TOOL_START=warm).
    zygote: Zygote | None = None


def tool_path(settings: Settings, tool: str) -> Path | None:
    if not message.TOOL_NAME.match(tool):
        return None
    path = settings.tools_dir / f"{tool}.py"
    return path if path.is_file() else None


def tool_interpreter() -> list[str]:
    """How a tool's interpreter starts: this worker's Python, with
    -P: the job's directory holds the user's uploads; an uploaded yaml.py must
        never be imported by the tool as code;
    -S: no `site` import at start-up, a third of a trivial tool's start-up
        cost; the import path it would build comes from tool_import_path().
    """
    return [sys.executable, "-P", "-S"]


@functools.cache
def tool_import_path() -> str:
    """The worker's own import path (the venv's site-packages and what its
    .pth files add), minus the worker's script directory."""
    return os.pathsep.join(entry for entry in sys.path[1:] if entry)


def tool_environment(settings: Settings, job: Job, workdir: str) -> dict[str, str]:
    """An allow-list: nothing of the worker's own secrets reaches a tool."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONPATH": tool_import_path(),
        "OCHO_JOB_ID": job.id,
        "OCHO_ATTEMPT": str(job.attempt),
    }
    env.update(settings.k8s_environment())
    return env


def zygote_environment(settings: Settings) -> dict[str, str]:
    """The tools' allow-list without what belongs to one job (the zygote sets
    HOME and TMPDIR to a directory of its own)."""
    env = tool_environment(settings, Job("", "", [], {}, 0), "")
    for name in ("HOME", "TMPDIR", "OCHO_JOB_ID", "OCHO_ATTEMPT"):
        env.pop(name)
    return env


def start_zygote(settings: Settings) -> Zygote | None:
    """The worker's tool zygote when tools start warm (OCHO_TOOL_START)."""
    if settings.tool_start != "warm":
        return None
    return Zygote(zygote_environment(settings), spare_idle_s=settings.tool_spare_idle_s)


def prepare_workdir(settings: Settings, job: Job, script: Path) -> str:
    workdir = tempfile.mkdtemp(prefix=f"ocho-{job.id[:8]}-")  # mode 0700
    try:
        for name, content in job.files.items():
            if not message.is_safe_file_name(name):  # checked on arrival; never trust it here
                raise ValueError(f"file name {name!r} is not a plain base name")
            # O_EXCL | O_NOFOLLOW: a name can only ever create a new plain file here.
            fd = os.open(os.path.join(workdir, name),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
        shutil.copyfile(script, os.path.join(workdir, script.name))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return workdir


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


Process = subprocess.Popen[bytes] | WarmProcess


def terminate_group(proc: Process, grace: float) -> None:
    """SIGTERM the whole group, give it `grace` seconds, then SIGKILL it."""
    kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    kill_group(proc.pid, signal.SIGKILL)


def run(settings: Settings, job: Job, emit: Emit, control: Control | None = None) -> Outcome:
    """Run one job to its end. Never raises for anything the tool does."""
    control = control or Control()
    started = time.monotonic()
    script = tool_path(settings, job.tool)
    if script is None:
        return Outcome(message.REJECTED, None, 0, False, 0, reason=f"unknown tool {job.tool!r}")
    if script.name in job.files:
        return Outcome(message.REJECTED, None, 0, False, 0,
                       reason=f"file name {script.name!r} would overwrite the tool script")
    if control.cancel.is_set():
        return Outcome(message.CANCELLED, None, 0, False, 0,
                       reason="cancelled before it started")
    workdir = prepare_workdir(settings, job, script)
    spawned: list[int] = []
    try:
        outcome = _run_in(settings, job, emit, control, workdir, script.name, started, spawned)
        if control.on_outcome:
            # The tool's processes are dead: the result need not wait for the clean-up.
            control.on_outcome(outcome)
        if spawned and control.zygote is not None:
            control.zygote.want_spare()  # the next job's fork, now that this one is out
        return outcome
    finally:
        if control.on_exit:
            for pid in spawned:
                control.on_exit(pid)
        if control.zygote is not None and control.zygote.adopting and spawned:
            # What the tool left behind was killed with its group and adopted by the worker.
            reaper.reap_group(spawned[0])
        shutil.rmtree(workdir, ignore_errors=True)


class Announcement:
    """Tells the consumer once that the tool runs (Control.on_running)."""

    def __init__(self, control: Control, flush_seconds: float) -> None:
        self._on_running = control.on_running
        self.started_ts = time.time()
        self.due_at = time.monotonic() + flush_seconds
        self.done = self._on_running is None

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            assert self._on_running is not None
            self._on_running(self.started_ts)


def _run_in(settings: Settings, job: Job, emit: Emit, control: Control, workdir: str,
            script_name: str, started: float, spawned: list[int]) -> Outcome:
    flush_seconds = settings.output_flush_ms / 1000
    announce = Announcement(control, flush_seconds)

    def emit_running(stream: str, offset: int, data: str) -> None:
        announce()
        emit(stream, offset, data)

    sink = OutputSink(emit_running, settings.output_cap, flush_seconds)
    if control.announce_at_start:
        announce()  # before the tool exists: a cold one runs as soon as it is started
    try:
        proc = start_tool(settings, job, workdir, script_name, control.zygote)
    except OSError as exc:
        return Outcome(message.FAILED, None, _ms(started), False, 0,
                       reason=f"could not start the tool: {exc.strerror}")
    limits.apply_rlimits(proc.pid, settings, job.timeout)
    spawned.append(proc.pid)
    if control.on_spawn:
        control.on_spawn(proc.pid)
    if isinstance(proc, WarmProcess):
        proc.release()  # limits and cgroup are in place: the tool may run now
    try:
        state, reason = _stream(settings, job, proc, sink, control, announce)
    finally:
        # Whatever the tool left behind in its group dies with the job.
        kill_group(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait()
    note = None
    if sink.truncated:
        note = (f"\n[ocho] output truncated: kept the first {sink.kept + sink.pending_bytes} "
                f"bytes of {sink.produced}; raise OCHO_OUTPUT_CAP to keep more\n")
    tail = sink.tail(note)
    exit_code = proc.returncode
    if state is None:
        state = message.SUCCEEDED if exit_code == 0 else message.FAILED
        if exit_code is not None and exit_code < 0:
            reason = f"killed by signal {signal.Signals(-exit_code).name}"
    return Outcome(state, exit_code, _ms(started), sink.truncated, sink.produced, reason,
                   tail, announce.started_ts)


def start_tool(settings: Settings, job: Job, workdir: str, script_name: str,
               zygote: Zygote | None) -> Process:
    """Warm when possible (a WarmProcess that waits for release()), else cold."""
    env = tool_environment(settings, job, workdir)
    argv = [script_name, *job.args]
    if settings.tool_start == "warm" and zygote is not None and script_name.endswith(".py"):
        warm = zygote.spawn(os.path.join(workdir, script_name), argv, workdir, env, job.id)
        if warm is not None:
            return warm
    return subprocess.Popen(
        [*tool_interpreter(), *argv],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )


def _stream(settings: Settings, job: Job, proc: Process, sink: OutputSink,
            control: Control, announce: Announcement) -> tuple[str | None, str | None]:
    """Pump both pipes until they close; returns a forced state, if any."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + job.timeout
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
    selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
    forced: tuple[str | None, str | None] = (None, None)
    drain_until: float | None = None
    try:
        while selector.get_map():
            now = time.monotonic()
            if forced[0] is None:
                if control.cancel.is_set():
                    forced = (message.CANCELLED, "cancelled on request")
                elif now >= deadline:
                    forced = (message.TIMED_OUT, f"exceeded its time limit of {job.timeout} s")
                if forced[0] is not None:
                    terminate_group(proc, settings.kill_grace)
                    drain_until = time.monotonic() + DRAIN_SECONDS
            if drain_until is None and proc.poll() is not None:
                # The tool is gone; children it left keep the pipes open.
                kill_group(proc.pid, signal.SIGKILL)
                drain_until = now + DRAIN_SECONDS
            if drain_until is not None and now > drain_until:
                break
            if not announce.done and now >= announce.due_at:
                announce()
            wait = 0.05 if sink.has_pending or not announce.done else 0.1
            for key, _ in selector.select(timeout=min(wait, max(deadline - now, 0.001))):
                data = os.read(key.fd, READ_SIZE)
                if data:
                    sink.feed(key.data, data)
                else:
                    sink.feed(key.data, b"", final=True)
                    selector.unregister(key.fileobj)
            if sink.due():
                sink.flush()
    finally:
        selector.close()
        proc.stdout.close()
        proc.stderr.close()
    proc.wait()
    return forced


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
