"""pytest fixtures for the tool tests; a test module loads them with

    pytest_plugins = ["tests.kube.fixtures"]

`kube_emulator` is a fresh API emulator per test. `job_dir` is what the worker
makes for a job: an empty temp dir. `run_tool("grep", "zoo*", files=...)` runs a
tool there against the emulator, as the worker would (see tests.kube.toolrun).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kube.emulator import KubeEmulator
from tests.kube.toolrun import ToolResult, run_tool_in, set_start, tool_env


@pytest.fixture
def kube_emulator() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "job"
    directory.mkdir()
    return directory


@pytest.fixture
def run_tool(job_dir: Path, kube_emulator: KubeEmulator) -> Callable[..., ToolResult]:
    """run_tool("grep", "zoo*", job_id=..., files={...}): a tool against the emulator."""

    def run(tool: str, *args: str, files: dict[str, str | bytes] | None = None,
            job_id: str | None = None, attempt: int = 1, **extra: str) -> ToolResult:
        env = tool_env(job_dir, kube_emulator, job_id=job_id, attempt=attempt, **extra)
        return run_tool_in(job_dir, tool, *args, env=env, files=files)

    return run


@pytest.fixture
def both_starts(tool_start: str) -> Iterator[None]:
    """The test's tools start warm, then cold (tool_start is parametrized per module)."""
    previous = set_start(tool_start)
    yield
    set_start(previous)
