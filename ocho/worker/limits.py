"""Resource limits for tool processes.

rlimits are applied to the tool right after it is spawned (prlimit), well
before the interpreter has started running the tool's code. A process-count
limit needs more: RLIMIT_NPROC counts every process of the user and does not
bind root at all, so where a pids cgroup is writable each job gets a cgroup of
its own with `pids.max`; elsewhere the count is left to RLIMIT_NPROC when the
worker is not root.

Moving a process into a cgroup takes a system-wide lock whose first writer after a
quiet spell waits for an RCU grace period (10-15 ms measured here; back-to-back
moves take 0.1 ms). A warm tool waits for that move before it may run, so a job
that came after an idle moment paid it in full. `prime` (called when a request is
delivered) has a thread of its own move a process of the worker's into the cgroup
it is already in: a no-op that takes the same lock, so the grace period passes
while the request is read and its tool forked, and the tool's own move is quick.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from pathlib import Path

from ocho.settings import Settings

log = logging.getLogger("ocho.worker")

# cgroup v1's pids hierarchy, then cgroup v2's unified one.
PIDS_CGROUP_V1 = Path("/sys/fs/cgroup/pids")
PIDS_CGROUP_V2 = Path("/sys/fs/cgroup")


def apply_rlimits(pid: int, settings: Settings, timeout: int) -> None:
    limits = {
        # CPU time can never exceed wall time by much for a tool we kill at
        # its timeout; the margin covers a tool using several cores.
        resource.RLIMIT_CPU: settings.tool_cpu_seconds or timeout * 2 + 5,
        resource.RLIMIT_AS: settings.tool_memory_bytes,
        resource.RLIMIT_FSIZE: settings.tool_file_bytes,
        resource.RLIMIT_NOFILE: settings.tool_open_files,
        resource.RLIMIT_CORE: 0,
    }
    if os.geteuid() != 0 and settings.tool_max_processes:
        # Counts every process of this user, the worker's threads included.
        limits[resource.RLIMIT_NPROC] = settings.tool_max_processes + _user_process_count()
    for which, value in limits.items():
        if value:
            try:
                resource.prlimit(pid, which, (value, value))
            except (ProcessLookupError, ValueError, PermissionError):
                pass  # the tool is already gone, or the hard limit is lower


def _user_process_count() -> int:
    uid = os.getuid()
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(entry / "task"))
            except OSError:
                continue
    return count


class ProcessCounter:
    """A pids cgroup per job, under one cgroup of this worker's own."""

    def __init__(self, settings: Settings, worker_id: str, primer_pid: int | None = None) -> None:
        self.max_processes = settings.tool_max_processes
        self.base: Path | None = None
        self._primer: Primer | None = None
        if not self.max_processes:
            return
        for root in (PIDS_CGROUP_V1, PIDS_CGROUP_V2):
            v1 = root == PIDS_CGROUP_V1 and (root / "cgroup.procs").exists()
            if not v1 and not _has_pids_controller(root):
                continue
            _sweep_dead_workers(root)
            base = root / f"ocho-worker-{worker_id}"
            try:
                base.mkdir(exist_ok=True)
                if not v1:
                    (base / "cgroup.subtree_control").write_text("+pids")
                self.base = base
                break
            except OSError:
                continue
        if self.base is None:
            log.info("no writable pids cgroup: tool process count limited only by RLIMIT_NPROC "
                     "when the worker is not root")
        elif primer_pid is not None:
            self._primer = Primer.of(primer_pid, self.base.parent)

    def prime(self) -> None:
        """A tool will be moved into a cgroup soon: get the lock's grace period going."""
        if self._primer is not None:
            self._primer.wanted.set()

    def attach(self, job_id: str, pid: int) -> None:
        if self.base is None:
            return
        group = self.base / f"job-{job_id}"
        try:
            group.mkdir(exist_ok=True)
            (group / "pids.max").write_text(str(self.max_processes))
            (group / "cgroup.procs").write_text(str(pid))
        except ProcessLookupError:
            pass  # the tool is already gone
        except OSError as exc:
            log.warning("job %s: could not limit its process count: %s", job_id, exc)

    def release(self, job_id: str) -> None:
        if self.base is None:
            return
        try:
            (self.base / f"job-{job_id}").rmdir()
        except OSError:
            pass

    def close(self) -> None:
        if self._primer is not None:
            self._primer.close()
        if self.base is None:
            return
        for group in self.base.glob("job-*"):
            try:
                group.rmdir()
            except OSError:
                pass
        try:
            self.base.rmdir()
        except OSError:
            pass


def _sweep_dead_workers(root: Path) -> None:
    """Remove the empty cgroups of workers that died without cleaning up (SIGKILL)."""
    for base in root.glob("ocho-worker-*"):
        try:
            os.kill(int(base.name.rsplit("-", 1)[1]), 0)
            continue  # that worker still runs
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        for group in [*base.glob("job-*"), base]:
            try:
                group.rmdir()
            except OSError:
                pass  # a process still in it: leave it to its reaper


def _has_pids_controller(root: Path) -> bool:
    try:
        return "pids" in (root / "cgroup.controllers").read_text().split()
    except OSError:
        return False


class Primer:
    """A thread that, when asked, writes `pid` into the cgroup.procs it is already listed
    in (see the module doc); asks while it writes are folded into one more write."""

    def __init__(self, pid: int, procs: Path) -> None:
        self.pid = pid
        self.procs = procs
        self.wanted = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cgroup-primer", daemon=True)
        self._thread.start()

    @classmethod
    def of(cls, pid: int, root: Path) -> Primer | None:
        """For the process `pid` in its pids cgroup under `root`; None if it has none."""
        for line in _read(Path(f"/proc/{pid}/cgroup")).splitlines():
            _, controllers, path = line.split(":", 2)
            if "pids" in controllers.split(",") or (controllers == "" and root.name != "pids"):
                return cls(pid, root / path.lstrip("/") / "cgroup.procs")
        return None

    def _run(self) -> None:
        while self.wanted.wait() and not self._closed:
            self.wanted.clear()
            try:
                self.procs.write_text(str(self.pid))
            except OSError as exc:  # not permitted here: tools start as they did
                log.debug("cgroup primer stops: %s", exc)
                return

    def close(self) -> None:
        self._closed = True
        self.wanted.set()
        self._thread.join(timeout=5)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
