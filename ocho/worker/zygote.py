"""The tool zygote: a warm interpreter that forks tool processes.

A fresh Python with the tools' runtime imported costs every job a few hundred
ms; a fork of an interpreter that has already imported it costs a few. Each
worker therefore keeps one zygote process:

- it is started (`python -P -S -c ...`: ocho.worker.zygote_process, its side
  of all this) with the tools' allow-listed environment only, never the
  worker's, and imports PRELOAD once;
- it is single-threaded, and never runs tool code: per job it only forks;
- per job, the worker sends it over its control socket (SCM_RIGHTS) a fresh
  job socket and the write ends of the stdout/stderr pipes the worker reads.
  The zygote forks once with CLONE_PARENT (ocho.worker.sibling_fork), so the
  tool process is the worker's child from the start; where that cannot be done
  safely it forks twice and the middle process exits at once, so the tool
  process is orphaned and adopted by the worker, a child subreaper
  (PR_SET_CHILD_SUBREAPER). Either way the tool's parent is the worker, as with Popen,
  and the worker waits for it and reads its exit status with waitpid, as with
  Popen. A zygote that dies does not touch the tools it already forked.
- the tool process starts its own session, reads its request (script, argv,
  cwd, environment) from the job socket, chdirs, and reports its pid; it then
  waits, blocked, until the worker has applied its rlimits and put it in the
  job's cgroup (the same calls as for a Popen'ed tool), and the worker says
  "go"; and until the worker has adopted it (the middle process exits in the
  meantime; until then the worker's waitpid finds no child and it waits on).
  Only then does it take /dev/null and the pipes as fds 0-2, close every other
  fd, replace its environment and run the script (see toolmain). If the worker
  goes away before "go", it exits.
- the fork itself is off a job's path: when a job's outcome is out, the worker
  asks for a spare (`want_spare`), a tool process forked ahead that waits for
  the next job's sockets (zygote_process tells how it is kept, handed over,
  retired after SPARE_IDLE_S without a job, and reaped: the zygote says "gone"
  on the control socket with a pidfd of the spare, and the keeper thread
  reaps it through that).
- the zygote has PR_SET_PDEATHSIG and exits when its control socket closes:
  it never outlives the worker. Tools in flight are the worker's: its reaper
  kills their groups if the worker is SIGKILLed. A spare left when the zygote
  dies exits (its socket closes), and the keeper reaps it.

Anything going wrong on the zygote's side makes `spawn` return None, and the
runner starts that job cold; a dead zygote is started again by its keeper
thread. A job never fails because of the zygote.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from typing import Any

from ocho.worker import reaper

log = logging.getLogger("ocho.worker")

# What the tools import: preloaded once per zygote. Missing ones are skipped.
PRELOAD = (
    "argparse", "json", "yaml", "urllib3", "urllib3.util.retry",
    "kubernetes.client", "kubernetes.config.kube_config",
    "kubernetes.config.incluster_config", "kubernetes.config.config_exception",
    "ocho.kube",
)
# How long a zygote may take to import PRELOAD on a loaded machine.
READY_TIMEOUT_S = 120.0
# How long one job's start through the zygote may take before it starts cold.
SPAWN_TIMEOUT_S = 10.0
# A tool process waiting to be adopted by the worker, then for its "go".
ADOPTION_TIMEOUT_S = 10.0
GO_TIMEOUT_S = 60.0
# How long a spare tool process (see zygote_process) waits for a job before it exits.
SPARE_IDLE_S = 2.0
# Restart back-off for a zygote that keeps dying.
RESTART_DELAYS_S = (0.5, 1, 2, 5, 10, 30)
GO = b"g"
SPARE = b"spare"
GONE = b"gone"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


class SpawnFailed(Exception):
    """The zygote could not start this job (the job starts cold)."""


def prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


# -- the worker's side ---------------------------------------------------------------------
class WarmProcess:
    """A tool forked by the zygote and adopted by the worker: a Popen look-alike
    (pid, stdout, stderr, poll, wait, returncode), waited for with waitpid."""

    def __init__(self, pid: int, job_socket: socket.socket, stdout: int, stderr: int) -> None:
        self.pid = pid
        self.args = ["<warm>", str(pid)]
        self.returncode: int | None = None
        self.stdout = os.fdopen(stdout, "rb", buffering=0)
        self.stderr = os.fdopen(stderr, "rb", buffering=0)
        self._socket: socket.socket | None = job_socket
        self._spawned_at = time.monotonic()

    def release(self) -> None:
        """Let the tool run: its limits and cgroup are in place."""
        if self._socket is None:
            return
        with contextlib.suppress(OSError):
            self._socket.sendall(GO)
        self._socket.close()
        self._socket = None

    def poll(self) -> int | None:
        return self._wait(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            code = self._wait(0)
            assert code is not None
            return code
        deadline = time.monotonic() + timeout
        while (code := self._wait(os.WNOHANG)) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.01)
        return code

    def _wait(self, flags: int) -> int | None:
        while self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, flags)
            except ChildProcessError:
                # Its middle process may not have exited yet: the worker adopts it then.
                late = time.monotonic() > self._spawned_at + ADOPTION_TIMEOUT_S
                if late or not _exists(self.pid):
                    self.returncode = -signal.SIGKILL  # not ours: no status to read
                elif flags & os.WNOHANG:
                    return None
                else:
                    time.sleep(0.001)
                continue
            if pid == 0:
                return None
            self.returncode = os.waitstatus_to_exitcode(status)
            self.release()  # never blocks anything now; closes the socket
        return self.returncode

    def discard(self) -> None:
        """A tool that never got its "go": it exits by itself; reap it."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        for handle in (self.stdout, self.stderr):
            handle.close()
        with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
            self.wait(timeout=2)


