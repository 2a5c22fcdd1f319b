"""The tool zygote process itself (ocho.worker.zygote tells the whole protocol, and
holds the worker's side of it): `python -P -S -c '...main()' CONTROL_FD WORKER_PID
MODULES [once|twice]`.

Invariants: it is single-threaded (a preloaded module that starts a thread makes
it exit) and never runs tool code itself: per job it only forks, so that the
worker is the tool's parent: once, with CLONE_PARENT (ocho.worker.sibling_fork),
or, where that cannot be done safely, twice, the middle process exiting so that
the worker adopts the tool. It dies with the worker (PR_SET_PDEATHSIG) and exits
when its control socket closes. A tool process runs nothing until the worker says
"go" and has adopted it; it then holds only /dev/null and the worker's pipes as
fds 0-2, and the environment the worker sent.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from ocho.worker import sibling_fork
from ocho.worker.zygote import (
    ADOPTION_TIMEOUT_S,
    GO,
    GO_TIMEOUT_S,
    PR_SET_PDEATHSIG,
    prctl,
    read_line,
)


def main() -> NoReturn:
    """The zygote process: `python -P -S -c '...main()' CONTROL_FD WORKER_PID MODULES
    [once|twice]`."""
    from ocho.worker import toolmain

    fresh = toolmain.capture()  # before anything here changes signals or stdio
    control_fd, worker_pid, modules = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    fork_once = sys.argv[4:5] != ["twice"]
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != worker_pid:
        os._exit(0)  # the worker died before the death signal was armed
    # Ctrl-C and the like are for the worker, which closes the control socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _preload([name for name in modules.split(",") if name])
    gc.freeze()  # no copy-on-write of the preloaded objects by the collector
    fork_sibling = sibling_fork.make() if fork_once else None  # None: fork twice
    control = socket.socket(fileno=control_fd)
    control.send(b"ready")
    _serve(control, worker_pid, fresh, fork_sibling)
    os._exit(0)


def _preload(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a tool that needs it imports it itself
            print(f"ocho tool zygote: not preloading {name}: {exc}", file=sys.stderr)
    if threading.active_count() != 1:
        print("ocho tool zygote: a preloaded module started a thread; exiting",
              file=sys.stderr)
        os._exit(1)


def _serve(control: socket.socket, worker_pid: int, fresh: Any,
           fork_sibling: Callable[[], int] | None) -> None:
    middles: set[int] = set()
    while True:
        _reap(middles)
        try:
            _, fds, _, _ = socket.recv_fds(control, 16, 3)
        except OSError:
            return
        if not fds:
            return  # the worker is gone, or closed us
        if len(fds) == 3 and fork_sibling is not None:
            try:
                if fork_sibling() == 0:  # the tool, the worker's child from the start
                    _run_tool(control, fds, worker_pid, fresh)
            except OSError as exc:
                print(f"ocho tool zygote: forking twice from now on: {exc}", file=sys.stderr)
                fork_sibling = None
        if len(fds) == 3 and fork_sibling is None:
            middles.add(_fork_twice(control, fds, worker_pid, fresh))
        for fd in fds:
            os.close(fd)


def _fork_twice(control: socket.socket, fds: list[int], worker_pid: int, fresh: Any) -> int:
    """Fork a middle process that forks the tool and exits, so the worker adopts it."""
    middle = os.fork()
    if middle == 0:
        try:
            if os.fork() == 0:
                _run_tool(control, fds, worker_pid, fresh)
        finally:
            os._exit(0)
    return middle


def _run_tool(control: socket.socket, fds: list[int], worker_pid: int, fresh: Any) -> NoReturn:
    try:
        control.close()
        _become_tool(fds, worker_pid, fresh)
    finally:
        os._exit(127)  # nothing of the zygote's loop ever runs in a tool process


def _reap(middles: set[int]) -> None:
    """Wait for the middle processes that have exited. Waited for, not left to the
    kernel (SIGCHLD ignored), so that their CPU time is counted: it is part of what a
    warm start costs, and shows in the zygote's children's times."""
    for pid in list(middles):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            middles.discard(pid)


def _become_tool(fds: list[int], worker_pid: int, fresh: Any) -> NoReturn:
    """In the tool process: set up, report, wait for "go", run the script."""
    os.setsid()
    job = socket.socket(fileno=fds[0])
    try:
        request = json.loads(read_line(job) or b"null")
        os.chdir(request["cwd"])
    except Exception as exc:  # noqa: BLE001 - told to the worker, which starts it cold
        with contextlib.suppress(OSError):
            job.sendall(json.dumps({"error": str(exc), "pid": os.getpid()}).encode() + b"\n")
        os._exit(127)
    job.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    job.settimeout(GO_TIMEOUT_S)
    try:
        go = job.recv(1)
    except OSError:
        go = b""
    if go != GO:
        os._exit(0)  # the worker gave up on this start: run nothing
    job.close()
    # Meanwhile the middle process exited: the worker is (about to be) the parent.
    try:
        _wait_adopted(worker_pid)
    except RuntimeError:
        os._exit(127)
    _take_stdio(fds[1], fds[2])
    os.environ.clear()
    os.environ.update(request["env"])
    _forget_environment_caches()
    from ocho.worker import toolmain

    toolmain.run_script(fresh, os.path.abspath(request["script"]), request["argv"])


def _wait_adopted(worker_pid: int) -> None:
    deadline = time.monotonic() + ADOPTION_TIMEOUT_S
    while os.getppid() != worker_pid:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not adopt the tool process")
        time.sleep(0.0002)


def _take_stdio(stdout: int, stderr: int) -> None:
    """/dev/null and the worker's pipes as 0-2; no other fd survives (close_fds)."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    keep = {0, 1, 2}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _forget_environment_caches() -> None:
    """What the stdlib computed from the zygote's environment (HOME, TMPDIR)."""
    tempfile_module = sys.modules.get("tempfile")
    if tempfile_module is not None:
        tempfile_module.tempdir = None  # type: ignore[attr-defined]
