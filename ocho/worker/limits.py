"""Resource limits for tool processes.

rlimits are applied to the tool right after it is spawned (prlimit), well
before the interpreter has started running the tool's code. A process-count
limit needs more: RLIMIT_NPROC counts every process of the user and does not
bind root at all, so where a pids cgroup is writable each job gets a cgroup of
its own with `pids.max`; elsewhere the count is left to RLIMIT_NPROC when the
worker is not root.
"""

from __future__ import annotations

import logging
import os
import resource
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

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.max_processes = settings.tool_max_processes
        self.base: Path | None = None
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
