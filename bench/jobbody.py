"""The job body at its barest: temp dir, copy the tool, Popen, capture output.

Standard library only: the raw baseline runs it in the project's venv and the
Celery task runs it in Celery's own venv, so both do exactly the same work. The
tool is always started by the project's interpreter (TOOL_PYTHON) with the
worker's flags (-P -S, with the import path `site` would have built) and an
allow-listed environment like the worker's, in a
session of its own.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import time


@functools.cache
def import_path(python: str) -> str:
    """What the worker passes as PYTHONPATH: that interpreter's own path, as
    `site` builds it, without the script directory."""
    return subprocess.run(
        [python, "-c", "import os, sys; print(os.pathsep.join(p for p in sys.path[1:] if p))"],
        capture_output=True, text=True, check=True).stdout.strip()


def tool_env(python: str, workdir: str, job_id: str) -> dict[str, str]:
    return {
        "PYTHONPATH": import_path(python),
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
        "OCHO_JOB_ID": job_id,
        "OCHO_ATTEMPT": "1",
    }


def run_job(python: str, tools_dir: str, tool: str, args: list[str] | tuple[str, ...] = (),
            job_id: str = "bench") -> tuple[int, bytes, bytes, float]:
    """(exit code, stdout, stderr, seconds) of one tool run."""
    started = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="ocho-bench-")
    try:
        script = f"{tool}.py"
        shutil.copyfile(os.path.join(tools_dir, script), os.path.join(workdir, script))
        proc = subprocess.Popen(
            [python, "-P", "-S", script, *args], cwd=workdir,
            env=tool_env(python, workdir, job_id),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True)
        out, err = proc.communicate()
        return proc.returncode, out, err, time.perf_counter() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
