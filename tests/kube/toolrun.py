"""Running tools the way the worker does, for the tool tests.

`run_tool_in` copies the tool script into a job dir (with the user's files),
and runs it there as the worker's runner does: its interpreter flags (`-P -S`,
so an uploaded yaml.py is never imported), its import path, and only the
allow-listed environment.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import uuid
from pathlib import Path

from ocho.worker.runner import tool_import_path, tool_interpreter
from tests.kube.emulator import KubeEmulator

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
DEFINITIONS = ROOT / "definitions"


@dataclasses.dataclass
class ToolResult:
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


def tool_env(job_dir: Path, emulator: KubeEmulator | None = None, *,
             job_id: str | None = None, attempt: int = 1, **extra: str) -> dict[str, str]:
    """The environment the worker gives a tool: nothing but the allow-list."""
    env = {
        "OCHO_JOB_ID": job_id or str(uuid.uuid4()),
        "OCHO_ATTEMPT": str(attempt),
        "HOME": str(job_dir),
        "TMPDIR": str(job_dir),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": tool_import_path(),
    }
    if emulator is not None:
        env.update(OCHO_K8S_HOST=emulator.url, OCHO_K8S_TOKEN=emulator.token)
    env.update(extra)
    return env


def run_tool_in(job_dir: Path, tool: str, *args: str, env: dict[str, str],
                files: dict[str, str | bytes] | None = None, timeout: float = 60) -> ToolResult:
    """Copy the tool (and files) into the job dir and run it there, as the worker does."""
    shutil.copy(TOOLS / f"{tool}.py", job_dir / f"{tool}.py")
    for name, content in (files or {}).items():
        data = content.encode() if isinstance(content, str) else content
        (job_dir / name).write_bytes(data)
    completed = subprocess.run([*tool_interpreter(), f"{tool}.py", *args], cwd=job_dir, env=env,
                               capture_output=True, text=True, timeout=timeout, check=False)
    return ToolResult(completed.returncode, completed.stdout, completed.stderr)


def definition_text(name: str) -> str:
    return (DEFINITIONS / name).read_text()
