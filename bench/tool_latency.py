"""A real tool's latency: an `ls` job through the portal (HTTP submit, then the
long-poll answer), one at a time, with tools started warm and cold — side by
side with `kubectl get rc -A` against the same API server.

The server is the one a kubeconfig names (`--kubeconfig`, e.g. the local control
plane that scripts/kube-up starts), else the API emulator of the tool tests
(tests/kube), which kubectl may not be able to talk to: its row is then left out.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

from common import latency
from ocho_http import HttpClient
from ocho_stack import OchoStack

from ocho.settings import SHIPPED_TOOLS_DIR


@contextlib.contextmanager
def api_server(kubeconfig: str | None) -> Iterator[tuple[dict[str, str], list[str], str]]:
    """(the workers' environment, kubectl's connection flags, what the server is)."""
    if kubeconfig:
        # Not an OCHO_ variable: KUBECONFIG keeps its own name (see ocho/settings.py).
        yield {"KUBECONFIG": kubeconfig}, ["--kubeconfig", kubeconfig], "kubeconfig"
        return
    from tests.kube.emulator import KubeEmulator

    with KubeEmulator() as emulator:
        yield ({"OCHO_K8S_HOST": emulator.url, "OCHO_K8S_TOKEN": emulator.token},
               ["--server", emulator.url, "--token", emulator.token,
                "--insecure-skip-tls-verify"], "emulator")


def _portal(cfg: Any, environment: dict[str, str], tool_start: str) -> dict[str, float]:
    stack = OchoStack(cfg.workers, cfg.concurrency, tool_start=tool_start,
                      tools_dir=str(SHIPPED_TOOLS_DIR))
    stack.env.update(environment)
    try:
        stack.start()
        client = HttpClient(stack.url)

        def one() -> None:
            job = client.wait(client.submit("ls"))
            if job["state"] != "succeeded":
                raise RuntimeError(f"ls: {job['state']} {job.get('reason')}")

        return latency(one, cfg.seq)
    finally:
        stack.stop()


def _kubectl(cfg: Any, flags: list[str]) -> dict[str, Any]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return {"skipped": "kubectl is not installed"}
    command = [kubectl, *flags, "get", "rc", "-A"]
    probe = subprocess.run(command, capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        first = (probe.stderr.strip().splitlines() or ["no output"])[0]
        return {"skipped": f"kubectl failed: {first[:200]}"}
    return latency(lambda: subprocess.run(command, capture_output=True, check=True), cfg.seq)


def measure(cfg: Any) -> dict[str, Any]:
    with api_server(cfg.kubeconfig) as (settings, flags, server):
        return {"system": "tool-ls", "server": server,
                "ls_warm": _portal(cfg, settings, "warm"),
                "ls_cold": _portal(cfg, settings, "cold"),
                "kubectl": _kubectl(cfg, flags)}


def verdict(record: dict[str, Any]) -> str:
    warm, cold, kubectl = record["ls_warm"], record["ls_cold"], record["kubectl"]
    line = (f"ls through the portal ({record['server']}): p50 {warm['p50_ms']:.0f} ms warm, "
            f"{cold['p50_ms']:.0f} ms cold (p99 {warm['p99_ms']:.0f} / {cold['p99_ms']:.0f})")
    if "p50_ms" not in kubectl:
        return f"{line}; kubectl get rc -A: {kubectl['skipped']}"
    ratio = warm["p50_ms"] / kubectl["p50_ms"]
    met = "MET" if ratio <= 1.5 else "NOT MET"
    return (f"{line}; kubectl get rc -A p50 {kubectl['p50_ms']:.0f} ms (p99 "
            f"{kubectl['p99_ms']:.0f}): {ratio:.2f} × (target ≤ 1.5) {met}")
