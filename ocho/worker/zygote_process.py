"""The tool zygote process itself (ocho.worker.zygote tells the whole protocol, and
holds the worker's side of it): `python -P -S -c '...main()' CONTROL_FD WORKER_PID
MODULES once|twice SPARE_IDLE_S`.

Invariants: it is single-threaded (a preloaded module that starts a thread makes
it exit) and never runs tool code itself: per job it only forks, so that the
worker is the tool's parent: once, with CLONE_PARENT (ocho.worker.sibling_fork),
or, where that cannot be done safely, twice, the middle process exiting so that
the worker adopts the tool. It dies with the worker (PR_SET_PDEATHSIG) and exits
when its control socket closes. A tool process runs nothing until the worker says
"go" and has adopted it; it then holds only /dev/null and the worker's pipes as
fds 0-2, and the environment the worker sent.

The fork is kept off a job's path: when a job has ended (its outcome is out) the
worker asks for a spare, and the zygote forks a child that waits, blocked, for the
next job's sockets and then becomes that job's tool exactly as a child forked for
it would have. At most one spare exists; it is retired (it exits, and the
worker, told "gone" on the control socket with a pidfd of it, reaps it) after
SPARE_IDLE_S without a job, so an idle worker holds no more processes than
before. A spare that cannot take a job (it died, or does not answer in time)
only means a fork for that job, as without spares (Spare: never two processes
for one job). Without pidfds (Linux < 5.4) there are no spares. A spare is in
the zygote's process group until it becomes a tool: whatever is left of it when
the zygote dies exits (its socket closes) and is reaped by the worker.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import importlib
import json
import os
import select
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
    GONE,
    PR_SET_PDEATHSIG,
    SPARE,
    prctl,
    read_line,
)

# A spare's answer (its pid, then that it holds a job's sockets) on a loaded machine.
SPARE_ANSWER_S = 2.0
TAKEN = b"t"
GO_ON = b"o"


def main() -> NoReturn:
    """The zygote process: `python -P -S -c '...main()' CONTROL_FD WORKER_PID MODULES
    once|twice SPARE_IDLE_S`."""
    from ocho.worker import toolmain

    fresh = toolmain.capture()  # before anything here changes signals or stdio
    control_fd, worker_pid, modules = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    fork_once = sys.argv[4:5] != ["twice"]
    spare_idle_s = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    if not spares_possible():
        spare_idle_s = 0.0
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != worker_pid:
        os._exit(0)  # the worker died before the death signal was armed
    # Ctrl-C and the like are for the worker, which closes the control socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _preload([name for name in modules.split(",") if name])
    gc.freeze()  # no copy-on-write of the preloaded objects by the collector
    control = socket.socket(fileno=control_fd)
    forker = Forker(control, worker_pid, fresh,
                    sibling_fork.make() if fork_once else None)  # None: fork twice
    control.send(b"ready")
    _serve(control, forker, spare_idle_s)
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


def _serve(control: socket.socket, forker: Forker, spare_idle_s: float) -> None:
    spare: Spare | None = None
    while True:
        forker.reap()
        if spare is not None and not _readable(control, spare_idle_s):
            spare.retire(control)
            spare = None
            continue
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 3)
        except OSError:
            return
        if not message:
            return  # the worker is gone, or closed us
        if len(fds) == 3:
            _start_tool(control, forker, spare, fds)
            spare = None
        elif message == SPARE and spare is None and spare_idle_s > 0:
            spare = _new_spare(forker)
        for fd in fds:
            os.close(fd)


def _start_tool(control: socket.socket, forker: Forker, spare: Spare | None,
                fds: list[int]) -> None:
    """The spare takes the job, or a child is forked for it."""
    if spare is not None and spare.take(fds):
        return
    if spare is not None:
        spare.retire(control)  # dead, or too late: the job gets a fork of its own
    forker.fork(lambda: _become_tool(fds, forker.worker_pid, forker.fresh))


def _new_spare(forker: Forker) -> Spare | None:
    try:
        return forker.spare()
    except OSError as exc:  # out of processes or memory: the next job is forked for it
        print(f"ocho tool zygote: no spare: {exc}", file=sys.stderr)
        return None


def _readable(sock: socket.socket, timeout: float) -> bool:
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)


class Forker:
    """Forks the zygote's children, so that the worker is their parent: once with
    CLONE_PARENT, or twice (then it waits for the middle processes)."""

    def __init__(self, control: socket.socket, worker_pid: int, fresh: Any,
                 fork_sibling: Callable[[], int] | None) -> None:
        self.control = control
        self.worker_pid = worker_pid
        self.fresh = fresh
        self._fork_sibling = fork_sibling
        self._middles: set[int] = set()

    def fork(self, child: Callable[[], object]) -> None:
        """A child that runs `child` and never returns into the zygote's loop."""
        if self._fork_sibling is not None:
            try:
                if self._fork_sibling() == 0:  # the worker's child from the start
                    self._in_child(child)
                return
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.ENOMEM):
                    raise  # a fork would fail as well
                print(f"ocho tool zygote: forking twice from now on: {exc}", file=sys.stderr)
                self._fork_sibling = None
        middle = os.fork()
        if middle == 0:
            try:
                if os.fork() == 0:
                    self._in_child(child)
            finally:
                os._exit(0)
        self._middles.add(middle)

    def _in_child(self, child: Callable[[], object]) -> NoReturn:
        try:
            self.control.close()
            child()
        finally:
            os._exit(127)  # nothing of the zygote's loop ever runs in a child

    def spare(self) -> Spare:
        """A child waiting for the next job's sockets (Spare.take)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        def wait_for_a_job() -> None:
            mine.close()
            _wait_for_a_job(theirs, self.worker_pid, self.fresh)

        try:
            self.fork(wait_for_a_job)
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        return Spare(mine)

    def reap(self) -> None:
        """Wait for the middle processes that have exited. Waited for, not left to the
        kernel (SIGCHLD ignored), so that their CPU time is counted: it is part of what
        a warm start costs, and shows in the zygote's children's times."""
        for pid in list(self._middles):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self._middles.discard(pid)


class Spare:
    """The zygote's end of a spare's socket.

    The handover has two phases, so that a job never gets two processes: the spare
    says TAKEN once it holds the job's sockets, and touches them only after the
    zygote's GO_ON, which is sent only if TAKEN came within SPARE_ANSWER_S; a spare
    that answers later finds its socket closed and exits. At start the spare sends a
    pidfd of itself: a dead spare is reaped through it by the worker (told "gone"),
    never by a pid that may belong to another process by then."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self._socket.settimeout(SPARE_ANSWER_S)
        self._pidfd: int | None = None

    def take(self, fds: list[int]) -> bool:
        """Hand the job's sockets to the spare; False: the job needs a fork of its own
        (the spare died, or did not answer in time)."""
        self._read_pidfd()
        try:
            socket.send_fds(self._socket, [b"j"], fds)
            taken = _recv_exactly(self._socket, len(TAKEN)) == TAKEN
            if taken:
                self._socket.sendall(GO_ON)
        except OSError:
            taken = False
        if taken:
            self._socket.close()
            self._close_pidfd()
        return taken

    def retire(self, control: socket.socket) -> None:
        """The spare exits (its socket closes); the worker reaps it through its pidfd."""
        self._read_pidfd()
        self._socket.close()
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                socket.send_fds(control, [GONE], [self._pidfd])
        self._close_pidfd()

    def _read_pidfd(self) -> None:
        if self._pidfd is None:
            with contextlib.suppress(OSError):
                _, fds, _, _ = socket.recv_fds(self._socket, 1, 1)
                self._pidfd = fds[0] if fds else None

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """`size` bytes, or fewer if the peer closed first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _wait_for_a_job(sock: socket.socket, worker_pid: int, fresh: Any) -> None:
    """In a spare: send the zygote a pidfd of itself, then become the next job's tool,
    or exit once the zygote closes the socket (see Spare)."""
    pidfd = os.pidfd_open(os.getpid())
    socket.send_fds(sock, [b"p"], [pidfd])
    os.close(pidfd)
    from ocho.worker import toolmain

    json.loads(json.dumps({"pid": os.getpid()}))  # the request's and the reply's path
    toolmain.rehearse(fresh)
    go_on = False
    try:
        _, fds, _, _ = socket.recv_fds(sock, 16, 3)
        if len(fds) == 3:
            sock.sendall(TAKEN)
            go_on = _recv_exactly(sock, len(GO_ON)) == GO_ON
    except OSError:
        fds = []
    if len(fds) != 3 or not go_on:
        os._exit(0)  # the job, if it was handed over, is another process's now
    sock.close()
    _become_tool(fds, worker_pid, fresh)


def spares_possible() -> bool:
    """Spares need pidfds (Linux 5.4: pidfd_open, and waitid on a pidfd)."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return hasattr(os, "P_PIDFD")


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
