"""Running tools the way the worker does, for the tool tests.

`run_tool_in` copies the tool script into a job dir (with the user's files),
and runs it there as the worker's runner does: its interpreter flags (`-P -S`,
so an uploaded yaml.py is never imported), its import path, and only the
allow-listed environment; cold (a new interpreter), or warm (forked by a tool
zygote, as a worker does by default) after `set_start("warm")` (the
`both_starts` fixture).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import selectors
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

from ocho.settings import Settings
from ocho.worker import runner
from ocho.worker.runner import tool_import_path, tool_interpreter
from ocho.worker.zygote import Zygote
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
    if _start["mode"] == "warm":
        return _run_warm(job_dir, tool, list(args), env, timeout)
    completed = subprocess.run([*tool_interpreter(), f"{tool}.py", *args], cwd=job_dir, env=env,
                               capture_output=True, timeout=timeout, check=False)
    # Decoded as the warm path and the worker decode it: text=True would also turn
    # \r\n and a lone \r into \n (universal newlines) and hide a tool that writes them.
    return ToolResult(completed.returncode, completed.stdout.decode(errors="replace"),
                      completed.stderr.decode(errors="replace"))


_start = {"mode": "cold"}


def set_start(mode: str) -> str:
    """How run_tool_in starts tools from now on ("warm" or "cold"); returns the old way."""
    previous, _start["mode"] = _start["mode"], mode
    return previous


@functools.cache
def _zygote() -> Zygote:
    zygote = Zygote(runner.zygote_environment(Settings()))
    assert zygote.wait_ready(120), "the tool zygote never became ready"
    return zygote


def _run_warm(job_dir: Path, tool: str, args: list[str], env: dict[str, str],
              timeout: float) -> ToolResult:
    proc = _zygote().spawn(str(job_dir / f"{tool}.py"), [f"{tool}.py", *args], str(job_dir), env)
    assert proc is not None, "the zygote did not start the tool"
    proc.release()
    output = {"stdout": b"", "stderr": b""}
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
        selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
        while selector.get_map():
            events = selector.select(timeout)
            if not events:
                os.killpg(proc.pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired(tool, timeout)
            for key, _ in events:
                data = os.read(key.fd, 65536)
                output[key.data] += data
                if not data:
                    selector.unregister(key.fileobj)
    proc.stdout.close()
    proc.stderr.close()
    code = proc.wait(timeout)
    return ToolResult(code, output["stdout"].decode(errors="replace"),
                      output["stderr"].decode(errors="replace"))


def definition_text(name: str) -> str:
    return (DEFINITIONS / name).read_text()