class Zygote:
    """The worker's handle on its zygote: starts it, restarts it, asks it to fork."""

    def __init__(self, environment: Mapping[str, str], preload: tuple[str, ...] = PRELOAD,
                 fork_once: bool = True, spare_idle_s: float = SPARE_IDLE_S) -> None:
        """`fork_once=False` makes the zygote fork twice even where it could fork once
        (ocho.worker.sibling_fork): the tests run both ways. `spare_idle_s` is how
        long a spare tool process waits for a job (0: no spares)."""
        # Tools forked by the zygote become the worker's children (see the module doc).
        self.adopting = prctl(PR_SET_CHILD_SUBREAPER, 1)
        self._home = tempfile.mkdtemp(prefix="ocho-zygote-")
        self._environment = {**environment, "HOME": self._home, "TMPDIR": self._home}
        self._preload = preload
        self.fork_once = fork_once
        self.spare_idle_s = spare_idle_s
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._send_lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        # The keeper starts the zygote: PR_SET_PDEATHSIG fires when the thread that
        # forked it ends, so that is a thread living as long as this handle.
        self._keeper = threading.Thread(target=self._keep, name="zygote-keeper", daemon=True)
        if self.adopting:
            self._keeper.start()
        else:
            log.warning("cannot become a child subreaper: tools start cold")

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and self._ready.is_set() else None

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    # -- per job -------------------------------------------------------------------------
    def spawn(self, script: str, argv: list[str], cwd: str, env: Mapping[str, str],
              job_id: str = "-") -> WarmProcess | None:
        """A tool process, blocked until `release()`; None: start this job cold."""
        if not self._ready.is_set():
            return None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = self._ask(mine, theirs, [out_w, err_w],
                            {"script": script, "argv": argv, "cwd": cwd, "env": dict(env)})
        except SpawnFailed as exc:
            log.warning("job %s: warm start failed (%s); starting cold", job_id, exc)
            mine.close()
            os.close(out_r)
            os.close(err_r)
            return None
        finally:
            theirs.close()
            os.close(out_w)
            os.close(err_w)
        return WarmProcess(pid, mine, out_r, err_r)

    def want_spare(self) -> None:
        """A job has ended: the zygote forks the next job's tool process now, off the
        next job's path (zygote_process: spares)."""
        control = self._control
        if control is None or not self._ready.is_set():
            return
        with self._send_lock, contextlib.suppress(OSError):
            control.send(SPARE, socket.MSG_DONTWAIT)  # a stopped zygote misses it: fine

    def _ask(self, mine: socket.socket, theirs: socket.socket, pipes: list[int],
             request: dict[str, Any]) -> int:
        control = self._control
        try:
            if control is None:
                raise OSError("no zygote")
            with self._send_lock:
                socket.send_fds(control, [b"fork"], [theirs.fileno(), *pipes])
            mine.settimeout(SPAWN_TIMEOUT_S)
            mine.sendall(json.dumps(request).encode() + b"\n")
            reply = read_line(mine)
        except OSError as exc:
            self._lost(f"{type(exc).__name__}: {exc}")
            raise SpawnFailed("the zygote did not answer") from None
        try:
            answer = json.loads(reply)
            pid = int(answer.get("pid") or 0)
        except (ValueError, TypeError, AttributeError):
            self._lost("it closed the job socket" if not reply else "it answered nonsense")
            raise SpawnFailed("the zygote did not answer") from None
        if "error" in answer:
            if pid:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            raise SpawnFailed(str(answer["error"]))
        mine.settimeout(None)
        return pid

    def _lost(self, why: str) -> None:
        """The zygote misbehaved: kill it, the keeper starts another."""
        if not self._ready.is_set():
            return
        self._ready.clear()
        process = self._process
        log.warning("tool zygote %s lost (%s); jobs start cold until it is back",
                    process.pid if process else "?", why)
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()

    # -- its life --------------------------------------------------------------------------
    def _keep(self) -> None:
        failures = 0
        while not self._closing.is_set():
            started = time.monotonic()
            self._run_one()
            if self._closing.is_set():
                break
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            delay = RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)]
            self._closing.wait(delay)

    def _run_one(self) -> None:
        control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-P", "-S", "-c",
                   "from ocho.worker.zygote_process import main; main()",
                   str(theirs.fileno()), str(os.getpid()), ",".join(self._preload),
                   "once" if self.fork_once else "twice", str(self.spare_idle_s)]
        try:
            process = subprocess.Popen(command, env=self._environment, cwd=self._home,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       pass_fds=[theirs.fileno()], start_new_session=True)
        except OSError as exc:
            log.warning("cannot start the tool zygote: %s", exc)
            control.close()
            theirs.close()
            return
        theirs.close()
        self._process = process
        self._control = control
        started = time.monotonic()
        if _wait_ready(control, process):
            log.info("tool zygote %d ready in %d ms", process.pid,
                     (time.monotonic() - started) * 1000)
            self._ready.set()
            _reap_retired_spares(control)
        process.wait()
        self._ready.clear()
        self._control = None
        control.close()
        # Its spare, if any, exits now that the zygote's end of its socket is closed.
        reaper.reap_group(process.pid)
        if not self._closing.is_set():
            log.warning("tool zygote %d exited (%s); jobs start cold until it is back",
                        process.pid, _describe_status(process.returncode))

    def close(self) -> None:
        self._closing.set()
        self._ready.clear()
        control = self._control
        if control is not None:
            with contextlib.suppress(OSError):
                control.shutdown(socket.SHUT_RDWR)
        process = self._process
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        if self._keeper.is_alive():
            self._keeper.join(timeout=10)
        shutil.rmtree(self._home, ignore_errors=True)


def _wait_ready(control: socket.socket, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        readable, _, _ = select.select([control], [], [], 0.5)
        if readable:
            return control.recv(64) == b"ready"
    return False


def _reap_retired_spares(control: socket.socket) -> None:
    """Until the zygote's control socket closes: reap each spare it says it retired,
    through the pidfd that comes with the message."""
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 64, 1)
        except OSError:
            return
        if not message:
            return
        for fd in fds:
            if message == GONE:
                reaper.reap_pidfd(fd)
            os.close(fd)


def _exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _describe_status(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            return b""
        data += chunk
    return data
