"""A tiny process that kills the worker's tool process groups if the worker dies.

A worker killed with SIGKILL cannot clean up after itself, and a tool's own
children would not even notice a parent-death signal. So the worker forks
this reaper once at start (before any thread exists), tells it through a pipe
which process groups are live, and when the pipe reaches end-of-file because
the worker is gone, the reaper kills every group it still knows about.

A worker that starts tools warm is a child subreaper (see zygote.py): what a
tool leaves behind is orphaned to the worker, not to init. `reap_orphans`
waits for those once they are zombies; `reap_group` waits for a killed group's
to die first. It never touches a session leader:
every process the worker waits for itself (tools, Popen'ed or warm, and the
zygote) leads a session of its own; orphans of a tool are in the tool's.
"""

from __future__ import annotations

import os
import signal
import threading
import time

# How long a job's end waits for the processes of its killed group to be gone.
GROUP_REAP_S = 1.0


class Reaper:
    def __init__(self) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the reaper
            os.close(write_end)
            _reap(read_end)
            os._exit(0)
        os.close(read_end)
        self.pid = pid
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
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass  # already reaped as an orphan would be


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


def reap_child(pid: int, timeout: float = GROUP_REAP_S) -> None:
    """Wait for a child told to exit (a retired spare tool process); SIGKILL it if it
    has not within `timeout`. Someone else having reaped it is fine."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            return
        time.sleep(0.001)


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


def _reap(read_end: int) -> None:
    # Signals meant for the worker (Ctrl-C in a terminal reaches the whole
    # foreground group) must not stop the reaper before it has done its job.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for fd in range(3, 1024):
        if fd != read_end:
            try:
                os.close(fd)
            except OSError:
                pass
    groups: set[int] = set()
    buffer = b""
    while True:
        try:
            data = os.read(read_end, 4096)
        except InterruptedError:
            continue
        if not data:
            break
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(b"+"):
                groups.add(int(line[1:]))
            elif line.startswith(b"-"):
                groups.discard(int(line[1:]))
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
