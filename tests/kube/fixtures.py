"""pytest fixtures for the tool tests; a test module loads them with

    pytest_plugins = ["tests.kube.fixtures"]

`real_kube` is the real control plane of scripts/kube-up, for the whole session
(started or reused; built when missing). `kube` is one test's own namespace on
it. `run_tool("grep", "zoo*", files=...)` runs a tool in a fresh job dir
against that namespace, as the worker would (see tests.kube.toolrun).

`kube_emulator` / `run_emulated` are the API emulator, kept only for what a
control plane without a kubelet cannot show: running pods, ready counts, log
content, node-side log errors. A test that uses them says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kube.emulator import KubeEmulator
from tests.kube.real import KubeNamespace, RealKube, Unavailable, build_requested
from tests.kube.toolrun import ToolResult, run_tool_in, set_start, tool_env

ToolRunner = Callable[..., ToolResult]


@pytest.fixture(scope="session")
def real_kube() -> RealKube:
    if not build_requested():
        pytest.skip("OCHO_KUBE=skip: the real Kubernetes control plane is not used")
    try:
        return RealKube.start()
    except Unavailable as exc:
        pytest.skip(f"no real Kubernetes control plane: {exc}")


@pytest.fixture
def kube(real_kube: RealKube) -> Iterator[KubeNamespace]:
    namespace = KubeNamespace(real_kube).create()
    try:
        yield namespace
    finally:
        namespace.delete()


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
def run_tool(job_dir: Path, kube: KubeNamespace) -> ToolRunner:
    """run_tool("grep", "zoo*", job_id=..., files={...}, token=...): a tool against
    the test's namespace on the real control plane (admin token unless `token`)."""

    def run(tool: str, *args: str, files: dict[str, str | bytes] | None = None,
            job_id: str | None = None, attempt: int = 1, token: str | None = None,
            **extra: str) -> ToolResult:
        env = tool_env(job_dir, job_id=job_id, attempt=attempt,
                       **{**kube.tool_env(token), **extra})
        return run_tool_in(job_dir, tool, *args, env=env, files=files)

    return run


@pytest.fixture
def run_emulated(job_dir: Path, kube_emulator: KubeEmulator) -> ToolRunner:
    """run_emulated("grep", "zoo*", ...): a tool against the emulator."""

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
