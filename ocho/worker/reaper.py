"""A tiny process that kills the worker's tool process groups if the worker dies.

A worker killed with SIGKILL cannot clean up after itself, and a tool's own
children would not even notice a parent-death signal. So the worker starts
this reaper once at start, tells it through a pipe which process groups are
live, and when the pipe reaches end-of-file because the worker is gone, the
reaper kills every group it still knows about. The reaper process is
ocho/worker/reaper_process.py run by a new interpreter (`python -I -S
reaper_process.py FD`: the standard library only, in a session of its own,
out of reach of a terminal's Ctrl-C), not a fork of the worker: a fork would
hold the worker's imported modules, ~25 MB of resident memory, for the
worker's whole life.

A worker that starts tools warm is a child subreaper (see zygote.py): what a
tool leaves behind is orphaned to the worker, not to init. `reap_orphans`
waits for those once they are zombies; `reap_group` waits for a killed group's
to die first. It never touches a session leader:
every process the worker waits for itself (tools, Popen'ed or warm, and the
zygote) leads a session of its own; orphans of a tool are in the tool's.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REAPER_PROCESS = Path(__file__).resolve().with_name("reaper_process.py")
# How long a job's end waits for the processes of its killed group to be gone.
GROUP_REAP_S = 1.0


class Reaper:
    def __init__(self) -> None:
        read_end, write_end = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(REAPER_PROCESS), str(read_end)],
                pass_fds=[read_end], stdin=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self.pid = self._process.pid
        self._pipe = write_end
        self._lock = threading.Lock()

    def track(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def _send(self, line: str) -> None:
        with self._lock:
            try:
                os.write(self._pipe, line.encode())
            except OSError:
                pass

    def close(self) -> None:
        """Normal shutdown: end-of-file makes the reaper sweep and exit."""
        os.close(self._pipe)
        self._process.wait()


def reap_group(pgid: int, timeout: float = GROUP_REAP_S) -> None:
    """Once a tool's group was killed: wait (at most `timeout`) until none of its
    processes is left, reaping those orphaned to this process as they die, so that
    a job ends with nothing of it left, not even a zombie. One syscall when the tool
    left nothing behind."""
    deadline = time.monotonic() + timeout
    while True:
        reap_orphans()
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.002)


def reap_pidfd(pidfd: int, timeout: float = GROUP_REAP_S) -> None:
    """Wait for the child `pidfd` refers to (a retired spare tool process, told to
    exit); SIGKILL it if it has not within `timeout`. Through a pidfd, never a pid:
    the process may have been reaped by someone else and its pid given to another."""
    readable, _, _ = select.select([pidfd], [], [], timeout)
    if not readable:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED)


def reap_orphans() -> int:
    """Wait for this process's zombie children that lead no session; returns how many."""
    reaped = 0
    for pid in _children():
        if _is_orphan_zombie(pid):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    reaped += 1
            except ChildProcessError:
                pass
    return reaped


def _children() -> list[int]:
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as handle:
                pids.extend(int(pid) for pid in handle.read().split())
        except OSError:
            continue
    return pids


def _is_orphan_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    # After the name: state, ppid, pgrp, session.
    return fields[0] == "Z" and int(fields[3]) != pid
